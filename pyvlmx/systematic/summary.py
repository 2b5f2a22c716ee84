"""Summary of a systematic sweep: zero-shot vs systematic accuracy, success, quality.

Definitions (per pair = one image aligned to one target class):

* zero-shot accuracy: fraction of images whose clean prediction is their class;
* systematic accuracy: fraction of pairs whose aligned image is still
  classified as the image's true class (the paper's "systematic evaluation");
  ``systematic_accuracy_images``: fraction of images that keep their class
  under every alignment;
* targeted success: fraction of pairs whose aligned image is classified as the
  target class; alignment success: the attack's stop rule held (target class
  with margin, or cosine threshold), on the saved 8-bit image when rounding
  was required;
* distributions of PSNR (dB; null = identical images), SSIM, cosine to the
  target and to the original embedding, L-inf/L2 of the change and steps:
  median, mean, min, max, 5/25/75/95th percentiles, and ``worst`` (lowest
  PSNR/SSIM/cosine, highest distance/steps), overall and per true class.
* ``confusion_target_vs_pred[t][p]``: pairs with target t predicted as p
  after alignment; ``confusion_true_vs_pred[y][p]``: by true class.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from pyvlmx.attacks.stop import record_success

# metric -> which end is the worst
METRICS = {"psnr": "min", "ssim": "min", "cos_target": "min", "cos_original": "max",
           "linf": "max", "l2": "max", "steps": "max", "conf_after": "min"}


def distribution(values: list[float | None], worst: str, none_as: float | None = None) -> dict:
    """Order statistics of a list; ``None`` entries count as ``none_as`` (or are dropped)."""
    vals = [none_as if v is None else v for v in values]
    vals = np.asarray([v for v in vals if v is not None], dtype=np.float64)
    if vals.size == 0:
        return {"n": 0}
    # +inf (PSNR of an unchanged image) would make interpolation produce NaN:
    # stand in a huge finite value, report it back as null
    big = 1e300
    finite = np.where(np.isposinf(vals), big, vals)
    q = np.percentile(finite, [5, 25, 50, 75, 95])

    def f(x):
        x = float(x)
        return x if (math.isfinite(x) and abs(x) < big / 10) else None  # inf PSNR -> null

    out = {"n": int(vals.size), "mean": f(vals.mean()) if np.isfinite(vals).all() else None,
           "min": f(finite.min()), "p5": f(q[0]), "p25": f(q[1]), "median": f(q[2]), "p75": f(q[3]),
           "p95": f(q[4]), "max": f(finite.max())}
    out["worst"] = out[worst]
    return out


def summarize(records: list[dict], classnames: list[str]) -> dict:
    """Summary dict of a sweep's records (see the module docstring).

    Args:
        records: one per pair (:func:`pyvlmx.systematic.load_records`).
        classnames: the C class names, label order.

    Returns:
        JSON-able dict.
    """
    C = len(classnames)
    n = len(records)
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") != "ok"]
    fail_reasons: dict[str, int] = defaultdict(int)
    for r in failed:
        fail_reasons[str(r.get("error", "unknown"))[:200]] += 1

    # zero-shot accuracy from the clean prediction of each image (first record)
    clean: dict[int, tuple[int, int]] = {}
    for r in ok:
        clean.setdefault(int(r["image_index"]), (int(r["label"]), int(r["pred_before"])))
    zs = [y == p for y, p in clean.values()]

    conf_t = [[0] * C for _ in range(C)]
    conf_y = [[0] * C for _ in range(C)]
    for r in ok:
        conf_t[int(r["target_class"])][int(r["pred_after"])] += 1
        conf_y[int(r["label"])][int(r["pred_after"])] += 1

    def rate(flags):
        return float(sum(flags)) / len(flags) if flags else None

    still_true = [r.get("status") == "ok" and r["pred_after"] == r["label"] for r in records]
    per_image: dict[int, bool] = {}
    for r, keep in zip(records, still_true):
        i = int(r["image_index"])
        per_image[i] = per_image.get(i, True) and keep

    def stats(rs):
        out = {}
        for m, worst in METRICS.items():
            none_as = math.inf if m == "psnr" else None
            out[m] = distribution([r.get(m) for r in rs], worst, none_as=none_as)
        return out

    per_class = {}
    for c in range(C):
        allc = [r for r in records if int(r.get("label", -1)) == c]
        if not allc:
            continue
        rs = [r for r in allc if r.get("status") == "ok"]
        per_class[classnames[c]] = {
            "pairs": len(allc),
            "systematic_accuracy": rate([r.get("status") == "ok" and r["pred_after"] == r["label"] for r in allc]),
            "targeted_success_rate": rate([record_success(r) for r in allc]),
            "metrics": stats(rs),
        }
    return {
        "pairs": n,
        "pairs_ok": len(ok),
        "pairs_failed": len(failed),
        "failure_reasons": dict(fail_reasons),
        "images": len(per_image),
        "classes": C,
        "classnames": list(classnames),
        "zero_shot_accuracy": rate(zs),
        "systematic_accuracy": rate(still_true),
        "systematic_accuracy_images": rate(list(per_image.values())),
        "targeted_success_rate": rate([record_success(r) for r in records]),
        "alignment_success_rate": rate([r.get("status") == "ok" and bool(r["success"]) for r in records]),
        "survives_rounding_rate": rate([r.get("status") == "ok" and bool(r.get("survives_rounding"))
                                        for r in records]),
        "metrics": stats(ok),
        "per_class": per_class,
        "confusion_target_vs_pred": conf_t,
        "confusion_true_vs_pred": conf_y,
    }


def format_summary(summary: dict) -> str:
    """A short human-readable report of :func:`summarize`'s output."""

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def num(x, f="{:.3f}"):
        return "inf" if x is None else f.format(x)

    m = summary["metrics"]
    lines = [
        f"pairs {summary['pairs']} ({summary['pairs_failed']} failed), images {summary['images']}, "
        f"classes {summary['classes']}",
        f"zero-shot accuracy   {pct(summary['zero_shot_accuracy'])}",
        f"systematic accuracy  {pct(summary['systematic_accuracy'])} "
        f"(images keeping their class under every alignment: {pct(summary['systematic_accuracy_images'])})",
        f"targeted success     {pct(summary['targeted_success_rate'])} "
        f"(stop rule met: {pct(summary['alignment_success_rate'])})",
    ]
    for key, label, fmt in (("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
                            ("cos_target", "cos to target", "{:.4f}"), ("linf", "L-inf", "{:.5f}"),
                            ("steps", "steps", "{:.1f}")):
        d = m.get(key, {})
        if d.get("n"):
            lines.append(f"{label:<14} median {num(d['median'], fmt)}  worst {num(d['worst'], fmt)}  "
                         f"p5 {num(d['p5'], fmt)}  p95 {num(d['p95'], fmt)}")
    if summary["failure_reasons"]:
        lines.append("failures: " + "; ".join(f"{k} x{v}" for k, v in summary["failure_reasons"].items()))
    return "\n".join(lines)
