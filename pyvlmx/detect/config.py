"""Options of the noise-sensitivity detector and its adaptive (EOT) attacker (:class:`DetectConfig`)."""

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
