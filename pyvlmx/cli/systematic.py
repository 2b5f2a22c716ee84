"""``pyvlmx systematic``: the paper's systematic evaluation over a dataset.

Every image is aligned to every other class (or ``--targets K`` of them) and
classified; records stream to ``--out`` and a restarted run resumes.  Scale
out with ``torchrun --nproc_per_node=N -m pyvlmx systematic ...`` (gloo on
CPU, NCCL on CUDA); rank 0 merges the shards at the end.

The options are the fields of :class:`~pyvlmx.systematic.config.SweepConfig`
and of the attack's configuration (``pyvlmx list-attacks``); the attack's
seed is the sweep's ``--seed``.

Example::

    pyvlmx systematic --model default --data samples --out out/sweep
    torchrun --nproc_per_node=2 -m pyvlmx systematic --data samples --out out/sweep
"""

from __future__ import annotations

import dataclasses
import os

from pyvlmx.cli._common import (
    add_attack_args, add_command, add_model_args, attack_config, load_data, model_config, named, positive_int,
)
from pyvlmx.config import add_dataclass_args, dataclass_from_args
from pyvlmx.systematic.config import ATTACK_DEFAULTS, SweepConfig

# the attack's seed is the sweep's (each pair's seed derives from it)
_ATTACK_EXCLUDE = ("seed",)


def _run(args) -> int:
    import torch

    from pyvlmx.info import resolve_device
    from pyvlmx.systematic import format_summary, run_sweep

    # every option checked before the model loads
    sweep = named(lambda: dataclass_from_args(SweepConfig, args), SweepConfig)
    attack = dataclasses.asdict(attack_config(args, exclude=_ATTACK_EXCLUDE, defaults_override=ATTACK_DEFAULTS))
    attack.pop("seed", None)
    mcfg = model_config(args)
    device = resolve_device(mcfg.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    from pyvlmx.attacks.precision import resolve_precision

    resolve_precision(attack.get("precision", "fp32"), device)  # before the model loads: names the device
    if args.threads:
        torch.set_num_threads(args.threads)
    # before the model loads: the data folder exists and has the classes --targets asks for
    sweep.check_dataset(len(load_data(args.data, None, verify="none", why="the sweep").classnames))
    model = dataclasses.replace(mcfg, device=device).load()
    dataset = load_data(args.data, model.image_size, why="the sweep")
    rank = int(os.environ.get("RANK", "0"))
    summary = run_sweep(model, dataset, args.out, attack=attack, sweep=sweep)
    if rank == 0:
        print(format_summary(summary))
        t = summary.get("timing", {})
        if t.get("elapsed_s"):
            print(f"time {t['elapsed_s']:.1f} s; records in {args.out}/records.jsonl, "
                  f"summary in {args.out}/summary.json")
    return 0


def register(sub) -> None:
    p = add_command(sub, "systematic", "align every image to every other class and classify (the main job)")
    p.add_argument("--data", default="samples", help="'samples' or an ImageFolder directory")
    p.add_argument("--out", required=True, help="output folder; an existing sweep there is resumed")
    p.add_argument("--threads", type=positive_int("--threads"), default=None,
                   help="torch CPU threads (default: torch's choice)")
    add_dataclass_args(p.add_argument_group("sweep (pyvlmx.systematic.SweepConfig)"), SweepConfig)
    add_model_args(p)
    add_attack_args(p, exclude=_ATTACK_EXCLUDE, defaults_override=ATTACK_DEFAULTS)
    p.set_defaults(func=_run)
