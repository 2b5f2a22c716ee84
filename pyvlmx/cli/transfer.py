"""``pyvlmx transfer``: align images against model A (and an ensemble), evaluate on B, C, ...

Writes ``transfer.json`` (every cell, row and per-image prediction, plus run
metadata) and ``transfer.md`` (the matrices) to ``--out``.

Example:
    pyvlmx transfer --models conse-efficientnet-lite0 conse-efficientnet-lite1 \\
        conse-efficientnet-lite2 --ensemble --dataset samples --eps 4/255 --out runs/transfer
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def parse_eps(text: str) -> float:
    """``"4/255"`` or ``"0.0157"`` -> float pixels."""
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"--eps must be a number or a fraction like 4/255, got {text!r}") from exc
    return value


def _run(args) -> int:
    import torch

    from pyvlmx.cli.info import environment
    from pyvlmx.data import load_dataset
    from pyvlmx.models import load_model
    from pyvlmx.transfer import format_markdown, transfer_matrix

    sources = [load_model(n, device=args.device) for n in args.models]
    by_name = {n: m for n, m in zip(args.models, sources)}
    evals = None
    if args.eval_models:
        evals = [by_name[n] if n in by_name else load_model(n, device=args.device) for n in args.eval_models]
    size = args.image_size or max(m.image_size for m in sources + (evals or []))
    dataset = load_dataset(args.dataset, image_size=size)
    attack = {"eps": parse_eps(args.eps), "max_steps": args.steps, "optimizer": args.optimizer,
              "loss": args.loss, "norm": args.norm, "stop": args.stop}
    t0 = time.perf_counter()
    result = transfer_matrix(sources, evals, dataset, ensemble=args.ensemble, target=args.target,
                             attack=attack, templates=args.templates, max_images=args.max_images,
                             batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    env = environment()
    result["metadata"] = {"command": "pyvlmx transfer", "dataset": str(args.dataset),
                          "wall_s": time.perf_counter() - t0, "versions": env["versions"],
                          "devices": env["devices"], "cpu_threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps(result, indent=2))
    md = format_markdown(result)
    (out / "transfer.md").write_text(md + "\n")
    print(md)
    print(f"\nwrote {out / 'transfer.json'} and {out / 'transfer.md'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("transfer", help="cross-model transfer matrix of embedding alignment (+ ensemble row)")
    p.add_argument("--models", nargs="+", required=True,
                   help="models to align against (pyvlmx list-models); also evaluated on unless --eval-models")
    p.add_argument("--eval-models", nargs="+", default=None, help="models to evaluate on (default: --models)")
    p.add_argument("--ensemble", action="store_true", help="add a row aligned against the mean loss of --models")
    p.add_argument("--dataset", default="samples", help="'samples' or an ImageFolder directory")
    p.add_argument("--image-size", type=int, default=None,
                   help="image side for every model (each resizes to its own); default the largest model size")
    p.add_argument("--target", choices=("text", "image"), default="text",
                   help="align to the target class's text embedding or to a target image's embedding")
    p.add_argument("--eps", default="4/255", help="L-inf (or L2) budget in pixels, e.g. 4/255")
    p.add_argument("--norm", choices=("linf", "l2", "none"), default="linf")
    p.add_argument("--steps", type=int, default=100, help="step limit per image")
    p.add_argument("--optimizer", choices=("sign", "gd", "adam"), default="sign")
    p.add_argument("--loss", choices=("l2", "cosine"), default="l2")
    p.add_argument("--stop", choices=("auto", "class", "cosine", "steps"), default="auto")
    p.add_argument("--templates", default="short", help="zero-shot template set (short, imagenet, name, ...)")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/transfer", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
