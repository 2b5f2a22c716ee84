"""The systematic sweep: align every image to every other class, classify, record.

``run_sweep(model, dataset, out_dir, attack=..., sweep=...)`` runs the pair list
(:func:`pyvlmx.systematic.pairs.build_pairs`) through
:class:`~pyvlmx.attacks.EmbeddingAlignment`, whose samples stop on their own.
Two schedules:

* ``continuous`` (default): ``batch_size`` slots are kept busy; when a pair
  leaves (success, failure, step limit) the next pending pair of this rank
  takes its slot at step 0 (:class:`~pyvlmx.attacks.engine.SlotLoop`).  With
  ``fixed_shapes`` every forward runs at one batch shape, so a pair's record
  is the same bit for bit whichever pairs share its batch;
* ``fixed``: chunks of ``batch_size`` pairs, each run until its slowest pair
  is done (the batch shrinks as pairs finish).

Records stream to ``shards/rank<r>-of<N>.jsonl`` as pairs finish (one line
each, fsync'd).  Resume and sharding give the same results as one
uninterrupted process:

* restart on the same folder: continuous runs only the missing pairs (their
  records do not depend on companions); fixed skips chunks whose pairs are
  all recorded and recomputes a chunk cut short whole (same batch, same
  numbers), writing only its missing pairs;
* ``torchrun --nproc_per_node=N``: chunk k of ``batch_size`` pairs belongs
  to rank k mod N (no duplicates), each rank writes its own shard, rank 0 merges at the end
  (``pyvlmx merge DIR`` does the same by hand).

Every pair's seed is a function of (seed, image, target) only.  Bit-identical
results also need the same device, dtype and thread count (float reductions
in the encoder depend on them); the configuration check on resume covers
device type and bf16.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from pyvlmx.attacks import create_attack, quantize_to_budget, record_success
from pyvlmx.runlock import run_lock
from pyvlmx.io import write_json
from pyvlmx.systematic import store
from pyvlmx.systematic.config import ATTACK_DEFAULTS, resolve_sweep_options  # noqa: F401 (ATTACK_DEFAULTS: API)
from pyvlmx.systematic.pairs import build_pairs, chunks_for_rank
from pyvlmx.systematic.summary import format_summary, summarize

FORMAT_VERSION = 1


def _labels(dataset) -> list[int]:
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return [int(y) for _, y in samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _paths(dataset) -> list[str]:
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return [str(p) for p, _ in samples]
    return [f"#{i}" for i in range(len(dataset))]


def _dist_setup(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world, initialised_here): joins torch.distributed when launched by torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this torch build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def _barrier(world: int, device: torch.device) -> None:
    if world <= 1:
        return
    import torch.distributed as dist

    if device.type == "cuda" and dist.get_backend() == "nccl":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def _check_config(out_dir: Path, config: dict, rank: int, world: int, device: torch.device) -> None:
    path = out_dir / store.CONFIG_NAME
    if rank == 0 and not path.exists():
        write_json(path, config, indent=2, sort_keys=True)
    _barrier(world, device)
    store.check_config(out_dir, json.loads(path.read_text()), config)  # names only the keys that differ


def sweep_config(model, dataset, *, attack, targets, target_mode, batch_size, templates, seed, max_images,
                 quantize_inputs, device, schedule="fixed", fixed_shapes=True) -> dict:
    classnames = list(dataset.classnames)
    paths = _paths(dataset)
    digest = hashlib.sha256("\n".join(f"{p}\t{y}" for p, y in zip(paths, _labels(dataset))).encode()).hexdigest()
    return {
        "format": FORMAT_VERSION,
        "model": getattr(model, "name", type(model).__name__),
        "image_size": int(model.image_size),
        "dataset": str(getattr(dataset, "root", "")),
        "dataset_sha256": digest,
        "images": len(paths),
        "classnames": classnames,
        "targets": targets,
        "target_mode": target_mode,
        "batch_size": int(batch_size),
        "schedule": schedule,
        "fixed_shapes": bool(fixed_shapes),
        "templates": list(templates),
        "seed": int(seed),
        "max_images": max_images,
        "quantize_inputs": bool(quantize_inputs),
        "device_type": device.type,
        "attack": attack.config_dict(),
    }


class _ImageCache:
    """Dataset images by index, a few chunks' worth kept; load errors remembered."""

    def __init__(self, dataset, device, quantize: bool, size: int):
        self.dataset, self.device, self.quantize, self.size = dataset, device, quantize, size
        self.cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.errors: dict[int, str] = {}

    def get(self, i: int) -> torch.Tensor | None:
        if i in self.errors:
            return None
        if i in self.cache:
            self.cache.move_to_end(i)
            return self.cache[i]
        try:
            x, _ = self.dataset[i]
        except (OSError, ValueError) as exc:  # missing / unreadable file (UnreadableImageError is a ValueError)
            self.errors[i] = f"image {i} could not be loaded: {type(exc).__name__}: {exc}"
            return None
        x = x.to(self.device, torch.float32)
        if self.quantize:
            x = quantize_to_budget(x)
        self.cache[i] = x
        while len(self.cache) > self.size:
            self.cache.popitem(last=False)
        return x


