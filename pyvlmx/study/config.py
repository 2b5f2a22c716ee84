"""The study's configuration: the stages' own configurations, nested, plus what the study adds.

:class:`StudyConfig` does not re-declare the stages' options: the sweep's are
a :class:`~pyvlmx.systematic.config.SweepConfig`, the attack's an
``AlignmentConfig``, and the analyses' a
:class:`~pyvlmx.noise.config.NoiseConfig`,
:class:`~pyvlmx.jacobian.config.SpectraConfig` and
:class:`~pyvlmx.detect.config.DetectConfig` and
:class:`~pyvlmx.detect.config.MatrixConfig`, each with the study's defaults
(which finish within 10 minutes on a 2-core CPU with the offline default model
and the sample photos).  ``pyvlmx study`` generates its options from these
fields: the sweep's and the attack's without a prefix (``--targets``,
``--eps``, ``--max-steps``), the analyses' with one (``--noise-n``,
``--spectra-pairs``, ``--detect-k``, ``--matrix-attacks``).

Example:
    >>> cfg = make_config(StudyConfig, "study", sweep={"targets": 2}, noise={"n": 64})
    >>> cfg.sweep.targets, cfg.noise.n, cfg.attack.max_steps
    (2, 64, 100)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pyvlmx.attacks import AlignmentConfig
from pyvlmx.config import config_fields, make_config  # noqa: F401  (make_config: the doctest)
from pyvlmx.detect.config import DetectConfig, MatrixConfig
from pyvlmx.jacobian.config import SpectraConfig
from pyvlmx.models.config import device_field, model_field, pretrained_field
from pyvlmx.noise.config import NoiseConfig
from pyvlmx.systematic.config import SweepConfig

# The study sets these itself: one seed for every stage, the sweep saves its
# images (the analyses read them), progress is run_study's argument; the
# attack's EOT options are the detect stage's adaptive attacker here.
_SWEEP_FIXED = ("seed", "save_images", "progress")
_ATTACK_FIXED = tuple(n for n in ("seed", "eot_samples", "eot_sigma", "eot_noise", "eot_weight", "eot_clean")
                      if n in config_fields(AlignmentConfig))


def _study_sweep() -> SweepConfig:
    # 3 targets per image keeps the default study within 10 minutes on 2 CPU cores
    return SweepConfig(targets=3)


def _study_attack() -> AlignmentConfig:
    # a failing pair is recorded, not raised, and the search runs in the device's fastest precision
    # (fp32-certified), as in every sweep
    return AlignmentConfig(max_steps=100, errors="record", precision="auto")


def _study_noise() -> NoiseConfig:
    return NoiseConfig(sigmas=(0.1 / 255, 1 / 255, 4 / 255), n=256, images=1, batch_size=256,
                       acc_sigmas=(0.0, 2 / 255, 8 / 255, 16 / 255, 32 / 255), acc_copies=4, linearisation=32)


#: spectra pairs of the default study. Each paired test of compare_spectra is exact at this size
#: (Wilcoxon signed-rank; sign-flip permutation, enumerated up to 16 pairs), with smallest two-sided
#: p = 2 / 2^n: below 0.01 from n = 8; the per-index tests are Holm-corrected over k = 16 indices,
#: 16 * 2 / 2^n < 0.01 from n = 12. So n = 12 lets every test reach p < 0.01.
STUDY_SPECTRA_PAIRS = 12


def _study_spectra() -> SpectraConfig:
    # randomized HMT with one power iteration: 4.9 s a spectrum on the default model (2-core CPU),
    # against 7.8 s at two, top-16 within 0.6% and the effective rank within 0.1% of two
    return SpectraConfig(pairs=STUDY_SPECTRA_PAIRS, k=16, method="randomized", power_iters=1)


def _study_matrix() -> MatrixConfig:
    # the whole matrix: every attack (9 rows) and one adaptive attacker per detector, against all three
    # detectors; measured on the default model and the sample photos, 2-core CPU with nothing else
    # running: 132-134 s with the adaptive rows (the study in all: 310-329 s, README)
    return MatrixConfig(adaptive=True)


@dataclass
class StudyConfig:
    """Settings of a study: what to study, and each stage's configuration.

    The nested configurations' ``seed`` is replaced by the study's
    :attr:`seed`, and the sweep always saves its images.
    """

    model: str = model_field()
    pretrained: str | None = pretrained_field()
    data: str = field(default="samples", metadata={
        "help": "'samples' (the embedded labelled photos) or an ImageFolder directory"})
    device: str = device_field()
    seed: int = field(default=0, metadata={"help": "seed of every random choice, in every stage"})
    sweep: SweepConfig = field(default_factory=_study_sweep, metadata={
        "help": "systematic sweep (pyvlmx.systematic)", "prefix": "", "exclude": _SWEEP_FIXED})
    attack: AlignmentConfig = field(default_factory=_study_attack, metadata={
        "help": "alignment attack of the sweep (pyvlmx.attacks)", "prefix": "", "exclude": _ATTACK_FIXED})
    noise: NoiseConfig = field(default_factory=_study_noise, metadata={
        "help": "noise vs the linearisation, accuracy vs sigma (pyvlmx.noise)", "prefix": "noise-",
        "exclude": ("seed",), "aliases": {"images": ("--noise-images",)}})
    spectra: SpectraConfig = field(default_factory=_study_spectra, metadata={
        "help": "Jacobian spectra, original vs aligned (pyvlmx.jacobian)", "prefix": "spectra-"})
    detect: DetectConfig = field(default_factory=DetectConfig, metadata={
        "help": "noise-sensitivity detection and the adaptive attacker (pyvlmx.detect)", "prefix": "detect-",
        "exclude": ("seed",), "aliases": {"eot_images": ("--eot-images",), "eot_samples": ("--eot-samples",),
                    "eot_steps": ("--eot-steps",)}})
    detect_matrix: bool = field(default=True, metadata={
        "help": "run the detection matrix stage (every attack against every detector)"})
    matrix: MatrixConfig = field(default_factory=_study_matrix, metadata={
        "help": "detection matrix: attacks x detectors, AUCs with paired bootstrap intervals (pyvlmx.detect.matrix); "
                "its L-inf budget is the study's --eps", "prefix": "matrix-", "exclude": ("eps", "seed")})

    def validate(self) -> None:
        for name, cls in (("sweep", SweepConfig), ("attack", AlignmentConfig), ("noise", NoiseConfig),
                          ("spectra", SpectraConfig), ("detect", DetectConfig), ("matrix", MatrixConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                value = make_config(cls, f"study.{name}", **value)
                setattr(self, name, value)
            if not isinstance(value, cls):
                raise TypeError(f"study: {name} must be a {cls.__name__}, got {type(value).__name__}")
            value.validate()
        if self.spectra.method == "all":
            raise ValueError("study: spectra method 'all' is for pyvlmx spectra; choose one route")
        if self.detect_matrix and self.attack.norm != "linf":
            raise ValueError(f"study: the detection matrix attacks at the study's L-inf budget, but the attack's "
                             f"norm is {self.attack.norm!r}; use --norm linf or --no-detect-matrix")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"study: seed must be an integer, got {self.seed!r}")

    def stage_sweep(self, progress: bool = True) -> SweepConfig:
        """The sweep as the study runs it (its seed, images saved)."""
        return dataclasses.replace(self.sweep, seed=self.seed, save_images=True, progress=progress)

    def stage_attack(self) -> AlignmentConfig:
        """The attack as the study runs it (its seed)."""
        return dataclasses.replace(self.attack, seed=self.seed)

    def stage_matrix(self) -> MatrixConfig:
        """The detection matrix as the study runs it: the study's seed and L-inf budget."""
        return dataclasses.replace(self.matrix, eps=self.attack.eps, seed=self.seed)
