"""``pyvlmx zeroshot``: zero-shot accuracy of a model on an image folder or the samples."""

from __future__ import annotations

import time
from pathlib import Path

from pyvlmx.cli._common import add_command, add_model_args, load_data, model_config


def _run(args) -> int:
    from pyvlmx.io import atomic_write_text, write_json
    from pyvlmx.zeroshot import evaluate, format_table, resolve_templates

    templates = resolve_templates(args.templates)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    from pyvlmx.info import resolve_device

    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = model_config(args).load()
    model.check_inputs = False  # the dataset yields valid [0, 1] crops of the right size
    dataset = load_data(args.data, model.image_size, why="zero-shot classification")
    print(f"{model.name}: {len(dataset)} images, {len(dataset.classnames)} classes from {dataset.root}, "
          f"{len(templates)} templates ({args.templates})")
    result = evaluate(model, dataset, templates=templates, batch_size=args.batch_size, progress=not args.no_progress)
    result.update({
        "data": str(args.data), "data_root": str(dataset.root), "device": device,
        "template_set": args.templates, "seconds": round(time.time() - t0, 2),
        "skipped": [{"path": s.path, "reason": s.reason} for s in dataset.skipped],
    })
    write_json(out / "zeroshot.json", result)
    table = format_table(result)
    report = (f"# pyvlmx zeroshot\n\nmodel `{result['model']}`, data `{args.data}` ({result['n_images']} images, "
              f"{result['n_classes']} classes), templates `{args.templates}` ({len(templates)})\n\n"
              f"top-1 {100 * result['top1']:.1f}%, top-{result['topk']} {100 * result['top5']:.1f}%, "
              f"mean per-class top-1 {100 * result['mean_per_class_top1']:.1f}%\n\n{table}\n")
    if dataset.skipped:
        report += f"\n{len(dataset.skipped)} file(s) skipped:\n" + "".join(
            f"- {s.path}: {s.reason}\n" for s in dataset.skipped)
    atomic_write_text(out / "zeroshot.md", report)
    print(table)
    print(f"top-1 {100 * result['top1']:.1f}%  top-{result['topk']} {100 * result['top5']:.1f}%  "
          f"mean per-class {100 * result['mean_per_class_top1']:.1f}%  ({result['seconds']} s)")
    wrong = [p for p in result["predictions"] if not p["correct"]]
    for p in wrong:
        print(f"  wrong: {p['path']}: {p['label_name']} -> {p['pred_name']} ({p['confidence']:.2f})")
    print(f"wrote {out / 'zeroshot.json'} and {out / 'zeroshot.md'}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "zeroshot", "zero-shot classification accuracy on an image folder or the samples")
    p.add_argument("--data", default="samples",
                   help="'samples' (embedded photos) or an ImageFolder directory (default: samples)")
    p.add_argument("--out", required=True, help="output folder for zeroshot.json and zeroshot.md")
    p.add_argument("--templates", default="short", choices=["short", "imagenet", "clip-short", "name"],
                   help="prompt template set (default: short)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    add_model_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
