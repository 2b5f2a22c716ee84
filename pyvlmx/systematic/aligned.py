"""A sweep folder's aligned images, read back for the analyses (noise, spectra, detection)."""

from __future__ import annotations

from pathlib import Path


def spread_over_images(recs: list[dict]) -> list[dict]:
    """Records reordered round-robin over ``image_index`` (stable within an image).

    Example:
        >>> recs = [{"pair_id": i, "image_index": i // 2} for i in range(4)]
        >>> [r["pair_id"] for r in spread_over_images(recs)]
        [0, 2, 1, 3]
    """
    by_image: dict[int, list[dict]] = {}
    for r in sorted(recs, key=lambda r: r["pair_id"]):
        by_image.setdefault(int(r["image_index"]), []).append(r)
    out = []
    for rnd in range(max((len(v) for v in by_image.values()), default=0)):
        out += [v[rnd] for _, v in sorted(by_image.items()) if rnd < len(v)]
    return out


def load_aligned_pairs(sweep_dir: str, image_size: int, max_pairs: int | None = None):
    """Originals, aligned images, labels, target classes and records of a sweep's successful pairs.

    With ``max_pairs``, the pairs are taken round-robin over the source
    images (first target of every image, then the second, ...), so that a
    small subset spans as many images as it can.

    Returns:
        (originals (N, 3, H, W), aligned (N, 3, H, W), labels, target classes, records).
    """
    import torch

    from pyvlmx.data import load_image
    from pyvlmx.systematic.store import load_records

    root = Path(sweep_dir)
    recs = [r for r in load_records(root) if r.get("status") == "ok" and r.get("png")]
    if not recs:
        raise ValueError(f"sweep {root} has no successful pairs with saved PNGs (run it with --save-images)")
    if max_pairs is not None:
        recs = spread_over_images(recs)[:max_pairs]
    orig = torch.stack([load_image(r["image_path"], image_size) for r in recs])
    al = torch.stack([load_image(root / r["png"], image_size) for r in recs])
    return orig, al, [int(r["label"]) for r in recs], [int(r["target_class"]) for r in recs], recs
