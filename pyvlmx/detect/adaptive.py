"""Alignment loops for detection experiments, including an adaptive EOT attacker.

:func:`align` moves each image, within an L-inf budget, so that its embedding
approaches a target embedding (PGD sign steps on 1/2 ||f(x) - t||^2, the
paper's alignment loss).  With ``eot_samples > 0`` it is the adaptive attacker
of the noise detector: Expectation over Transformation (Athalye et al. 2018)
over the detector's own noise,

    L(x) = 1/2 ||f(x) - t||^2 + 1/2 E_eps ||f(clip(x + sigma eps)) - t||^2,

estimated with ``eot_samples`` fresh noise draws per step, so the aligned image
is aligned *and* stays aligned under the noise the detector probes with.
"""

from __future__ import annotations

import torch

from pyvlmx.jacobian.operator import analysis_mode


def quantize(x: torch.Tensor) -> torch.Tensor:
    """8-bit rounding (what a PNG stores)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def align(model, images: torch.Tensor, targets: torch.Tensor, *, eps: float = 8 / 255, steps: int = 100,
          step_size: float | None = None, eot_samples: int = 0, sigma: float = 4 / 255, clamp: bool = True,
          seed: int = 0, batch_size: int = 8) -> tuple[torch.Tensor, dict]:
    """Align images to target embeddings (optionally in expectation over noise).

    Args:
        model: the model.
        images: (N, 3, H, W) in [0, 1].
        targets: (N, D) target embeddings (unit norm; e.g. ``model.encode_image``
            of target images).
        eps: L-inf budget in pixels.
        steps: PGD steps.
        step_size: pixels per sign step (default eps / 8).
        eot_samples: noisy copies per step in the EOT term (0: plain alignment).
        sigma: noise of the EOT term (the detector's sigma).
        clamp: clamp noisy copies to [0, 1] as the detector does.
        seed: noise seed.
        batch_size: images per optimisation batch.

    Returns:
        (aligned (N, 3, H, W) 8-bit-quantised, info dict with per-image final
        ``cosine`` to the target, ``linf`` and the config).
    """
    from pyvlmx import ops

    if images.dim() != 4 or targets.dim() != 2 or images.shape[0] != targets.shape[0]:
        raise ValueError(f"expected images (N, 3, H, W) and targets (N, D), got {tuple(images.shape)} and "
                         f"{tuple(targets.shape)}")
    if eps <= 0 or steps < 0 or eot_samples < 0:
        raise ValueError(f"need eps > 0, steps >= 0, eot_samples >= 0; got {eps}, {steps}, {eot_samples}")
    step = float(step_size if step_size is not None else eps / 8)
    device = getattr(model, "device", images.device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty_like(images)
    cos = torch.empty(images.shape[0])
    with analysis_mode(model):
        for b0 in range(0, images.shape[0], batch_size):
            x0 = images[b0:b0 + batch_size].to(device)
            t = targets[b0:b0 + batch_size].to(device=device, dtype=x0.dtype)
            x = x0.clone()
            B = x0.shape[0]
            for _ in range(steps):
                x.requires_grad_(True)
                loss = 0.5 * ((model.encode_image(x) - t) ** 2).sum()
                if eot_samples:
                    xr = x.repeat_interleave(eot_samples, dim=0)
                    noise = torch.randn(xr.shape, generator=gen, device=device, dtype=x.dtype)
                    xn = xr + sigma * noise
                    if clamp:
                        xn = xn.clamp(0, 1)
                    fn = model.encode_image(xn)
                    loss = loss + 0.5 * ((fn - t.repeat_interleave(eot_samples, dim=0)) ** 2).sum() / eot_samples
                (g,) = torch.autograd.grad(loss, x)
                # projected_step ascends along its gradient argument: descend on the loss
                x = ops.projected_step(x.detach(), x0, -g, step, eps, step="sign", norm="linf")
            # 8-bit rounding; stays within eps when x0 is 8-bit and eps a multiple of 1/255
            x = quantize(x.detach())
            with torch.no_grad():
                cos[b0:b0 + B] = torch.nn.functional.cosine_similarity(model.encode_image(x), t).cpu()
            out[b0:b0 + B] = x.to(out.device)
    linf = (out - images).abs().flatten(1).max(dim=1).values
    return out, {"eps": eps, "steps": steps, "step_size": step, "eot_samples": eot_samples, "sigma": sigma,
                 "cosine": cos.tolist(), "linf": linf.tolist()}
