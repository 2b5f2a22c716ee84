"""``pyvlmx systematic``: the paper's systematic evaluation over a dataset.

Every image is aligned to every other class (or ``--targets K`` of them) and
classified; records stream to ``--out`` and a restarted run resumes.  Scale
out with ``torchrun --nproc_per_node=N -m pyvlmx systematic ...`` (gloo on
CPU, NCCL on CUDA); rank 0 merges the shards at the end.

Example::

    pyvlmx systematic --model default --data samples --out out/sweep
    torchrun --nproc_per_node=2 -m pyvlmx systematic --data samples --out out/sweep
"""

from __future__ import annotations

import os

from pyvlmx.attacks.cli_options import add_attack_args, add_model_args, attack_options


def _targets(text: str):
    if text == "all":
        return "all"
    try:
        k = int(text)
    except ValueError:
        raise ValueError(f"--targets must be 'all' or a positive integer, got {text!r}") from None
    if k < 1:
        raise ValueError(f"--targets must be 'all' or a positive integer, got {text!r}")
    return k


def _run(args) -> int:
    import torch

    from pyvlmx.data import load_dataset
    from pyvlmx.models import load_model
    from pyvlmx.systematic import format_summary, run_sweep

    device = args.device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if args.bf16 and not device.startswith("cuda"):
        raise ValueError("--bf16 (autocast) is for CUDA devices; add --device cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, pretrained=args.pretrained, device=device)
    dataset = load_dataset(args.data, model.image_size)
    rank = int(os.environ.get("RANK", "0"))
    opts = attack_options(args)
    opts["bf16"] = args.bf16
    summary = run_sweep(model, dataset, args.out, targets=_targets(args.targets), target_mode=args.target_mode,
                        batch_size=args.batch_size, templates=args.templates, save_images=args.save_images,
                        max_images=args.max_images, progress=not args.no_progress, **opts)
    if rank == 0:
        print(format_summary(summary))
        t = summary.get("timing", {})
        if t.get("elapsed_s"):
            print(f"time {t['elapsed_s']:.1f} s; records in {args.out}/records.jsonl, "
                  f"summary in {args.out}/summary.json")
    return 0


def register(sub) -> None:
    p = sub.add_parser("systematic", help="align every image to every other class and classify (the main job)")
    p.add_argument("--data", default="samples", help="'samples' or an ImageFolder directory")
    p.add_argument("--out", required=True, help="output folder; an existing sweep there is resumed")
    p.add_argument("--targets", default="all", help="'all' other classes, or K sampled per image")
    p.add_argument("--target-mode", choices=("text", "image"), default="text",
                   help="target = text embedding of the class (default) or embedding of an image of it")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per batch (default 32)")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images")
    p.add_argument("--save-images", action="store_true", help="save every aligned image as a PNG")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the encoder (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_args(p)
    add_attack_args(p)
    p.set_defaults(func=_run)
