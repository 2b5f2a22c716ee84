"""Models behind one interface: ``list_models()``, ``load_model(name)``."""

from pyvlmx.models.base import VisionLanguageModel, check_pixels
from pyvlmx.models.registry import DEFAULT_MODEL, families, list_models, load_model, register_family

__all__ = ["DEFAULT_MODEL", "VisionLanguageModel", "check_pixels", "families", "list_models",
           "load_model", "register_family"]
