"""The sweep's options (:class:`SweepConfig`), declared once: types, defaults, help and checks.

The attack's options are a separate configuration
(:class:`pyvlmx.attacks.AlignmentConfig`); :func:`pyvlmx.systematic.run_sweep`
takes both.  ``pyvlmx systematic`` builds its options from these fields.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from pyvlmx.config import coerce_config, config_fields

TARGET_MODES = ("text", "image")
SCHEDULES = ("continuous", "fixed")
DEFAULT_ATTACK = "embedding-alignment"
# The sweep's attack defaults: the attack's own, but a failing pair is
# recorded, not raised, and the search runs in the fastest precision the
# device supports (results are certified in fp32 either way); applied when
# the attack is given by name or options.
ATTACK_DEFAULTS: dict[str, Any] = {"errors": "record", "precision": "auto"}


def parse_targets(text: str | int, *, name: str = "targets") -> str | int:
    """``"all"`` or a positive integer K (text or int); else ValueError naming ``name``."""
    if text == "all":
        return "all"
    if isinstance(text, bool):
        raise ValueError(f"{name} must be 'all' or a positive integer, got {text!r}")
    try:
        k = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{name} must be 'all' or a positive integer, got {text!r}") from None
    if k < 1 or (isinstance(text, float) and not text.is_integer()):
        raise ValueError(f"{name} must be 'all' or a positive integer, got {text!r}")
    return k


@dataclass
class SweepConfig:
    """What the systematic sweep runs over and how it batches, seeds and saves.

    The number of target classes per image is checked against the dataset
    in :func:`pyvlmx.systematic.run_sweep` (it needs the class count).
    """

    targets: str | int = field(default="all", metadata={
        "help": "target classes per image: 'all' other classes, or K sampled per image (at most the number "
                "of other classes)", "parse": parse_targets})
    target_mode: str = field(default="text", metadata={
        "help": "target: text = the class's text embedding, image = the embedding of an image of that class",
        "choices": TARGET_MODES})
    batch_size: int = field(default=32, metadata={
        "help": "pairs stepped together: the slots of the continuous schedule, the chunk of the fixed one"})
    schedule: str = field(default="continuous", metadata={
        "help": "continuous: a finished pair's slot is taken at once by the next pending pair; fixed: chunks "
                "of batch-size pairs, each run until its slowest pair is done", "choices": SCHEDULES})
    fixed_shapes: bool = field(default=True, metadata={
        "help": "continuous: every forward at one batch shape (blocks of batch-size rows on CUDA, of 4 on the "
                "CPU, the tail padded), so a pair's record is the same bit for bit whichever pairs share its "
                "batch; off: the shape the occupied slots make (records equal up to float rounding)"})
    templates: str = field(default="short", metadata={
        "help": "prompt set for the class text embeddings (short, imagenet, clip-short, name)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the target sampling and of each pair's attack (a function of seed, image, target)"})
    max_images: int | None = field(default=None, metadata={
        "help": "only the first N images", "default_text": "all images"})
    save_images: bool = field(default=False, metadata={
        "help": "save every aligned image as images/<pair>.png (8-bit, lossless)"})
    quantize_inputs: bool = field(default=True, metadata={
        "help": "round the original images to 8 bits first, as a saved photo is"})
    progress: bool = field(default=True, metadata={"help": "progress bar (rank 0)"})
    wait: bool = field(default=False, metadata={
        "help": "if another run is using the output folder, wait for it to finish instead of exiting"})

    def validate(self) -> None:
        own = "sweep"
        self.targets = parse_targets(self.targets, name=f"{own}: targets")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{own}: schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if self.target_mode not in TARGET_MODES:
            raise ValueError(f"{own}: target_mode must be one of {list(TARGET_MODES)}, got {self.target_mode!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"{own}: batch_size must be an integer >= 1, got {self.batch_size!r}")
        if self.max_images is not None and (isinstance(self.max_images, bool) or not isinstance(
                self.max_images, int) or self.max_images < 1):
            raise ValueError(f"{own}: max_images must be an integer >= 1 (or None for all images), got "
                             f"{self.max_images!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"{own}: seed must be an integer, got {self.seed!r}")

    def check_dataset(self, n_classes: int) -> None:
        """Refuse a K larger than the number of other classes (before any work)."""
        if n_classes < 2:
            raise ValueError(f"sweep: the dataset has {n_classes} class(es); aligning to another class needs "
                             f"at least 2")
        if self.targets != "all" and self.targets > n_classes - 1:
            raise ValueError(f"sweep: targets={self.targets} is more than the {n_classes - 1} other class(es) of "
                             f"this {n_classes}-class dataset; use at most {n_classes - 1} or 'all'")


def _attack_name_of(config) -> str:
    from pyvlmx.attacks import get_attack_class, list_attacks

    for name in list_attacks():
        if type(config) is get_attack_class(name).config_class:
            return name
    raise TypeError(f"sweep: attack config {type(config).__name__} belongs to no registered attack "
                    f"(attacks: {list_attacks()})")


def resolve_sweep_options(attack=None, sweep=None, flat: dict | None = None) -> tuple[str, Any, SweepConfig]:
    """The attack's name and validated config, and the SweepConfig, from what ``run_sweep`` was given.

    Args:
        attack: an attack config instance (e.g. ``AlignmentConfig``), a dict
            of the default attack's options, an attack name, ``(name,
            options)``, or None (embedding alignment).  Given by name or
            options, :data:`ATTACK_DEFAULTS` apply under them and the
            attack's seed defaults to the sweep's.
        sweep: a :class:`SweepConfig`, a dict of its options, or None.
        flat: options given flat (``run_sweep(..., eps=..., batch_size=...)``):
            each key goes to the configuration that has it.

    Raises:
        ValueError: an unknown option, naming the configuration it was meant
            for (by its closest field name) and listing that one's fields.
    """
    from pyvlmx.attacks import get_attack_class

    flat = dict(flat or {})
    if isinstance(flat.get("attack"), (str, tuple)) and attack is None:
        attack = flat.pop("attack")
    options: dict[str, Any] = {}
    instance = None
    if attack is None:
        name = DEFAULT_ATTACK
    elif isinstance(attack, str):
        name = attack
    elif isinstance(attack, tuple) and len(attack) == 2 and isinstance(attack[0], str):
        name, options = attack[0], dict(attack[1])
    elif isinstance(attack, dict):
        name, options = DEFAULT_ATTACK, dict(attack)
    elif dataclasses.is_dataclass(attack) and not isinstance(attack, type):
        name, instance = _attack_name_of(attack), attack
    else:
        raise TypeError(f"sweep: attack must be a config, a dict of options, a name or (name, options), got "
                        f"{type(attack).__name__}")
    atk_cls = get_attack_class(name)
    attack_fields = config_fields(atk_cls.config_class) if atk_cls.config_class is not None else []
    sweep_fields = config_fields(SweepConfig)
    flat_sweep = {k: v for k, v in flat.items() if k in sweep_fields}
    flat_attack = {k: v for k, v in flat.items() if k in attack_fields and k not in sweep_fields}
    unknown = sorted(set(flat) - set(flat_sweep) - set(flat_attack))
    if unknown:
        def near(names):
            return [u for u in unknown if difflib.get_close_matches(u, names, n=1, cutoff=0.75)]

        if near(sweep_fields) and not near(attack_fields):
            owner, fields_ = "sweep", sweep_fields
        elif near(attack_fields) and not near(sweep_fields):
            owner, fields_ = atk_cls.name, attack_fields
        else:
            raise ValueError(f"run_sweep: unknown option(s) {unknown}; sweep options: {sorted(sweep_fields)}; "
                             f"{atk_cls.name} options: {sorted(attack_fields)}")
        from pyvlmx.config import check_options

        check_options(owner, atk_cls.config_class if owner != "sweep" else SweepConfig, unknown)
    # the sweep
    if isinstance(sweep, SweepConfig):
        sweep_cfg = dataclasses.replace(sweep, **flat_sweep) if flat_sweep else sweep
        sweep_cfg = coerce_config(sweep_cfg, SweepConfig, "sweep")
    else:
        sweep_cfg = coerce_config({**dict(sweep or {}), **flat_sweep}, SweepConfig, "sweep")
    # the attack
    if instance is not None:
        attack_cfg = dataclasses.replace(instance, **flat_attack) if flat_attack else instance
        attack_cfg = atk_cls.make_config(**dataclasses.asdict(attack_cfg))
    else:
        opts = {k: v for k, v in ATTACK_DEFAULTS.items() if k in attack_fields}
        if "seed" in attack_fields:
            opts["seed"] = sweep_cfg.seed
        opts.update(options)
        opts.update(flat_attack)
        attack_cfg = atk_cls.make_config(**opts)
    return atk_cls.name, attack_cfg, sweep_cfg
