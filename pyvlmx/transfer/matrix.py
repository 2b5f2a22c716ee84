"""Cross-model transfer of embedding alignment: align against model A, evaluate on B, C, ...

The paper (Salman et al., arXiv 2402.08473) calls embedding alignment model
agnostic and names cross-model validation as the first open check.  For each
source model A (and optionally an ensemble of all sources), every image x_i
(label y_i) is aligned with :class:`pyvlmx.attacks.EmbeddingAlignment`
against A towards a target of another class c_i, and the aligned image x'_i
is then shown to every evaluation model B:

    target_rate[A, B]   = mean_i [ argmax_c B.logits(x'_i)_c == c_i ]      (target class transfers)
    accuracy[A, B]      = mean_i [ argmax_c B.logits(x'_i)_c == y_i ]      (label survives)
    changed[A, B]       = mean_i [ pred_B(x'_i) != pred_B(x_i) ]
    cos_target[A, B]    = mean_i cos(B(x'_i), t^B_i),   cos_target_clean: same for x_i,

where the target t^B_i is B's own embedding of the target: the text
embedding of class c_i (``target="text"``) or B's embedding of the target
image (``target="image"``, the paper's image-to-image setting).  The
diagonal (A = B) is the white-box result; off-diagonal cells are transfer.

Targets: for image i the target is the next image (cyclically) whose label
differs, and c_i is its label, so both target kinds use the same classes.

All images live at one resolution S (the dataset's); a model whose
``image_size`` differs sees a differentiable bilinear resize of them (an
:class:`~pyvlmx.transfer.ensemble.EnsembleModel` of one), for alignment and
evaluation alike, so clean and aligned images go through the same pipeline.

Example (the embedded sample photos, four of them, at the tiny model's 32 x 32):
    >>> from pyvlmx.data import load_dataset
    >>> from pyvlmx.transfer import transfer_matrix
    >>> dataset = load_dataset("samples", 32)
    >>> res = transfer_matrix(["open_clip:pyvlmx-tiny-vit"], ["open_clip:pyvlmx-tiny-vit"],
    ...                       dataset, attack={"eps": 8 / 255, "max_steps": 20}, max_images=4, progress=False)
    >>> sorted(res["cells"]["open_clip:pyvlmx-tiny-vit"]["open_clip:pyvlmx-tiny-vit"])
    ['accuracy', 'changed', 'cos_target', 'cos_target_clean', 'target_rate', 'target_rate_given_success']
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import torch

from pyvlmx.models.base import VisionLanguageModel
from pyvlmx.transfer.ensemble import EnsembleModel

TARGETS = ("text", "image")
ENSEMBLE = "ensemble"


def _as_model(m, device) -> VisionLanguageModel:
    if isinstance(m, VisionLanguageModel):
        return m
    if isinstance(m, str):
        from pyvlmx.models import load_model

        return load_model(m, device=device)
    raise TypeError(f"transfer_matrix: expected model names or VisionLanguageModel instances, got {type(m).__name__}")


def _at_size(model: VisionLanguageModel, size: int) -> VisionLanguageModel:
    """The model itself when it takes ``size`` pixels, else a resizing wrapper with the same name."""
    if model.image_size == size:
        return model
    return EnsembleModel([model], image_size=size, name=model.name)


def assign_targets(labels: torch.Tensor) -> torch.Tensor:
    """For each image, the index of the next image (cyclically) with a different label: (N,)."""
    labels = torch.as_tensor(labels).reshape(-1)
    n = labels.numel()
    if n and bool((labels == labels[0]).all()):
        raise ValueError(f"transfer_matrix: need images of at least two classes, got {n} images all of class "
                         f"{int(labels[0])}")
    out = torch.empty(n, dtype=torch.long)
    for i in range(n):
        j = (i + 1) % n
        while labels[j] == labels[i]:
            j = (j + 1) % n
        out[i] = j
    return out


def _load_images(dataset, max_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n < 2:
        raise ValueError(f"transfer_matrix: need at least 2 images, dataset has {len(dataset)} "
                         f"(max_images={max_images})")
    pix, lab = zip(*(dataset[i] for i in range(n)))
    return torch.stack(pix), torch.as_tensor(lab, dtype=torch.long)


@torch.no_grad()
def _embed(model: VisionLanguageModel, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model.encode_image(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def transfer_matrix(source_models: Sequence, eval_models: Sequence | None, dataset, *,
                    ensemble: bool = False, target: str = "text", attack: dict | None = None,
                    templates: str | Sequence[str] = "short", max_images: int | None = None,
                    batch_size: int = 32, device: str | torch.device = "cpu", progress: bool = True,
                    keep_images: bool = False) -> dict:
    """Align images against each source model (and their ensemble) and evaluate on every eval model.

    Args:
        source_models: names (``load_model``) or models to align against.
        eval_models: names or models to evaluate on; None = the sources.
            A model given in both is loaded once.
        dataset: labelled images (``pyvlmx.data.load_dataset``): ``len``,
            ``[i] -> (pixels (3, S, S) in [0, 1], label)``, ``classnames``.
            Zero-shot classes are ``dataset.classnames``.
        ensemble: add a row aligned against the mean loss over all sources
            (:class:`EnsembleModel`).
        target: ``"text"`` (the target class's zero-shot weights) or
            ``"image"`` (the target image's embedding, the paper's setting).
        attack: options of :class:`pyvlmx.attacks.AlignmentConfig`
            (``eps``, ``max_steps``, ``optimizer``, ``loss``, ``stop``, ...).
        templates: prompt templates for the zero-shot weights (a set name
            such as ``"short"`` or a list).
        max_images: use the first ``max_images`` images.
        batch_size: images per alignment / evaluation batch.
        keep_images: also return the aligned images per source (tensor).

    Returns:
        dict with ``sources`` and ``evals`` (names, in order; the ensemble row
        is ``"ensemble"``), ``cells[src][eval]`` = {``target_rate``,
        ``accuracy``, ``changed``, ``cos_target``, ``cos_target_clean``,
        ``target_rate_given_success``}, ``rows[src]`` = source-side
        {``success_rate``, ``psnr``, ``ssim``, ``linf``, ``steps``, ``seconds``,
        ``members``}, ``clean[eval]`` = {``accuracy``, ``target_rate``},
        ``per_image[src]`` (target index/class, success, predictions per eval
        model), ``config`` and ``n_images``.
    """
    from pyvlmx.attacks import EmbeddingAlignment
    from pyvlmx.zeroshot import resolve_templates

    if target not in TARGETS:
        raise ValueError(f"transfer_matrix: target must be one of {list(TARGETS)}, got {target!r}")
    if not source_models:
        raise ValueError("transfer_matrix: expected at least one source model, got none")
    if batch_size < 1:
        raise ValueError(f"transfer_matrix: batch_size must be >= 1, got {batch_size}")
    templates = resolve_templates(templates)
    attack = dict(attack or {})
    classnames = list(dataset.classnames)

    loaded: dict[str, VisionLanguageModel] = {}

    def get(m) -> VisionLanguageModel:
        key = m if isinstance(m, str) else None
        if key is not None and key in loaded:
            return loaded[key]
        model = _as_model(m, device)
        loaded[key if key is not None else model.name] = model
        return model

    sources = [get(m) for m in source_models]
    evals = [get(m) for m in (source_models if eval_models is None else eval_models)]
    for group, what in ((sources, "source"), (evals, "eval")):
        names = [m.name for m in group]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"transfer_matrix: {what} model names must be distinct, got duplicates {dup}")

    x, y = _load_images(dataset, max_images)
    x, y = x.to(device), y.to(device)
    S = x.shape[-1]
    tidx = assign_targets(y.cpu()).to(device)
    tclass = y[tidx]

    rows = [(m.name, _at_size(m, S), [m.name]) for m in sources]
    if ensemble:
        ens = EnsembleModel(sources, image_size=S, name=ENSEMBLE)
        rows.append((ENSEMBLE, ens, [m.name for m in sources]))
    evals_s = [(m.name, _at_size(m, S)) for m in evals]

    # Evaluation-side quantities that do not depend on the source.
    ev = {}
    for name, model in evals_s:
        W = model.class_embeddings(classnames, templates).to(device)
        clean = _embed(model, x, batch_size)
        tgt = W[tclass] if target == "text" else clean[tidx]
        pred = (clean @ W.t()).argmax(dim=1)
        ev[name] = dict(W=W, clean=clean, tgt=tgt, pred=pred)
    clean_stats = {name: {"accuracy": float((d["pred"] == y).float().mean()),
                          "target_rate": float((d["pred"] == tclass).float().mean()),
                          "cos_target": float((d["clean"] * d["tgt"]).sum(1).mean())}
                   for name, d in ev.items()}

    cells: dict[str, dict] = {}
    row_stats: dict[str, dict] = {}
    per_image: dict[str, dict] = {}
    aligned_images: dict[str, torch.Tensor] = {}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rows), desc="transfer: aligning", disable=not progress, unit="source")
    for name, model, members in rows:
        atk = EmbeddingAlignment(model, **attack)
        W = model.class_embeddings(classnames, templates).to(device)
        t0 = time.perf_counter()
        imgs, succ, records = [], [], []
        for i in range(0, x.shape[0], batch_size):
            sl = slice(i, i + batch_size)
            kw = dict(target_classes=tclass[sl], class_weights=W, labels=y[sl],
                      seeds=list(range(i, min(i + batch_size, x.shape[0]))))
            if target == "image":
                kw["target_images"] = x[tidx[sl]]
            res = atk.run(x[sl], **kw)
            imgs.append(res.images.detach())
            succ.append(res.success.cpu())
            records += res.records
        seconds = time.perf_counter() - t0
        adv = torch.cat(imgs)
        success = torch.cat(succ)
        if keep_images:
            aligned_images[name] = adv.cpu()
        row_stats[name] = {
            "members": members,
            "success_rate": float(success.float().mean()),
            "psnr": _mean(r["psnr"] for r in records),
            "ssim": _mean(r["ssim"] for r in records),
            "linf": _mean(r["linf"] for r in records),
            "steps": _mean(float(r["steps"]) for r in records),
            "seconds": seconds,
        }
        cells[name] = {}
        preds = {}
        for ename, d in ev.items():
            emb = _embed(dict(evals_s)[ename], adv, batch_size)
            pred = (emb @ d["W"].t()).argmax(dim=1)
            hit = (pred == tclass).cpu()
            s = success
            cells[name][ename] = {
                "target_rate": float(hit.float().mean()),
                "target_rate_given_success": float(hit[s].float().mean()) if bool(s.any()) else None,
                "accuracy": float((pred == y).float().mean()),
                "changed": float((pred != d["pred"]).float().mean()),
                "cos_target": float((emb * d["tgt"]).sum(1).mean()),
                "cos_target_clean": clean_stats[ename]["cos_target"],
            }
            preds[ename] = pred.cpu().tolist()
        per_image[name] = {"success": success.tolist(), "pred": preds}
        bar.update(1)
    bar.close()

    out = {
        "sources": [r[0] for r in rows],
        "evals": [n for n, _ in evals_s],
        "cells": cells,
        "rows": row_stats,
        "clean": clean_stats,
        "n_images": int(x.shape[0]),
        "image_size": int(S),
        "classnames": classnames,
        "labels": y.cpu().tolist(),
        "target_index": tidx.cpu().tolist(),
        "target_class": tclass.cpu().tolist(),
        "per_image": per_image,
        "config": {"target": target, "ensemble": bool(ensemble), "templates": list(templates),
                   "attack": atk.config_dict(), "batch_size": batch_size,
                   "model_sizes": {m.name: m.image_size for m in sources + evals}},
    }
    if keep_images:
        out["images"] = aligned_images
    return out


def _fmt(v, pct: bool) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:.3f}"


def format_markdown(result: dict) -> str:
    """The matrices of a :func:`transfer_matrix` result as Markdown (rows: aligned against; columns: evaluated on)."""
    evals, sources, cells = result["evals"], result["sources"], result["cells"]
    cfg = result["config"]
    atk = cfg["attack"]
    lines = [f"# Cross-model transfer of embedding alignment",
             "",
             f"{result['n_images']} images at {result['image_size']} px, {len(result['classnames'])} classes; "
             f"target = {cfg['target']} embedding of another class; attack: loss={atk.get('loss')}, "
             f"optimizer={atk.get('optimizer')}, norm={atk.get('norm')}, eps={atk.get('eps', 0) * 255:.3g}/255, "
             f"max_steps={atk.get('max_steps')}, stop={atk.get('stop')}.",
             "Rows: model the images were aligned against; columns: model that classifies them "
             "(zero-shot over the dataset's classes). The diagonal is white-box; off-diagonal is transfer.",
             ""]

    def table(title, key, pct, extra=None):
        lines.append(f"## {title}")
        lines.append("")
        head = "| aligned against \\ evaluated on | " + " | ".join(evals) + " |"
        if extra:
            head += " " + " | ".join(e[0] for e in extra) + " |"
        lines.append(head)
        lines.append("|---|" + "---:|" * (len(evals) + (len(extra) if extra else 0)))
        for s in sources:
            row = f"| {s} | " + " | ".join(_fmt(cells[s][e][key], pct) for e in evals) + " |"
            if extra:
                row += " " + " | ".join(f(s) for _, f in extra) + " |"
            lines.append(row)
        lines.append("")

    rows = result["rows"]
    table("Target class reached (fraction of images classified as the target class)", "target_rate", True,
          extra=[("success on source", lambda s: _fmt(rows[s]["success_rate"], True)),
                 ("mean PSNR dB", lambda s: _fmt(rows[s]["psnr"], False)),
                 ("mean L-inf x255", lambda s: _fmt(None if rows[s]["linf"] is None else 255 * rows[s]["linf"],
                                                   False))])
    table("Cosine to the target under the evaluating model (aligned images)", "cos_target", False)
    lines.append("Clean images: " + ", ".join(f"{e} {result['clean'][e]['cos_target']:.3f}" for e in evals))
    lines.append("")
    table("Accuracy on the aligned images (true label still predicted)", "accuracy", True)
    lines.append("Clean accuracy: " + ", ".join(f"{e} {100 * result['clean'][e]['accuracy']:.0f}%" for e in evals))
    lines.append("")
    table("Prediction changed from the clean image", "changed", True)
    if "ensemble" in sources:
        members = rows["ensemble"]["members"]
        lines.append(f"`ensemble` = aligned against the mean loss over {', '.join(members)} "
                     f"(concatenated unit embeddings / sqrt(M)).")
        lines.append("")
    return "\n".join(lines)
