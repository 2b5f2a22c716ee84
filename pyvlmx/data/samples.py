"""The embedded labelled sample photos: real ImageNet-class photos from pip packages.

``python -m pyvlmx.data.samples --install`` (run by ``scripts/setup.sh``)
copies, byte for byte, photos that installed PyPI packages ship:

* foolbox 3.3.4: the 20 ImageNet validation-style photos in
  ``foolbox/data/imagenet_<k>_<label>.jpg`` (``label`` is the ImageNet-1k
  index), read as files; foolbox is never imported;
* scikit-image: three photos whose subject is an ImageNet-1k class:
  ``chelsea.png`` (a tabby cat: ``tabby cat``), ``coffee.png`` (a cup of
  coffee with latte art: ``espresso``) and ``camera.png`` (the "cameraman",
  a photographer at a camera on a tripod: ``tripod``).  Labels are the true
  class of the photo, chosen by looking at it, not the model's prediction
  (the default model ranks chelsea ``Egyptian Mau`` > ``tiger cat`` >
  ``tabby cat``).

That is 23 photos over 22 classes, laid out as an ImageFolder directory with
one folder per readable ImageNet class name, plus ``samples.json`` next to
it recording source, ImageNet index, WordNet id and SHA-256 of every file.

Where: ``$PYVLMX_SAMPLES_DIR`` if set; else ``<checkout>/samples_cache`` when
pyvlmx runs from a source checkout (editable install; the folder is
git-ignored); else ``$XDG_CACHE_HOME/pyvlmx`` (``~/.cache/pyvlmx``).
``load_dataset("samples")`` installs them on first use; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pyvlmx.data.imagenet import IMAGENET_CLASSNAMES, IMAGENET_WNIDS

# (package, file inside the package, ImageNet-1k index)
_FOOLBOX_FILES = [
    "imagenet_00_243.jpg", "imagenet_01_559.jpg", "imagenet_02_438.jpg", "imagenet_03_990.jpg",
    "imagenet_04_949.jpg", "imagenet_05_853.jpg", "imagenet_06_609.jpg", "imagenet_07_609.jpg",
    "imagenet_08_915.jpg", "imagenet_09_455.jpg", "imagenet_10_541.jpg", "imagenet_11_630.jpg",
    "imagenet_12_741.jpg", "imagenet_13_471.jpg", "imagenet_14_129.jpg", "imagenet_15_99.jpg",
    "imagenet_16_251.jpg", "imagenet_17_22.jpg", "imagenet_18_317.jpg", "imagenet_19_305.jpg",
]
SOURCES: list[tuple[str, str, int]] = (
    [("foolbox", f"data/{f}", int(f[:-4].split("_")[2])) for f in _FOOLBOX_FILES]
    + [("skimage", "data/chelsea.png", 281),   # tabby cat
       ("skimage", "data/coffee.png", 967),    # espresso
       ("skimage", "data/camera.png", 872)]    # tripod
)
IMAGES_DIRNAME = "samples"
MANIFEST_NAME = "samples.json"


def cache_root() -> Path:
    """Folder holding ``samples/`` and ``samples.json`` (see the module docstring)."""
    env = os.environ.get("PYVLMX_SAMPLES_DIR")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "setup.py").is_file() and (checkout / "pyvlmx" / "__init__.py").is_file():
        return checkout / "samples_cache"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyvlmx"


def samples_dir() -> Path:
    """The ImageFolder root of the installed samples (may not exist yet)."""
    return cache_root() / IMAGES_DIRNAME


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the sample photos need the PyPI package providing {package!r}, which is not "
                           f"installed (pip install -r requirements-dev.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def folder_name(index: int) -> str:
    """Class folder name for an ImageNet index: its readable name, made file-system safe."""
    return IMAGENET_CLASSNAMES[index].replace("/", "-").replace(os.sep, "-")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def install(root: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Copy the sample photos into ``root`` (default :func:`cache_root`); returns the image folder.

    The copy is built in a temporary folder and moved into place, so a
    half-finished install is never seen; an existing valid install is kept
    unless ``force``.
    """
    root = Path(root) if root is not None else cache_root()
    images = root / IMAGES_DIRNAME
    if not force and check(root) is None:
        return images
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".samples-", dir=root))
    try:
        records = []
        for package, rel, index in SOURCES:
            src = _package_dir(package) / rel
            if not src.is_file():
                raise FileNotFoundError(f"sample photo {src} is missing from the installed {package} package")
            cls = folder_name(index)
            name = f"{package}_{Path(rel).name}"
            dst = tmp / IMAGES_DIRNAME / cls / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            records.append({"file": f"{cls}/{name}", "class": IMAGENET_CLASSNAMES[index], "imagenet_index": index,
                            "wnid": IMAGENET_WNIDS[index], "source": f"{package}/{rel}", "sha256": _sha256(dst)})
        manifest = {"description": "pyvlmx embedded sample photos (see pyvlmx/data/samples.py)",
                    "n_images": len(records), "n_classes": len({r["class"] for r in records}),
                    "images": records}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        if images.exists():
            shutil.rmtree(images)
        os.replace(tmp / IMAGES_DIRNAME, images)
        os.replace(tmp / MANIFEST_NAME, root / MANIFEST_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    why = check(root)
    if why is not None:
        raise RuntimeError(f"sample install in {root} failed its own check: {why}")
    return images


def check(root: str | os.PathLike | None = None) -> str | None:
    """None if the samples in ``root`` are complete and unchanged, else what is wrong."""
    root = Path(root) if root is not None else cache_root()
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        return f"no {manifest_path}"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        return f"{manifest_path} is not valid JSON ({exc})"
    records = manifest.get("images", [])
    if len(records) != len(SOURCES):
        return f"{manifest_path} lists {len(records)} images, expected {len(SOURCES)}"
    for r in records:
        path = root / IMAGES_DIRNAME / r["file"]
        if not path.is_file():
            return f"missing {path}"
        if _sha256(path) != r["sha256"]:
            return f"{path} changed since install (SHA-256 differs)"
    return None


def ensure_installed() -> Path:
    """The samples' ImageFolder root, installing them first if needed."""
    if check() is not None:
        install()
    return samples_dir()


def manifest() -> dict:
    """The installed ``samples.json`` (installing first if needed)."""
    ensure_installed()
    return json.loads((cache_root() / MANIFEST_NAME).read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyvlmx.data.samples",
                                description="Install or check pyvlmx's embedded labelled sample photos.")
    p.add_argument("--install", action="store_true", help="copy the photos from installed packages")
    p.add_argument("--force", action="store_true", help="reinstall even if a valid copy exists")
    p.add_argument("--dir", default=None, help=f"target folder (default {cache_root()})")
    args = p.parse_args(argv)
    root = Path(args.dir) if args.dir else cache_root()
    if args.install or args.force:
        images = install(root, force=args.force)
        m = json.loads((root / MANIFEST_NAME).read_text())
        print(f"pyvlmx samples: {m['n_images']} photos over {m['n_classes']} ImageNet classes in {images}")
        return 0
    why = check(root)
    print(f"pyvlmx samples in {root / IMAGES_DIRNAME}: " + ("ok" if why is None else f"not installed ({why})"))
    return 0 if why is None else 1


if __name__ == "__main__":
    sys.exit(main())
