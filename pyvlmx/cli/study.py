"""``pyvlmx study``: zero-shot, sweep, noise, spectra, detection and a report, in one run.

The options are the fields of :class:`~pyvlmx.study.config.StudyConfig`: the
sweep's and the attack's without a prefix (``--targets``, ``--eps``,
``--max-steps``), the analyses' with one (``--noise-n``, ``--spectra-pairs``,
``--detect-k``); each shows the study's default.
"""

from __future__ import annotations

from pyvlmx.cli._common import add_command, named, only
from pyvlmx.config import add_dataclass_args, dataclass_from_args
from pyvlmx.study.config import StudyConfig
from pyvlmx.systematic.config import SweepConfig


def _run(args) -> int:
    import warnings

    from pyvlmx.checks import check_eps
    from pyvlmx.noise.config import MIN_NORMALITY_COPIES
    from pyvlmx.study import run_study

    cfg = named(lambda: dataclass_from_args(StudyConfig, args), StudyConfig)  # checked before the model loads
    if cfg.attack.norm == "linf":
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            check_eps(cfg.attack.eps)
    if cfg.noise.n < MIN_NORMALITY_COPIES:
        print(f"note: --noise-n {cfg.noise.n} is below {MIN_NORMALITY_COPIES}: the normality tests and Q-Q "
              f"plots need that many copies, so the Q-Q figures will say 'not enough samples'")
    run_study(cfg, args.out, progress=args.progress)
    return 0


def register(sub) -> None:
    p = add_command(sub, "study", "the whole study: zero-shot, systematic sweep, noise, spectra, detection, "
                                  "report.html (resumable)")
    p.add_argument("--out", default="runs/study", help="output folder (resumed if it exists)")
    add_dataclass_args(p, SweepConfig, exclude=only(SweepConfig, "progress"))
    add_dataclass_args(p, StudyConfig)
    p.set_defaults(func=_run)
