"""Shared helpers of the ``noise``, ``spectra`` and ``detect`` subcommands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

DEFAULT_SIGMAS = [0.01 / 255, 0.03 / 255, 0.1 / 255, 0.3 / 255, 1 / 255, 3 / 255, 10 / 255]


def add_model_args(p) -> None:
    p.add_argument("--model", default="default", help="registry name (pyvlmx list-models); default: offline model")
    p.add_argument("--pretrained", default=None, help="weights tag or checkpoint file (family-specific)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output folder (JSON + PNG)")


def add_image_args(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--image", nargs="+", help="image file(s)")
    g.add_argument("--data", help="'samples' (embedded photos) or an ImageFolder directory")
    p.add_argument("--max-images", type=int, default=None,
                   help="the first N images of --data; with --sweep, N pairs spread over the images")


def parse_sigma(text: str) -> float:
    """A sigma as a float, or 'k/255'."""
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    v = float(text)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"sigma must be a finite number >= 0, got {text!r}")
    return v


def load_model_from_args(args):
    from pyvlmx.models import load_model

    return load_model(args.model, pretrained=args.pretrained, device=args.device)


def load_images(args, image_size: int) -> tuple[torch.Tensor, list[int] | None, list[str] | None, list[str]]:
    """(N, 3, H, W) images, labels (or None), classnames (or None), names."""
    from pyvlmx.data import load_dataset, load_image

    if args.image:
        imgs = torch.stack([load_image(p, image_size) for p in args.image])
        return imgs, None, None, [Path(p).name for p in args.image]
    ds = load_dataset(args.data, image_size)
    n = len(ds) if args.max_images is None else min(len(ds), args.max_images)
    xs, ys = zip(*[ds[i] for i in range(n)])
    return torch.stack(xs), list(ys), list(ds.classnames), [Path(p).name for p, _ in ds.samples[:n]]


def spread_over_images(recs: list[dict]) -> list[dict]:
    """Records reordered round-robin over ``image_index`` (stable within an image)."""
    by_image: dict[int, list[dict]] = {}
    for r in sorted(recs, key=lambda r: r["pair_id"]):
        by_image.setdefault(int(r["image_index"]), []).append(r)
    out = []
    for rnd in range(max((len(v) for v in by_image.values()), default=0)):
        out += [v[rnd] for _, v in sorted(by_image.items()) if rnd < len(v)]
    return out


def load_sweep(sweep_dir: str, image_size: int, max_pairs: int | None = None):
    """Originals, aligned images, labels, target classes and records of a sweep's successful pairs.

    With ``max_pairs``, the pairs are taken round-robin over the source
    images (first target of every image, then the second, ...), so that a
    small subset spans as many images as it can.
    """
    from pyvlmx.data import load_image
    from pyvlmx.systematic import load_records

    root = Path(sweep_dir)
    recs = [r for r in load_records(root) if r.get("status") == "ok" and r.get("png")]
    if not recs:
        raise ValueError(f"sweep {root} has no successful pairs with saved PNGs (run it with save_images)")
    if max_pairs is not None:
        recs = spread_over_images(recs)[:max_pairs]
    orig = torch.stack([load_image(r["image_path"], image_size) for r in recs])
    al = torch.stack([load_image(root / r["png"], image_size) for r in recs])
    names = {}
    for r in recs:
        names[int(r["label"])] = r["true_class"]
        names[int(r["target_class"])] = r["target_name"]
    return orig, al, [int(r["label"]) for r in recs], [int(r["target_class"]) for r in recs], recs


def write_json(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float))
    return path
