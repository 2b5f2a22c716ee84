"""Options of the noise analyses (:class:`NoiseConfig`), declared once for ``pyvlmx noise`` and the study."""

from __future__ import annotations

from dataclasses import dataclass, field

# Noise levels of ``pyvlmx noise`` (pixels): 0.01/255 .. 10/255.
DEFAULT_SIGMAS = (0.01 / 255, 0.03 / 255, 0.1 / 255, 0.3 / 255, 1 / 255, 3 / 255, 10 / 255)
# noise_statistics splits the copies into two halves of at least 4.
MIN_COPIES = 8
# The normality tests (Anderson-Darling, Mardia) and the Q-Q plot need this
# many projections; with fewer copies the Q-Q figure says so instead.
MIN_NORMALITY_COPIES = 20


@dataclass
class NoiseConfig:
    """Embedding statistics under Gaussian pixel noise vs ``sigma^2 J J^T``, and accuracy vs sigma."""

    sigmas: tuple[float, ...] = field(default=DEFAULT_SIGMAS, metadata={
        "help": "noise levels of the covariance analysis, in pixels (e.g. 0.1/255 1/255 4/255)",
        "kind": "budget_list"})
    n: int = field(default=2000, metadata={
        "help": f"noisy copies per sigma (memory does not grow with n; at least {MIN_COPIES}, and "
                f"{MIN_NORMALITY_COPIES} for the normality tests and Q-Q plot)"})
    images: int = field(default=1, metadata={"help": "images the covariance analysis runs on",
                                             "flags": ("--stats-images",)})
    aligned: bool = field(default=False, metadata={
        "help": "run the covariance analysis on as many aligned images too (doubles its cost)"})
    batch_size: int = field(default=128, metadata={"help": "noisy copies per forward pass"})
    clamp: bool = field(default=False, metadata={
        "help": "clamp noisy images to [0, 1] (off: the linear theory has no clamp)"})
    acc_sigmas: tuple[float, ...] | None = field(default=None, metadata={
        "help": "noise levels of the accuracy-vs-sigma curve, in pixels", "kind": "budget_list",
        "allow_zero": True, "default_text": "0 and the --sigmas"})
    acc_copies: int = field(default=16, metadata={"help": "noisy copies per image for accuracy vs sigma",
                                                  "flags": ("--copies", "--acc-copies")})
    linearisation: int = field(default=64, metadata={
        "help": "noise draws per sigma for the per-sample linearisation residual "
                "rho(e) = ||f(x0+e) - f(x0) - J e|| / ||f(x0+e) - f(x0)|| (median and 90th percentile; "
                "one batched JVP per draw; 0 = off)"})
    seed: int = field(default=0, metadata={"help": "noise seed (sigma i uses seed + i)"})

    def validate(self) -> None:
        own = "noise"
        self.sigmas = tuple(float(s) for s in self.sigmas)
        if not self.sigmas or any(not (s > 0 and s < float("inf")) for s in self.sigmas):
            raise ValueError(f"{own}: sigmas must be numbers > 0, got {self.sigmas}")
        if self.acc_sigmas is not None:
            self.acc_sigmas = tuple(float(s) for s in self.acc_sigmas)
            if not self.acc_sigmas or any(not (0 <= s < float("inf")) for s in self.acc_sigmas):
                raise ValueError(f"{own}: acc_sigmas must be numbers >= 0, got {self.acc_sigmas}")
        for name, least in (("n", MIN_COPIES), ("images", 1), ("batch_size", 1), ("acc_copies", 1),
                            ("linearisation", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                why = " (two halves of at least 4 for the sampling error)" if name == "n" else ""
                raise ValueError(f"{own}: {name} must be an integer >= {least}{why}, got {v!r}")

    def accuracy_sigmas(self) -> tuple[float, ...]:
        """The accuracy curve's levels: ``acc_sigmas``, or 0 followed by ``sigmas``."""
        return self.acc_sigmas if self.acc_sigmas is not None else (0.0, *self.sigmas)
