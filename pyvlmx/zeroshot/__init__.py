"""Zero-shot classification: prompt templates, :class:`ZeroShotClassifier`, :func:`evaluate`."""

from pyvlmx.zeroshot.classifier import (SHORT_TEMPLATES, TEMPLATE_SETS, ZeroShotClassifier, evaluate, format_table,
                                        resolve_templates)
from pyvlmx.zeroshot.templates import CLIP_SHORT_TEMPLATES, IMAGENET_TEMPLATES

__all__ = ["CLIP_SHORT_TEMPLATES", "IMAGENET_TEMPLATES", "SHORT_TEMPLATES", "TEMPLATE_SETS", "ZeroShotClassifier",
           "evaluate", "format_table", "resolve_templates"]
