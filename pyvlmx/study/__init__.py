"""The whole study in one call: ``run_study(StudyConfig(), out)``."""

from pyvlmx.study.config import StudyConfig
from pyvlmx.study.run import run_study

__all__ = ["StudyConfig", "run_study"]
