"""Which model to load and where: the ``--model``, ``--pretrained`` and ``--device`` options.

Declared once here; :class:`ModelConfig` is what the commands take, and the
study's configuration uses the same field declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyvlmx.info import DEFAULT_DEVICE


def model_field(default: str = "default"):
    return field(default=default, metadata={
        "help": "model name from the registry (pyvlmx list-models); 'default' is the offline model"})


def pretrained_field():
    return field(default=None, metadata={
        "help": "weights: a tag, checkpoint file or folder (family-specific); none = the family's default"})


def device_field():
    return field(default=DEFAULT_DEVICE, metadata={
        "help": "cpu, cuda, cuda:N, or auto (cuda when torch sees a GPU, else cpu)"})


@dataclass
class ModelConfig:
    """The model of a command."""

    model: str = model_field()
    pretrained: str | None = pretrained_field()
    device: str = device_field()

    def load(self):
        """Load the model on the resolved device (``auto`` -> cuda or cpu)."""
        from pyvlmx.info import resolve_device
        from pyvlmx.models import load_model

        return load_model(self.model, pretrained=self.pretrained, device=resolve_device(self.device))
