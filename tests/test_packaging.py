"""Packaging: pyproject.toml's metadata agrees with the requirement files, and setup.py only builds the extension."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _file(name: str) -> list[Requirement]:
    reqs = []
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-r "):
            continue
        reqs.append(Requirement(line))
    return reqs


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _by_name(reqs) -> dict[str, Requirement]:
    out = {}
    for r in reqs:
        r = Requirement(r) if isinstance(r, str) else r
        assert _key(r.name) not in out, f"{r.name} listed twice"
        out[_key(r.name)] = r
    return out


@pytest.mark.parametrize("extra,name", [(None, "requirements.txt"), ("dev", "requirements-dev.txt"),
                                        ("imagebind", "requirements-imagebind.txt"),
                                        ("attacks", "requirements-torchattacks.txt"),
                                        ("bench", "benchmarks/requirements.txt")])
def test_requirement_files_match_the_metadata(extra, name):
    project = _project()
    declared = _by_name(project["dependencies"] if extra is None else project["optional-dependencies"][extra])
    pinned = _by_name(_file(name))
    assert sorted(declared) == sorted(pinned), f"{name} and pyproject.toml ({extra or 'dependencies'}) differ"
    for key, req in pinned.items():
        spec = declared[key].specifier
        pins = [s.version for s in req.specifier if s.operator == "=="]
        if pins:  # the pinned version must be one the metadata allows
            assert all(spec.contains(v, prereleases=True) for v in pins), f"{req} is outside {declared[key]}"
        if key not in ("torch", "torchvision"):  # those two: pinned in the file, a range in the metadata
            assert str(spec) == str(req.specifier), f"{name}: {req} but pyproject.toml says {declared[key]}"


def test_dev_file_includes_the_runtime_file():
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()


def test_metadata_entry_point_and_package_data():
    project = _project()
    assert project["name"] == "pyvlmx" and project["requires-python"] == ">=3.10"
    assert project["scripts"] == {"pyvlmx": "pyvlmx.cli:main"}
    assert set(project["optional-dependencies"]) == {"imagebind", "attacks", "hf", "dev", "bench"}
    assert "version" in project["dynamic"]
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["dynamic"]["version"] == {"attr": "pyvlmx.__version__"}
    for pattern in cfg["package-data"]["pyvlmx"]:
        assert list((ROOT / "pyvlmx").glob(pattern)) or pattern.endswith(".txt"), pattern
    assert list((ROOT / "pyvlmx" / "models" / "configs").glob("*.json"))


def test_setup_py_only_builds_the_extension():
    text = (ROOT / "setup.py").read_text()
    call = text[text.rindex("setup("):]
    assert "ext_modules=" in call and "cmdclass=" in call
    for key in ("name=", "version=", "install_requires", "entry_points", "packages=", "package_data"):
        assert key not in call, f"setup.py still declares {key} (pyproject.toml holds the metadata)"
    assert 'DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;9.0+PTX"' in text
