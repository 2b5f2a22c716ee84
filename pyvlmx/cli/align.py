"""``pyvlmx align``: align one image to one target (a class or another image).

Writes into ``--out``: ``aligned.png`` (8-bit, lossless), ``side_by_side.png``
(original | aligned | amplified difference) and ``metrics.json`` (the
attack's record, the configuration and the class names).

Example::

    pyvlmx align --image photo.jpg --target "tabby cat" --out out/align
    pyvlmx align --image photo.jpg --target-image other.jpg --eps 8/255
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from pyvlmx.cli._common import (
    add_attack_args, add_command, add_model_args, attack_config, load_data, model_config, only,
)
from pyvlmx.config import add_dataclass_args
from pyvlmx.systematic.config import SweepConfig


def _classnames(args) -> list[str]:
    if args.classes:
        p = Path(args.classes)
        if p.is_file():
            names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        else:
            names = [n.strip() for n in args.classes.split(",") if n.strip()]
        if len(names) < 2:
            raise ValueError(f"--classes needs at least 2 class names, got {names}")
        return names
    return list(load_data(args.data, image_size=None, verify="none", why="align").classnames)


def side_by_side(original, aligned, path, titles: list[str]) -> Path:
    """Save a 3-panel figure: original | aligned | difference amplified to the full range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = (aligned - original).cpu()
    peak = float(d.abs().max())
    amp = 0.5 / peak if peak > 0 else 1.0
    panels = [original.cpu(), aligned.cpu(), (0.5 + amp * d).clamp(0, 1)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, img, title in zip(axes, panels, titles[:2] + [f"difference x{amp:.0f} (max |d| = {255 * peak:.1f}/255)"]):
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _run(args) -> int:
    import torch

    from pyvlmx.attacks import create_attack
    from pyvlmx.data import load_image, save_png
    from pyvlmx.io import write_json
    from pyvlmx.zeroshot import ZeroShotClassifier

    if (args.target is None) == (args.target_image is None):
        raise ValueError("give exactly one of --target CLASS or --target-image PATH")
    cfg = attack_config(args)  # every option checked before the model loads
    mcfg = model_config(args)
    classnames = _classnames(args)
    tc = None
    if args.target is not None:
        if args.target not in classnames:
            close = difflib.get_close_matches(args.target, classnames, n=3)
            hint = f" (did you mean {close}?)" if close else ""
            raise ValueError(f"target class {args.target!r} is not in the class list{hint}; classes: {classnames}")
        tc = classnames.index(args.target)
    model = mcfg.load()
    x = load_image(args.image, model.image_size)[None].to(model.device)
    W = ZeroShotClassifier(model, classnames, args.templates).weights
    atk = create_attack("embedding-alignment", model, **dataclasses.asdict(cfg))
    kw = {"class_weights": W}
    if tc is not None:
        kw["target_classes"] = torch.tensor([tc])
    else:
        kw["target_images"] = load_image(args.target_image, model.image_size)[None].to(model.device)
    res = atk.run(x, **kw)
    rec = dict(res.records[0])
    rec["pred_before_name"] = classnames[rec["pred_before"]]
    rec["pred_after_name"] = classnames[rec["pred_after"]]
    rec["target_name"] = classnames[rec["target_class"]] if rec["target_class"] is not None else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    aligned = res.images[0]
    save_png(aligned.cpu(), out / "aligned.png")
    titles = [f"original: {rec['pred_before_name']} ({100 * rec['conf_before']:.1f}%)",
              f"aligned: {rec['pred_after_name']} ({100 * rec['conf_after']:.1f}%), "
              f"PSNR {rec['psnr'] if rec['psnr'] is None else round(rec['psnr'], 1)} dB"]
    side_by_side(x[0], aligned, out / "side_by_side.png", titles)
    metrics = {"image": str(args.image), "target": args.target, "target_image": args.target_image,
               "model": model.name, "record": rec, "config": atk.config_dict(), "classnames": classnames}
    write_json(out / "metrics.json", metrics, indent=2)
    status = "aligned" if rec["success"] else f"NOT aligned ({rec['reason']})"
    print(f"{status}: {rec['pred_before_name']} -> {rec['pred_after_name']} in {rec['steps']} steps; "
          f"cos to target {rec['cos_target']:.4f}, "
          f"PSNR {'inf' if rec['psnr'] is None else format(rec['psnr'], '.2f')} dB, SSIM {rec['ssim']:.4f}, "
          f"L-inf {255 * rec['linf']:.2f}/255; wrote {out}/side_by_side.png, aligned.png, metrics.json")
    return 0 if rec["success"] else 1


def register(sub) -> None:
    p = add_command(sub, "align", "align one image to a target class or image (side-by-side picture, metrics)")
    p.add_argument("--image", required=True, help="the image to align")
    p.add_argument("--target", default=None, help="target class name (from --classes or --data)")
    p.add_argument("--target-image", default=None, help="target image: align to its embedding")
    p.add_argument("--classes", default=None, help="class names: comma-separated or a file with one per line")
    p.add_argument("--data", default="samples", help="dataset whose class names to use when --classes is absent")
    p.add_argument("--out", default="out/align", help="output folder")
    add_model_args(p)
    add_dataclass_args(p, SweepConfig, exclude=only(SweepConfig, "templates"))
    add_attack_args(p)
    p.set_defaults(func=_run)
