"""``pyvlmx zeroshot``: zero-shot accuracy of a model on an image folder or the samples."""

from __future__ import annotations

import json
import time
from pathlib import Path


def _run(args) -> int:
    import torch

    from pyvlmx.data import load_dataset
    from pyvlmx.models import load_model
    from pyvlmx.zeroshot import evaluate, format_table, resolve_templates

    templates = resolve_templates(args.templates)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {args.device} requested but torch sees no CUDA device")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = load_model(args.model, pretrained=args.pretrained, device=args.device)
    model.check_inputs = False  # the dataset yields valid [0, 1] crops of the right size
    dataset = load_dataset(args.data, model.image_size)
    print(f"{model.name}: {len(dataset)} images, {len(dataset.classnames)} classes from {dataset.root}, "
          f"{len(templates)} templates ({args.templates})")
    result = evaluate(model, dataset, templates=templates, batch_size=args.batch_size, progress=not args.no_progress)
    result.update({
        "data": str(args.data), "data_root": str(dataset.root), "device": args.device,
        "template_set": args.templates, "seconds": round(time.time() - t0, 2),
        "skipped": [{"path": s.path, "reason": s.reason} for s in dataset.skipped],
    })
    (out / "zeroshot.json").write_text(json.dumps(result, indent=1))
    table = format_table(result)
    report = (f"# pyvlmx zeroshot\n\nmodel `{result['model']}`, data `{args.data}` ({result['n_images']} images, "
              f"{result['n_classes']} classes), templates `{args.templates}` ({len(templates)})\n\n"
              f"top-1 {100 * result['top1']:.1f}%, top-{result['topk']} {100 * result['top5']:.1f}%, "
              f"mean per-class top-1 {100 * result['mean_per_class_top1']:.1f}%\n\n{table}\n")
    if dataset.skipped:
        report += f"\n{len(dataset.skipped)} file(s) skipped:\n" + "".join(
            f"- {s.path}: {s.reason}\n" for s in dataset.skipped)
    (out / "zeroshot.md").write_text(report)
    print(table)
    print(f"top-1 {100 * result['top1']:.1f}%  top-{result['topk']} {100 * result['top5']:.1f}%  "
          f"mean per-class {100 * result['mean_per_class_top1']:.1f}%  ({result['seconds']} s)")
    wrong = [p for p in result["predictions"] if not p["correct"]]
    for p in wrong:
        print(f"  wrong: {p['path']}: {p['label_name']} -> {p['pred_name']} ({p['confidence']:.2f})")
    print(f"wrote {out / 'zeroshot.json'} and {out / 'zeroshot.md'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("zeroshot", help="zero-shot classification accuracy on an image folder or the samples")
    p.add_argument("--model", default="default", help="registry name (default: the offline ConSE model)")
    p.add_argument("--pretrained", default=None, help="family-specific weights (tag or file)")
    p.add_argument("--data", default="samples",
                   help="'samples' (embedded photos) or an ImageFolder directory (default: samples)")
    p.add_argument("--out", required=True, help="output folder for zeroshot.json and zeroshot.md")
    p.add_argument("--templates", default="short", choices=["short", "imagenet", "clip-short", "name"],
                   help="prompt template set (default: short)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