def run_sweep(model, dataset, out_dir: str | os.PathLike, attack=None, sweep=None, **cfg: Any) -> dict:
    """Systematic evaluation: align every image to every other class and classify it.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel` (on its device).
        dataset: labelled images with ``classnames`` and ``samples`` (path,
            label), ``__getitem__`` -> ((3, H, W) in [0, 1], label), H = W =
            ``model.image_size`` (``pyvlmx.data.load_dataset(spec, model.image_size)``).
        out_dir: the sweep folder (created; an existing one is resumed).
        attack: the attack: an :class:`~pyvlmx.attacks.AlignmentConfig` (or
            another registered attack's config), a dict of embedding
            alignment's options, an attack name, ``(name, options)``, or None.
            Given by name or options, a failing pair is recorded
            (``errors="record"``) and the attack's seed is the sweep's.
        sweep: a :class:`~pyvlmx.systematic.config.SweepConfig` or a dict of
            its options: ``targets`` ("all" or K per image, at most the number
            of other classes), ``target_mode`` ("text": the class text
            embedding; "image": the embedding of an image of the class),
            ``batch_size`` (32), ``templates`` (prompt set name or list;
            "short"), ``seed`` (0), ``max_images``, ``save_images`` (False:
            write each aligned image as ``images/<pair_id>.png``, 8-bit
            lossless), ``quantize_inputs`` (True: originals are rounded to 8
            bits, as a saved photo is), ``progress`` (True: tqdm bar on rank
            0), ``wait`` (False: when another run holds ``out_dir``, wait for
            it instead of raising :class:`~pyvlmx.runlock.RunLockBusy`).
        **cfg: the same options flat (``eps=8 / 255, batch_size=16``): each
            goes to the configuration that has the field; an unknown one is a
            ValueError naming the configuration and listing its fields.

    Returns:
        the summary dict (:func:`pyvlmx.systematic.summary.summarize`, plus
        ``config`` and ``timing``), also written to ``summary.json``.
        Records (``records.jsonl``, :func:`load_records`) hold per pair:
        ``pair_id``, ``image_index``, ``image_path``, ``label``,
        ``true_class``, ``target_class``, ``target_name``, ``target_image``,
        ``seed``, ``status`` ("ok"/"failed"), ``error``, the attack's record
        fields (steps, loss, cosines, predictions, PSNR, SSIM, L-inf, L2,
        ``survives_rounding``, ``wall_s``) and ``png`` (path relative to
        ``out_dir``, or None).

    Example:
        >>> from pyvlmx.models import load_model
        >>> from pyvlmx.data import load_dataset
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> ds = load_dataset("samples", m.image_size)               # doctest: +SKIP
        >>> summary = run_sweep(m, ds, "out/sweep", attack={"eps": 8 / 255},
        ...                     sweep={"targets": 2})                 # doctest: +SKIP
    """
    from pyvlmx.zeroshot import resolve_templates

    out_dir = Path(out_dir)
    attack_name, attack_cfg, sweep_cfg = resolve_sweep_options(attack, sweep, cfg)
    sweep_opts = dataclasses.asdict(sweep_cfg)
    bs = sweep_cfg.batch_size
    device = model.device
    attack = create_attack(attack_name, model, **dataclasses.asdict(attack_cfg))
    templates = resolve_templates(sweep_opts["templates"])
    classnames = list(dataset.classnames)
    labels = _labels(dataset)
    paths = _paths(dataset)
    if len(labels) == 0:
        raise ValueError("the dataset holds no images")
    sweep_cfg.check_dataset(len(classnames))  # K target classes per image must exist, before any work
    size = getattr(dataset, "image_size", model.image_size)
    if size is not None and size != model.image_size:
        raise ValueError(f"dataset images are {size}x{size} but {model.name} takes "
                         f"{model.image_size}x{model.image_size}; load it with image_size={model.image_size}")

    rank, world, own_pg = _dist_setup(device)
    held = contextlib.ExitStack()
    try:
        # one run per folder for the whole sweep; the ranks of one torchrun job share it
        held.enter_context(run_lock(out_dir, wait=bool(sweep_opts["wait"])))
        out_dir.mkdir(parents=True, exist_ok=True)
        pairs = build_pairs(labels, len(classnames), targets=sweep_opts["targets"],
                            target_mode=sweep_opts["target_mode"], seed=sweep_opts["seed"],
                            max_images=sweep_opts["max_images"])
        config = sweep_config(model, dataset, attack=attack, targets=sweep_opts["targets"],
                              target_mode=sweep_opts["target_mode"], batch_size=bs, templates=templates,
                              seed=sweep_opts["seed"], max_images=sweep_opts["max_images"],
                              quantize_inputs=sweep_opts["quantize_inputs"], device=device,
                              schedule=sweep_opts["schedule"], fixed_shapes=sweep_opts["fixed_shapes"])
        config["n_pairs"] = len(pairs)
        _check_config(out_dir, config, rank, world, device)
        t0 = time.perf_counter()
        computed = _run_rank(model, attack, dataset, pairs, classnames, labels, paths, templates, out_dir, bs,
                             rank, world, sweep_opts, device)
        elapsed = time.perf_counter() - t0
        _barrier(world, device)
        summary_path = out_dir / store.SUMMARY_NAME
        if rank == 0:
            summary = merge(out_dir, expected=len(pairs))
            summary["timing"] = {"elapsed_s": elapsed, "pairs_computed_rank0": computed,
                                 "pairs_per_s_rank0": computed / elapsed if elapsed > 0 else None,
                                 "world_size": world}
            write_json(summary_path, summary, indent=2)
        _barrier(world, device)
        if rank != 0:
            summary = json.loads(summary_path.read_text())
        return summary
    finally:
        held.close()
        if own_pg:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run_rank(model, attack, dataset, pairs, classnames, labels, paths, templates, out_dir, bs, rank, world,
              opts, device) -> int:
    """Run this rank's chunks; returns how many pairs it computed (and wrote)."""
    from pyvlmx.zeroshot import ZeroShotClassifier

    done = {int(r["pair_id"]) for r in store.collect_records(out_dir)}
    chunks = chunks_for_rank(len(pairs), bs, rank, world)
    mine = sum(len(c) for c in chunks)
    mine_done = sum(1 for c in chunks for p in c if p in done)
    W = ZeroShotClassifier(model, classnames, templates).weights.to(device)
    cache = _ImageCache(dataset, device, opts["quantize_inputs"], size=4 * bs + 8)
    save = bool(opts["save_images"])
    image_mode = opts["target_mode"] == "image"
    writer = store.JsonlWriter(store.shard_path(out_dir, rank, world))
    bar = None
    if opts["progress"] and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=mine, initial=mine_done, unit="pair", desc=f"systematic ({world} proc)" if world > 1
                   else "systematic", dynamic_ncols=True)
    n_written = 0
    n_success = 0

    def base(p) -> dict:
        return {"pair_id": p.pair_id, "image_index": p.image_index, "image_path": paths[p.image_index],
                "label": p.label, "true_class": classnames[p.label], "target_class": p.target_class,
                "target_name": classnames[p.target_class], "target_image": p.target_image, "seed": p.seed}

    def failed(p, why: str) -> dict:
        rec = base(p)
        rec.update({"status": "failed", "error": why, "success": False, "png": None})
        return rec

    def emit(recs: list[dict]) -> None:
        nonlocal n_written, n_success
        recs = [r for r in recs if r["pair_id"] not in done]
        if not recs:
            return
        writer.write(recs)
        for r in recs:
            done.add(r["pair_id"])
        n_written += len(recs)
        n_success += sum(1 for r in recs if record_success(r))
        if bar is not None:
            bar.update(len(recs))
            bar.set_postfix(success=f"{100.0 * n_success / max(n_written, 1):.1f}%", refresh=False)

    def run_group(group: list, **schedule) -> None:
        """Run the pairs ``group`` (not yet recorded) as one attack run; stream their records."""
        runnable, bad = [], []
        for p in group:
            x = cache.get(p.image_index)
            tx = cache.get(p.target_image) if p.target_image is not None else None
            if x is None:
                bad.append(failed(p, cache.errors[p.image_index]))
            elif p.target_image is not None and tx is None:
                bad.append(failed(p, "target " + cache.errors[p.target_image]))
            else:
                runnable.append(p)
        emit(bad)
        if not runnable:
            return
        x0 = torch.stack([cache.get(p.image_index) for p in runnable])
        kw = {"target_classes": torch.tensor([p.target_class for p in runnable]), "class_weights": W,
              "labels": torch.tensor([p.label for p in runnable]), "seeds": [p.seed for p in runnable]}
        if image_mode:
            kw["target_images"] = torch.stack([cache.get(p.target_image) for p in runnable])

        def on_done(idx: list[int], recs: list[dict], imgs: torch.Tensor, _run=runnable) -> None:
            out = []
            for j, rec, img in zip(idx, recs, imgs):
                p = _run[j]
                if p.pair_id in done:
                    continue
                r = base(p)
                r.update(rec)
                r["status"] = "failed" if rec["reason"].startswith("non-finite") else "ok"
                r["error"] = rec["reason"] if r["status"] == "failed" else None
                r["png"] = None
                if save:
                    r["png"] = _save_png(out_dir, p.pair_id, img, x0[j], rec["eps"], attack)
                out.append(r)
            emit(out)

        try:
            attack.run(x0, on_done=on_done, **kw, **schedule)
        except RuntimeError as exc:  # e.g. out of memory: record the group's unrecorded pairs as failed, go on
            emit([failed(p, f"{type(exc).__name__}: {exc}"[:500]) for p in runnable])

    try:
        if opts["schedule"] == "fixed":
            for chunk in chunks:
                cp = [pairs[i] for i in chunk]
                if all(p.pair_id in done for p in cp):
                    continue  # a chunk cut short is recomputed whole: same batch, same numbers
                run_group(cp)
        else:
            # one pending list: a pair's record does not depend on its companions, so only the
            # missing pairs run; windows bound the originals held in memory
            pending = [pairs[i] for c in chunks for i in c if i not in done]
            window = max(8 * bs, 256)
            for w in range(0, len(pending), window):
                run_group(pending[w:w + window], schedule="continuous", batch_size=bs,
                          pad=bool(opts["fixed_shapes"]))
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    return n_written


