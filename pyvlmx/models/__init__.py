"""Models behind one interface: ``list_models()``, ``load_model(name)``."""

from pyvlmx.models.analysis import analysis_mode
from pyvlmx.models.base import VisionLanguageModel, check_pixels
from pyvlmx.models.registry import DEFAULT_MODEL, families, list_models, load_model, register_family

__all__ = ["DEFAULT_MODEL", "VisionLanguageModel", "analysis_mode", "check_pixels", "families",
           "list_models", "load_model", "register_family"]
