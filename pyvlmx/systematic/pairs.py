"""The pair list of a systematic sweep: every image times every other class.

A pair is (image i, target class c != label(i)).  The list is ordered by image,
then target class, and numbered ``pair_id`` 0..P-1; it depends only on the
dataset's labels and the options, never on how many processes run it.  A
subset keeps ``targets=K`` target classes per image, drawn with a generator
seeded by (seed, image index), so it too is reproducible.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Pair:
    """One unit of work.

    Attributes:
        pair_id: position in the pair list.
        image_index: index into the dataset.
        label: the image's true class.
        target_class: class the image is aligned to.
        target_image: dataset index of the target image (image-target mode), else None.
        seed: the pair's own seed (random start), a function of (seed, image, target) only.
    """

    pair_id: int
    image_index: int
    label: int
    target_class: int
    target_image: int | None
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)


def pair_seed(seed: int, image_index: int, target_class: int) -> int:
    return zlib.crc32(f"{seed}:{image_index}:{target_class}".encode()) & 0x7FFFFFFF


def build_pairs(labels: list[int], num_classes: int, targets: str | int = "all", target_mode: str = "text",
                seed: int = 0, max_images: int | None = None) -> list[Pair]:
    """Build the sweep's pair list.

    Args:
        labels: true class of each dataset image.
        num_classes: C.
        targets: ``"all"`` (every class but the image's own) or K (K classes
            per image, sampled without replacement, seeded).
        target_mode: ``"text"`` (target = class text embedding) or
            ``"image"`` (target = embedding of an image of the target class:
            the class's images are used in turn, image i takes the
            (i mod n_c)-th one).
        seed: base seed.
        max_images: only the first this many images.

    Returns:
        list of :class:`Pair`, ``pair_id`` = position.
    """
    if target_mode not in ("text", "image"):
        raise ValueError(f"target_mode must be 'text' or 'image', got {target_mode!r}")
    if num_classes < 2:
        raise ValueError(f"a sweep needs at least 2 classes, got {num_classes}")
    bad = sorted({y for y in labels if not (0 <= y < num_classes)})
    if bad:
        raise ValueError(f"labels out of range [0, {num_classes}): {bad[:5]}")
    if targets != "all":
        try:
            k = int(targets)
        except (TypeError, ValueError):
            raise ValueError(f"targets must be 'all' or a positive integer, got {targets!r}") from None
        if k < 1:
            raise ValueError(f"targets must be 'all' or a positive integer, got {targets!r}")
        targets = k
    n = len(labels) if max_images is None else min(len(labels), int(max_images))
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    pairs: list[Pair] = []
    for i in range(n):
        y = labels[i]
        others = [c for c in range(num_classes) if c != y]
        if targets != "all" and targets < len(others):
            rng = random.Random(pair_seed(seed, i, -1))
            others = sorted(rng.sample(others, targets))
        for c in others:
            timg = None
            if target_mode == "image":
                imgs = by_class.get(c)
                if not imgs:
                    continue  # no image of class c to take the target from
                timg = imgs[i % len(imgs)]
            pairs.append(Pair(len(pairs), i, y, c, timg, pair_seed(seed, i, c)))
    return pairs


def chunks_for_rank(n_pairs: int, chunk_size: int, rank: int, world: int) -> list[range]:
    """The chunks of ``pair_id``s rank ``rank`` of ``world`` runs.

    Chunk k holds pairs [k * chunk_size, (k + 1) * chunk_size); chunk k goes to
    rank k mod world.  Every pair is in exactly one chunk and one rank, with no
    padding, and a chunk's members never depend on ``world``: a sharded run
    computes every chunk exactly as a single process would.
    """
    if chunk_size < 1:
        raise ValueError(f"batch size must be >= 1, got {chunk_size}")
    if not (0 <= rank < world):
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    n_chunks = (n_pairs + chunk_size - 1) // chunk_size
    return [range(k * chunk_size, min(n_pairs, (k + 1) * chunk_size)) for k in range(rank, n_chunks, world)]
