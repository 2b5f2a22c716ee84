"""Doctests of pyvlmx (``pytest --doctest-modules pyvlmx``): offline, CPU.

Examples of a module whose optional dependency is not installed are skipped
(the module itself still imports: pyvlmx imports optional packages lazily).
"""

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# module whose examples need an optional package -> that package
OPTIONAL = {"pyvlmx.models.adapters.imagebind": "imagebind"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not isinstance(item, pytest.DoctestItem):
            continue
        for name, package in OPTIONAL.items():
            if item.name == name or item.name.startswith(name + "."):
                if importlib.util.find_spec(package) is None:
                    item.add_marker(pytest.mark.skip(reason=f"optional dependency {package!r} not installed"))
