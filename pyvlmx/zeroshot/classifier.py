"""Zero-shot classification: text prompts as classifier weights, and its evaluation.

CLIP's protocol (Radford et al., 2021): class ``c`` is represented by the
renormalised mean of the unit-norm text embeddings of ``template.format(c)``
over the templates, ``w_c``; an image ``x`` gets logits
``logit_scale * cos(e(x), w_c)`` and the prediction is their argmax.

Example:
    >>> from pyvlmx.models import load_model
    >>> from pyvlmx.zeroshot import ZeroShotClassifier
    >>> model = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    >>> clf = ZeroShotClassifier(model, ["cat", "dog"])
    >>> pred, conf = clf.predict(torch.rand(4, 3, 32, 32))
    >>> pred.shape, conf.shape
    (torch.Size([4]), torch.Size([4]))
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
from torch import nn

from pyvlmx.zeroshot.templates import CLIP_SHORT_TEMPLATES, IMAGENET_TEMPLATES

#: pyvlmx's default prompt set: plain photo prompts, short enough that 1000
#: class names encode quickly on a CPU.  With the ConSE default on the 23
#: sample photos (22 classes) these, CLIP's 80 and CLIP's 7 all give 23/23
#: top-1; the bare class name ("{}") gives 22/23.
SHORT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "short": SHORT_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
    "clip-short": CLIP_SHORT_TEMPLATES,
    "name": ("{}",),
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A template-set name from :data:`TEMPLATE_SETS` or a list of ``{}`` patterns, checked."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ValueError(f"unknown template set {templates!r}; choose from {sorted(TEMPLATE_SETS)} "
                             f"or pass a list of patterns containing '{{}}'")
        return TEMPLATE_SETS[templates]
    templates = tuple(templates)
    if not templates:
        raise ValueError("templates must not be empty")
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ValueError(f"every template needs exactly one '{{}}' for the class name, got {bad[:5]}")
    return templates


def _check_classnames(classnames: Sequence[str]) -> list[str]:
    if isinstance(classnames, str):
        raise TypeError("classnames must be a list of strings, got a single str")
    names = list(classnames)
    if not names:
        raise ValueError("classnames must not be empty")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"classnames must be non-empty strings, got {bad[:5]}")
    dup = sorted(n for n, k in Counter(names).items() if k > 1)
    if dup:
        raise ValueError(f"classnames must be distinct (identical prompts cannot be told apart), "
                         f"got duplicates {dup[:10]}")
    return names


class ZeroShotClassifier(nn.Module):
    """A vision-language model turned into a C-way classifier by text prompts.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel`.
        classnames: the C class names.
        templates: a template-set name (``"short"``, ``"imagenet"``,
            ``"clip-short"``, ``"name"``) or a list of ``{}`` patterns.

    Calling it (``forward``) returns the logits, so it drops into any code
    that attacks or evaluates a classifier.
    """

    def __init__(self, model, classnames: Sequence[str], templates: str | Sequence[str] = SHORT_TEMPLATES):
        super().__init__()
        self.model = model
        self.classnames = _check_classnames(classnames)
        self.templates = resolve_templates(templates)

    @property
    def weights(self) -> torch.Tensor:
        """(C, D) unit-norm class embeddings (cached by the model per classes and templates)."""
        return self.model.class_embeddings(self.classnames, self.templates)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """``logit_scale * cos(image, class)``: (B, C), differentiable with respect to ``pixels``.

        Args:
            pixels: (B, 3, H, W) float in [0, 1], H = W = ``model.image_size``.
        """
        return self.model.logits(pixels, self.weights)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logits(pixels)

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted class index (B,) and its softmax probability (B,)."""
        probs = self.logits(pixels).softmax(dim=-1)
        conf, pred = probs.max(dim=-1)
        return pred, conf

    def extra_repr(self) -> str:
        return f"classes={len(self.classnames)}, templates={len(self.templates)}"


@torch.no_grad()
def evaluate(model, dataset, templates: str | Sequence[str] = SHORT_TEMPLATES, batch_size: int = 32,
             classnames: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Zero-shot accuracy of ``model`` on a labelled dataset.

    Args:
        model: a VisionLanguageModel; the dataset's images must have its
            ``image_size`` (``load_dataset(spec, model.image_size)``).
        dataset: yields (pixels (3, H, W) in [0, 1], label); needs
            ``classnames`` unless given, and ``paths`` for per-image records.
        templates: template-set name or list of patterns.
        batch_size: images per forward pass.
        classnames: overrides ``dataset.classnames``.
        progress: show a tqdm progress bar.

    Returns:
        a JSON-able dict: ``top1``, ``top5`` (top-k with k = min(5, C),
        recorded as ``topk``), ``mean_per_class_top1``, ``per_class``
        {name: {n, correct, top1}}, ``confusion`` (C x C list, rows = true
        class, columns = prediction), ``predictions`` (one record per image:
        path, label, pred, confidence, top-k names and probabilities,
        correct), plus ``classnames``, ``templates``, ``n_images``, ``model``.
    """
    from tqdm.auto import tqdm

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    names = list(classnames) if classnames is not None else list(dataset.classnames)
    clf = ZeroShotClassifier(model, names, templates)
    n = len(dataset)
    if n == 0:
        raise ValueError("evaluate: the dataset is empty")
    C = len(names)
    k = min(5, C)
    device = model.device
    weights = clf.weights
    paths = list(getattr(dataset, "paths", [None] * n))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    confusion = torch.zeros(C, C, dtype=torch.long)
    predictions = []
    top1 = topk = 0
    seen = 0
    with tqdm(total=n, desc=f"zero-shot {getattr(model, 'name', 'model')}", unit="img",
              disable=not progress) as bar:
        for pixels, labels in loader:
            labels = torch.as_tensor(labels)
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= C):
                raise ValueError(f"evaluate: labels must lie in [0, {C}), got values in "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
            probs = model.logits(pixels.to(device, model.dtype), weights).softmax(dim=-1).float().cpu()
            top_p, top_i = probs.topk(k, dim=-1)
            pred = top_i[:, 0]
            top1 += int((pred == labels).sum())
            topk += int((top_i == labels[:, None]).any(dim=1).sum())
            confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
            for j in range(len(labels)):
                y, p = int(labels[j]), int(pred[j])
                predictions.append({
                    "index": seen + j, "path": paths[seen + j], "label": y, "label_name": names[y],
                    "pred": p, "pred_name": names[p], "confidence": float(top_p[j, 0]),
                    "label_prob": float(probs[j, y]), "correct": p == y,
                    "topk": [[names[int(i)], float(q)] for q, i in zip(top_p[j], top_i[j])],
                })
            seen += len(labels)
            bar.update(len(labels))
    conf_sum = [0.0] * C
    for p in predictions:
        conf_sum[p["label"]] += p["confidence"]
    per_class = {}
    for c, name in enumerate(names):
        total = int(confusion[c].sum())
        correct = int(confusion[c, c])
        per_class[name] = {"n": total, "correct": correct, "top1": correct / total if total else None,
                           "mean_confidence": conf_sum[c] / total if total else None}
    accs = [v["top1"] for v in per_class.values() if v["top1"] is not None]
    return {
        "model": getattr(model, "name", type(model).__name__),
        "n_images": n, "n_classes": C, "topk": k,
        "top1": top1 / n, "top5": topk / n,
        "mean_per_class_top1": sum(accs) / len(accs),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "classnames": names,
        "templates": list(clf.templates),
        "logit_scale": float(getattr(model, "logit_scale", float("nan"))),
        "predictions": predictions,
    }


def format_table(result: dict) -> str:
    """The per-class table of an :func:`evaluate` result as Markdown."""
    rows = ["| class | images | correct | top-1 | mean confidence |", "|---|---:|---:|---:|---:|"]
    for name, v in result["per_class"].items():
        acc = "n/a" if v["top1"] is None else f"{100 * v['top1']:.1f}%"
        conf = "n/a" if v["mean_confidence"] is None else f"{v['mean_confidence']:.3f}"
        rows.append(f"| {name} | {v['n']} | {v['correct']} | {acc} | {conf} |")
    mean_conf = sum(p["confidence"] for p in result["predictions"]) / result["n_images"]
    rows.append(f"| **all** | {result['n_images']} | {round(result['top1'] * result['n_images'])} | "
                f"**{100 * result['top1']:.1f}%** | {mean_conf:.3f} |")
    return "\n".join(rows)