def _save_png(out_dir: Path, pair_id: int, img: torch.Tensor, x0: torch.Tensor, eps: float, attack) -> str:
    """Write the aligned image as an 8-bit PNG (atomically); returns its path relative to ``out_dir``."""
    from pyvlmx.data import save_png

    cfg = attack.config
    q = quantize_to_budget(img[None], x0[None], eps, cfg.norm)[0]
    rel = Path("images") / f"{pair_id:06d}.png"
    final = out_dir / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp.png")
    save_png(q.cpu(), tmp)
    os.replace(tmp, final)
    return str(rel)


def merge(out_dir: str | os.PathLike, expected: int | None = None, partial: bool = False) -> dict:
    """Join a sweep folder's shard files into ``records.jsonl`` and write ``summary.json``.

    Args:
        out_dir: the sweep folder.
        expected: number of pairs the sweep has; default: ``n_pairs`` from
            its ``config.json``.  Fewer records is an error unless ``partial``.
        partial: summarise an unfinished sweep (what is recorded so far).

    Returns:
        the summary dict (with ``config``).
    """
    out_dir = Path(out_dir)
    cfg_path = out_dir / store.CONFIG_NAME
    if not cfg_path.exists():
        raise FileNotFoundError(f"{out_dir} is not a sweep folder (no {store.CONFIG_NAME})")
    config = json.loads(cfg_path.read_text())
    records = store.collect_records(out_dir)
    if expected is None:
        expected = config.get("n_pairs")
    if expected is not None and len(records) != expected and not partial:
        missing = expected - len(records)
        raise RuntimeError(f"{out_dir}: {len(records)} of {expected} pairs recorded ({missing} missing); "
                           f"run the sweep again on this folder to finish it")
    store.write_merged(out_dir, records)
    summary = summarize(records, config["classnames"])
    summary["config"] = config
    old_path = out_dir / store.SUMMARY_NAME
    if old_path.exists():  # keep the timing of the run that wrote it (a by-hand merge has none)
        timing = json.loads(old_path.read_text()).get("timing")
        if timing is not None:
            summary["timing"] = timing
    write_json(out_dir / store.SUMMARY_NAME, summary, indent=2)
    store.atomic_write_text(out_dir / "summary.txt", format_summary(summary) + "\n")
    return summary
