"""What an attack minimises, per sample, optionally in expectation over input noise.

Losses of an embedding ``f`` against its target ``t`` (rows):

    l2       1/2 || f - t ||^2                       (the paper's alignment loss)
    cosine   1 - cos(f, t)
    margin   max_{c != y} <f, w_c> - <f, w_y>        (text targets: class y, weights W)

With ``eot_samples = K > 0`` the objective is an expectation over
transformation (Athalye, Engstrom, Ilyas, Kwok 2018) over noise of level
sigma (Gaussian, or uniform in [-sigma, sigma]):

    L(x) = c L(f(x)) + w (1/K) sum_k L(f(clip(x + e_k)))

(``c = eot_clean``, ``w = eot_weight``), so an image is aligned *and* stays
aligned under the noise a detector probes with.  The noise of sample i at
step s is drawn from a generator seeded by (seed_i, s), so a sample's path
does not depend on its batch.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from pyvlmx.attacks.stop import class_gap


def _mix(seed: int, step: int) -> int:
    """A 63-bit seed for (sample seed, step): distinct streams for every pair."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + 0x9E3779B9) % (2 ** 63)


class Objective:
    """Per-sample loss rows, and the (EOT) objective whose gradient the attack follows.

    Args:
        loss: "l2", "cosine" or "margin".
        targets: (B, D) target embeddings.
        class_weights, target_classes: for the margin loss.
        eot_samples, eot_sigma, eot_noise, eot_weight, eot_clean: the
            expectation over noise (``eot_samples = 0``: off).
        seeds: (B,) per-sample seeds of the EOT noise.
    """

    def __init__(self, loss: str, targets: torch.Tensor, *, class_weights: torch.Tensor | None = None,
                 target_classes: torch.Tensor | None = None, eot_samples: int = 0, eot_sigma: float = 0.0,
                 eot_noise: str = "gaussian", eot_weight: float = 1.0, eot_clean: float = 1.0,
                 seeds: Sequence[int] = ()):
        if loss == "margin" and (class_weights is None or target_classes is None):
            raise ValueError("embedding-alignment: loss='margin' needs class_weights and target classes")
        self.loss = loss
        self.t = targets
        self.W = class_weights
        self.tc = target_classes
        self.eot_samples = int(eot_samples)
        self.eot_sigma = float(eot_sigma)
        self.eot_noise = eot_noise
        self.eot_weight = float(eot_weight)
        self.eot_clean = float(eot_clean)
        self.seeds = list(seeds)

    def rows(self, emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(len(idx),) losses of embeddings ``emb`` for samples ``idx`` (global indices)."""
        t = self.t[idx]
        if self.loss == "l2":
            return 0.5 * (emb - t).pow(2).sum(dim=1)
        if self.loss == "cosine":
            return 1.0 - F.cosine_similarity(emb, t, dim=1)
        return -class_gap(emb, self.W, self.tc[idx])

    def total(self, encode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, emb: torch.Tensor,
              idx: torch.Tensor, rows: torch.Tensor, step: int | Sequence[int],
              keys: Sequence[int] | None = None) -> torch.Tensor:
        """The scalar objective summed over batch rows ``rows`` (embeddings ``emb`` of ``z``).

        Without EOT this is ``rows(emb[rows]).sum()``; with EOT, K noisy
        copies of those rows are encoded too (differentiably through ``z``).
        ``step`` is the step of every row, or one step per row of ``rows``
        (continuous batching: each sample is at its own step); it and the
        sample's seed pick the noise. ``keys`` are the rows' sample indices on
        the host, when the caller has them (else read from ``idx``).
        """
        gidx = idx[rows]
        zr, er = z[rows], emb[rows]
        clean = self.rows(er, gidx).sum()
        if self.eot_samples == 0:
            return _plus(clean, self.extra(zr, er, None, gidx))
        K = self.eot_samples
        steps = [int(step)] * zr.shape[0] if isinstance(step, int) else [int(s) for s in step]
        xn = self.noisy_copies(zr, gidx.tolist() if keys is None else list(keys), steps)
        en, feats = self.copy_embeddings(encode, xn)
        noisy = self.rows(en, gidx.repeat_interleave(K)).sum() / K
        return _plus(self.eot_clean * clean + self.eot_weight * noisy,
                     self.extra(zr, er, None if feats is None else feats.view(zr.shape[0], K, -1), gidx))

    # ----------------------------------------------------------- hooks
    noise_seed = staticmethod(_mix)  # (sample seed, step) -> the seed of its noise generator

    def noisy_copies(self, zr: torch.Tensor, keys: Sequence[int], steps: Sequence[int]) -> torch.Tensor:
        """(R*K, 3, H, W): K noisy copies of each row of ``zr`` (samples ``keys`` at ``steps``), clipped
        to [0, 1]; row i's noise comes from a generator seeded by ``noise_seed(seed_i, step_i)``."""
        from pyvlmx.noise.copies import draw_noise

        K = self.eot_samples
        noise = torch.stack([
            draw_noise((K, *zr.shape[1:]), self.eot_sigma, kind=self.eot_noise, dtype=zr.dtype,
                       generator=torch.Generator().manual_seed(self.noise_seed(self.seeds[int(i)], k)))
            for i, k in zip(keys, steps)]).to(zr.device, non_blocking=True)   # (R, K, 3, H, W)
        return (zr[:, None] + noise).clamp(0, 1).flatten(0, 1)

    def copy_embeddings(self, encode: Callable[[torch.Tensor], torch.Tensor],
                        xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The copies' embeddings for the EOT term, and the features :meth:`extra` gets (None here)."""
        return encode(xn), None

    def extra(self, zr: torch.Tensor, er: torch.Tensor, feats: torch.Tensor | None,
              gidx: torch.Tensor) -> torch.Tensor | None:
        """A scalar term added to the objective (none here; a detector penalty in
        :class:`~pyvlmx.detect.adaptive.PenalisedObjective`): the rows' images, embeddings, their
        copies' features (R, K, D) from :meth:`copy_embeddings` (or None) and sample indices."""
        return None


def _plus(objective: torch.Tensor, term: torch.Tensor | None) -> torch.Tensor:
    return objective if term is None else objective + term
