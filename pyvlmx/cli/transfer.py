"""``pyvlmx transfer``: align images against model A (and an ensemble), evaluate on B, C, ...

Writes ``transfer.json`` (every cell, row and per-image prediction, plus run
metadata) and ``transfer.md`` (the matrices) to ``--out``.  The attack's
options are those of ``pyvlmx list-attacks`` (embedding-alignment), with a
step limit of 100 here.

Example:
    pyvlmx transfer --models conse-efficientnet-lite0 conse-efficientnet-lite1 \\
        conse-efficientnet-lite2 --ensemble --dataset samples --eps 4/255 --out runs/transfer
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pyvlmx.cli._common import add_attack_args, add_command, attack_config, load_data, named, only, positive_int
from pyvlmx.config import add_dataclass_args, dataclass_from_args
from pyvlmx.models.config import ModelConfig
from pyvlmx.systematic.config import TARGET_MODES, SweepConfig

_ATTACK_DEFAULTS = {"max_steps": 100}
_SWEEP_OPTIONS = ("templates", "max_images", "batch_size", "progress")


def _run(args) -> int:
    import torch

    from pyvlmx.info import environment, resolve_device
    from pyvlmx.io import atomic_write_text, write_json
    from pyvlmx.models import load_model
    from pyvlmx.transfer import format_markdown, transfer_matrix

    run = named(lambda: dataclass_from_args(SweepConfig, args, exclude=only(SweepConfig, *_SWEEP_OPTIONS)),
                SweepConfig)
    attack = dataclasses.asdict(attack_config(args, defaults_override=_ATTACK_DEFAULTS))
    device = resolve_device(dataclass_from_args(ModelConfig, args, exclude=("model", "pretrained")).device)
    sources = [load_model(n, device=device) for n in args.models]
    by_name = {n: m for n, m in zip(args.models, sources)}
    evals = None
    if args.eval_models:
        evals = [by_name[n] if n in by_name else load_model(n, device=device) for n in args.eval_models]
    size = args.image_size or max(m.image_size for m in sources + (evals or []))
    dataset = load_data(args.dataset, image_size=size, why="transfer")
    t0 = time.perf_counter()
    result = transfer_matrix(sources, evals, dataset, ensemble=args.ensemble, target=args.target,
                             attack=attack, templates=run.templates, max_images=run.max_images,
                             batch_size=run.batch_size, device=device, progress=run.progress)
    env = environment()
    result["metadata"] = {"command": "pyvlmx transfer", "dataset": str(args.dataset),
                          "wall_s": time.perf_counter() - t0, "versions": env["versions"],
                          "devices": env["devices"], "cpu_threads": torch.get_num_threads()}
    out = Path(args.out)
    write_json(out / "transfer.json", result, indent=2)
    md = format_markdown(result)
    atomic_write_text(out / "transfer.md", md + "\n")
    print(md)
    print(f"\nwrote {out / 'transfer.json'} and {out / 'transfer.md'}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "transfer", "cross-model transfer matrix of embedding alignment (+ ensemble row)")
    p.add_argument("--models", nargs="+", required=True,
                   help="models to align against (pyvlmx list-models); also evaluated on unless --eval-models")
    p.add_argument("--eval-models", nargs="+", default=None, help="models to evaluate on (default: --models)")
    p.add_argument("--ensemble", action="store_true", help="add a row aligned against the mean loss of --models")
    p.add_argument("--dataset", default="samples", help="'samples' or an ImageFolder directory")
    p.add_argument("--image-size", type=positive_int("--image-size"), default=None,
                   help="image side for every model (each resizes to its own) (default: the largest model size)")
    p.add_argument("--target", choices=TARGET_MODES, default="text",
                   help="align to the target class's text embedding or to a target image's embedding")
    p.add_argument("--out", default="runs/transfer", help="output directory")
    add_dataclass_args(p, ModelConfig, exclude=("model", "pretrained"))
    add_dataclass_args(p, SweepConfig, exclude=only(SweepConfig, *_SWEEP_OPTIONS))
    add_attack_args(p, defaults_override=_ATTACK_DEFAULTS)
    p.set_defaults(func=_run)
