"""Options of the Jacobian spectra (:class:`SpectraConfig`), for ``pyvlmx spectra`` and the study."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyvlmx.jacobian.operator import JVP_BACKENDS
from pyvlmx.jacobian.spectra import METHODS

# Paired tests over original/aligned pairs (Wilcoxon, permutation) need two.
MIN_PAIRS = 2


@dataclass
class SpectraConfig:
    """Singular values of the image-embedding Jacobian, original vs aligned."""

    pairs: int = field(default=2, metadata={
        "help": f"original/aligned pairs compared (at least {MIN_PAIRS}: the tests are paired over pairs)"})
    k: int | None = field(default=16, metadata={
        "help": "singular values per image (needed unless the method is exact)"})
    method: str = field(default="randomized", metadata={
        "help": "route: exact (D VJPs), randomized (HMT), krylov (block Krylov), vjp, single-pass (TYUC: 2r + s "
                "independent products), row-streaming (D VJPs, streamed), streaming (= row-streaming); "
                "all = every route, compared against exact (per-image mode of pyvlmx spectra only)",
        "choices": (*METHODS, "all")})
    power_iters: int = field(default=2, metadata={"help": "power (randomized) or Krylov (krylov) iterations"})
    oversample: int = field(default=10, metadata={"help": "extra random directions of the randomized routes"})
    jvp_backend: str = field(default="fused", metadata={
        "help": "JVPs through attention: fused (pyvlmx.ops.attention_jvp, many tangents share one softmax) "
                "or math (torch.func over math SDPA, the reference)", "choices": JVP_BACKENDS})

    def validate(self) -> None:
        own = "spectra"
        if self.jvp_backend not in JVP_BACKENDS:
            raise ValueError(f"{own}: jvp_backend must be one of {list(JVP_BACKENDS)}, got {self.jvp_backend!r}")
        if self.method not in (*METHODS, "all"):
            raise ValueError(f"{own}: method must be one of {[*METHODS, 'all']}, got {self.method!r}")
        if isinstance(self.pairs, bool) or not isinstance(self.pairs, int) or self.pairs < MIN_PAIRS:
            raise ValueError(f"{own}: pairs must be an integer >= {MIN_PAIRS} (the original-vs-aligned tests "
                             f"are paired over pairs), got {self.pairs!r}")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"{own}: k must be an integer >= 1, got {self.k!r}")
        if self.k is None and self.method not in ("exact", "all"):
            raise ValueError(f"{own}: method {self.method!r} needs k (the number of singular values)")
        for name in ("power_iters", "oversample"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{own}: {name} must be an integer >= 0, got {v!r}")
