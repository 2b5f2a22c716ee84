"""Systematic evaluation (the paper's main job): every image aligned to every other class.

``run_sweep(model, dataset, out_dir, attack=AlignmentConfig(...), sweep=SweepConfig(...)) -> summary``; ``load_records(out_dir)``;
``merge(out_dir)`` joins the shards of a ``torchrun`` sweep.  See
:mod:`pyvlmx.systematic.sweep` for resume and sharding guarantees.
"""

from pyvlmx.systematic.config import SweepConfig
from pyvlmx.systematic.pairs import Pair, build_pairs, chunks_for_rank
from pyvlmx.systematic.store import JsonlWriter, load_records, read_jsonl
from pyvlmx.systematic.summary import format_summary, summarize
from pyvlmx.systematic.sweep import merge, run_sweep

__all__ = ["JsonlWriter", "Pair", "build_pairs", "chunks_for_rank", "format_summary", "load_records", "merge",
           "read_jsonl", "run_sweep", "summarize", "SweepConfig"]
