"""Options of the noise-sensitivity detector and its adaptive (EOT) attacker (:class:`DetectConfig`),
and of the detection matrix of attacks against detectors (:class:`MatrixConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DetectConfig:
    """The detector's noise probe and the adaptive attacker that knows it."""

    sigma: float = field(default=8 / 255, metadata={
        "help": "probe noise of the detector, in pixels (Gaussian std)", "kind": "budget"})
    k: int = field(default=16, metadata={"help": "noisy copies per image"})
    eot_images: int = field(default=4, metadata={"help": "images the adaptive (EOT) attacker aligns"})
    eot_samples: int = field(default=4, metadata={
        "help": "noisy copies per step of the adaptive attacker (expectation over the detector's noise)"})
    eot_steps: int = field(default=30, metadata={"help": "steps of the adaptive attacker"})
    seed: int = field(default=0, metadata={"help": "seed of the probe noise and of the alignment loops"})

    def validate(self) -> None:
        own = "detect"
        if not (isinstance(self.sigma, (int, float)) and 0 < self.sigma < float("inf")):
            raise ValueError(f"{own}: sigma must be a number > 0, got {self.sigma!r}")
        for name, least in (("k", 1), ("eot_images", 1), ("eot_samples", 1), ("eot_steps", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"{own}: {name} must be an integer >= {least}, got {v!r}")


# ---------------------------------------------------------------------------- the detection matrix

#: the attack names of the matrix (the CLI's ``--attacks``); :mod:`pyvlmx.detect.attacks` runs them
MATRIX_ATTACKS = ("alignment-image", "alignment-text", "pgd", "apgd", "noise")
#: the detector names of the matrix (the CLI's ``--detectors``); :mod:`pyvlmx.detect.baselines` holds them
MATRIX_DETECTORS = ("noise", "ttc", "squeeze")


def _check_names(what: str, names, known: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(names)
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown {what}(s) {bad}; {what}s: {list(known)}")
    if not names:
        raise ValueError(f"no {what} given; {what}s: {list(known)}")
    twice = sorted(n for n in set(names) if names.count(n) > 1)
    if twice:
        raise ValueError(f"{what}s listed twice: {twice}")
    return names


def check_attacks(names) -> tuple[str, ...]:
    """``names`` (a sequence or a comma-separated string) as a tuple; a ValueError lists the known attacks."""
    return _check_names("attack", names, MATRIX_ATTACKS)


def check_detectors(names) -> tuple[str, ...]:
    """``names`` (a sequence or a comma-separated string) as a tuple; a ValueError lists the known detectors."""
    return _check_names("detector", names, MATRIX_DETECTORS)


@dataclass
class MatrixConfig:
    """The detection matrix: which attacks against which detectors, and every size they run at.

    The defaults keep the matrix on the 23 sample photos with the default
    model within a few CPU minutes; the attacks' iterations (``steps``) and
    the noise detector's copies (``noise_k``) are what costs (every
    detector scores every attack row: N (noise_k + 5) forward passes a row).
    """

    attacks: tuple = field(default=MATRIX_ATTACKS, metadata={
        "help": f"attacks, comma-separated: {', '.join(MATRIX_ATTACKS)}", "flags": ("--attacks",)})
    detectors: tuple = field(default=MATRIX_DETECTORS, metadata={
        "help": f"detectors, comma-separated: {', '.join(MATRIX_DETECTORS)}", "flags": ("--detectors",)})
    adaptive: bool = field(default=False, metadata={
        "help": "add one adaptive attacker per detector (alignment with a penalty on that detector's score)",
        "flags": ("--adaptive",)})
    eps: float = field(default=4 / 255, metadata={"help": "L-inf budget of every attack, pixels", "kind": "budget"})
    steps: int = field(default=5, metadata={"help": "iterations of PGD and APGD (all taken)"})
    align_steps: int = field(default=30, metadata={
        "help": "step limit of the alignment attacks (each image stops when its 8-bit version reaches the "
                "target class, as in the sweep)"})
    seed: int = field(default=0, metadata={"help": "seed of every attack, noise draw and bootstrap"})
    apgdt_targets: int = field(default=1, metadata={
        "help": "target classes APGDT tries per image (the most likely wrong ones; AutoAttack uses 9)"})
    noise_sigma: float = field(default=4 / 255, metadata={
        "help": "noise detector: Gaussian probe noise, pixels", "kind": "budget"})
    noise_k: int = field(default=8, metadata={"help": "noise detector: noisy copies per image"})
    ttc_eps: float = field(default=4 / 255, metadata={
        "help": "ttc: half-width of its uniform noise, pixels (TTC: 4/255)", "kind": "budget"})
    ttc_draws: int = field(default=1, metadata={"help": "ttc: noise draws averaged per image (TTC: 1)"})
    ttc_threshold: float = field(default=0.2, metadata={
        "help": "ttc: published threshold (an image with tau below it is flagged)"})
    squeeze_bits: int = field(default=5, metadata={"help": "feature squeezing: bit depth (0: no such squeezer)"})
    squeeze_median: int = field(default=2, metadata={
        "help": "feature squeezing: median filter window (0: no such squeezer)"})
    adaptive_images: int = field(default=8, metadata={
        "help": "images each adaptive attacker attacks (the first N; 0: all)"})
    adaptive_steps: int = field(default=20, metadata={"help": "iterations of each adaptive attacker (all taken)"})
    adaptive_eot_samples: int = field(default=2, metadata={
        "help": "noisy copies per step of the noise and ttc adaptive attackers (the detector's own noise)"})
    penalty_weight: float = field(default=0.1, metadata={
        "help": "weight w of the detector penalty in the adaptive attackers' objective"})
    penalty_gated: bool = field(default=True, metadata={
        "help": "apply the penalty only to images already classified as their target (align first, then hide); "
                "ungated, the penalty fights the alignment from the first step: on 6 sample photos, 20 steps, "
                "w = 0.01 / 0.03 aligned 0/6 and 1/6 (noise AUC 0.75 / 0.57), gated w = 0.03 / 0.1 / 0.3 aligned "
                "4/6, 3/6, 3/6 (AUC 0.83 / 0.83 / 0.81)"})
    folds: int = field(default=2, metadata={"help": "cross-fitting folds of the clean calibration"})
    resamples: int = field(default=1000, metadata={"help": "bootstrap resamples over images (>= 1000)"})
    fpr: float = field(default=0.05, metadata={"help": "false-positive rate of the TPR column"})
    batch_size: int = field(default=8, metadata={"help": "images per attack batch"})

    def validate(self) -> None:
        import math

        own = "detect matrix"
        self.attacks = check_attacks(self.attacks)
        self.detectors = check_detectors(self.detectors)
        for name in ("eps", "noise_sigma", "ttc_eps"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 0 < v <= 1):
                raise ValueError(f"{own}: {name} must be a number in (0, 1], got {v!r}")
        for name, least in (("steps", 1), ("align_steps", 1), ("apgdt_targets", 1), ("noise_k", 1), ("ttc_draws", 1),
                            ("squeeze_bits", 0), ("squeeze_median", 0), ("adaptive_images", 0),
                            ("adaptive_steps", 1), ("adaptive_eot_samples", 1), ("folds", 2), ("resamples", 1000),
                            ("batch_size", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise ValueError(f"{own}: {name} must be an integer >= {least}, got {v!r}")
        if self.squeeze_bits > 8:
            raise ValueError(f"{own}: squeeze_bits must be at most 8, got {self.squeeze_bits}")
        if self.squeeze_bits == 0 and self.squeeze_median == 0:
            raise ValueError(f"{own}: feature squeezing needs a squeezer (squeeze_bits or squeeze_median > 0)")
        if not (isinstance(self.fpr, (int, float)) and 0 < self.fpr < 1):
            raise ValueError(f"{own}: fpr must be in (0, 1), got {self.fpr!r}")
        if not (isinstance(self.ttc_threshold, (int, float)) and self.ttc_threshold > 0):
            raise ValueError(f"{own}: ttc_threshold must be > 0, got {self.ttc_threshold!r}")
        if not (isinstance(self.penalty_weight, (int, float)) and math.isfinite(self.penalty_weight)
                and self.penalty_weight >= 0):
            raise ValueError(f"{own}: penalty_weight must be a finite number >= 0, got {self.penalty_weight!r}")
