"""The whole study in one call: ``run_study(StudyConfig(), out)``."""

from pyvlmx.study.run import StudyConfig, run_study

__all__ = ["StudyConfig", "run_study"]
