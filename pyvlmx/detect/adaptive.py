"""Aligned images for detection experiments, including the adaptive EOT attacker.

:func:`align` runs the registered attacks of :mod:`pyvlmx.attacks` (no loop
of its own): plain alignment (``eot_samples = 0``,
:class:`~pyvlmx.attacks.EmbeddingAlignment`) or the adaptive attacker of the
noise detector, :class:`~pyvlmx.attacks.EOTAlignment`, whose objective is
the alignment loss in expectation over the detector's own noise,

    L(x) = 1/2 ||f(x) - t||^2 + 1/2 E_eps ||f(clip(x + sigma eps)) - t||^2,

so the aligned image is aligned *and* stays aligned under the noise the
detector probes with.  Every step is taken (``stop="steps"``) and the result
is the 8-bit image inside the budget (:func:`pyvlmx.attacks.quantize_to_budget`).
"""

from __future__ import annotations

import torch

from pyvlmx.attacks import create_attack


def align(model, images: torch.Tensor, targets: torch.Tensor, *, eps: float = 8 / 255, steps: int = 100,
          step_size: float | None = None, eot_samples: int = 0, sigma: float = 4 / 255, seed: int = 0,
          batch_size: int = 8) -> tuple[torch.Tensor, dict]:
    """Align images to target embeddings (optionally in expectation over noise).

    Args:
        model: the model.
        images: (N, 3, H, W) in [0, 1].
        targets: (N, D) target embeddings (e.g. ``model.encode_image`` of target images).
        eps: L-inf budget in pixels.
        steps: sign steps, all taken.
        step_size: pixels per sign step (default eps / 8).
        eot_samples: noisy copies per step in the EOT term (0: plain alignment).
        sigma: Gaussian noise of the EOT term (the detector's sigma); copies are clamped to [0, 1].
        seed: image i's noise and start use seed ``seed + i``.
        batch_size: images per attack batch.

    Returns:
        (aligned (N, 3, H, W) 8-bit inside the budget, info dict with the
        per-image final ``cosine`` to the target, ``linf``, and the config).

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> with torch.no_grad():
        ...     t = m.encode_image(x.flip(0))
        >>> out, info = align(m, x, t, steps=3, eot_samples=2)
        >>> float((out - x).abs().max()) <= 8 / 255 + 1e-6, len(info["cosine"])
        (True, 2)
    """
    if images.dim() != 4 or targets.dim() != 2 or images.shape[0] != targets.shape[0]:
        raise ValueError(f"expected images (N, 3, H, W) and targets (N, D), got {tuple(images.shape)} and "
                         f"{tuple(targets.shape)}")
    if eps <= 0 or steps < 0 or eot_samples < 0 or batch_size < 1:
        raise ValueError(f"need eps > 0, steps >= 0, eot_samples >= 0, batch_size >= 1; got {eps}, {steps}, "
                         f"{eot_samples}, {batch_size}")
    step = float(step_size if step_size is not None else eps / 8)
    opts = {"eps": float(eps), "max_steps": int(steps), "step_size": step, "stop": "steps", "seed": int(seed),
            "norm": "linf", "quantize": True}
    if eot_samples:
        atk = create_attack("eot-alignment", model, eot_samples=int(eot_samples), eot_sigma=float(sigma), **opts)
    else:
        atk = create_attack("embedding-alignment", model, **opts)
    device = getattr(model, "device", images.device)
    out = torch.empty_like(images)
    cos: list[float] = []
    for b0 in range(0, images.shape[0], batch_size):
        x0 = images[b0:b0 + batch_size].to(device)
        t = targets[b0:b0 + batch_size].to(device=device, dtype=torch.float32)
        res = atk.run(x0, t, seeds=list(range(seed + b0, seed + b0 + x0.shape[0])))
        out[b0:b0 + x0.shape[0]] = res.images.to(out.device)
        cos += [r["cos_target"] for r in res.records]
    linf = (out - images).abs().flatten(1).max(dim=1).values
    return out, {"eps": eps, "steps": steps, "step_size": step, "eot_samples": eot_samples, "sigma": sigma,
                 "cosine": cos, "linf": linf.tolist()}
