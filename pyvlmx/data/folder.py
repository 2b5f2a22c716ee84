"""Image folders in the ImageFolder layout, and image files in and out.

Layout: ``root/<class>/<image>`` (images may sit in sub-folders of a class
folder).  Class folders named by an ImageNet WordNet id (Imagenette, ImageNet:
``n01440764``) get the readable ImageNet name (``tench``); other folder names
are used as they are, with ``_`` read as a space (``golden_retriever`` ->
``golden retriever``).  Images are resized so the shorter side equals
``image_size`` (bicubic, antialiased) and centre-cropped to
``image_size x image_size``; pixels come back as float32 (3, H, W) in [0, 1].

Bad input never reaches torch: files that are not images, cannot be decoded
or are truncated are skipped and listed in ``dataset.skipped`` with the
reason (one warning says how many); class folders left without a readable
image are dropped the same way; a root that does not exist, has no class
folders, no readable image, or fewer than ``min_classes`` classes raises a
ValueError / FileNotFoundError that says so.

Symbolic links are followed, but each real folder is entered once and each
real file counted once: a link to a folder above it (a loop) is reported with
one warning and skipped, so a scan always ends.

Example:
    >>> from pyvlmx.data import load_dataset
    >>> ds = load_dataset("samples", image_size=224)
    >>> pixels, label = ds[0]; pixels.shape, ds.classnames[label]
    (torch.Size([3, 224, 224]), 'Bullmastiff')
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pyvlmx.checks import MIN_IMAGE_SIDE
from pyvlmx.data.imagenet import is_imagenet_wnid, wnid_to_name

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# What PIL raises for a file it cannot read: not an image, truncated, corrupt
# or too large.  Anything else is a bug and propagates.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
                  EOFError)


# Greyscale modes wider than 8 bits.  PIL opens 16-bit PNG/TIFF/PGM as "I;16*" (older
# Pillow: "I", 32-bit int holding the 16-bit values); both are read as 16-bit data.
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class UnreadableImageError(ValueError):
    """An image file that PIL cannot open or decode (message names the file)."""


class Skipped(NamedTuple):
    """A file or class folder left out of a dataset, and why."""

    path: str
    reason: str


def _check_size(image_size) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}")
    return int(image_size)


def _open_rgb(path: Path) -> Image.Image:
    """Open and fully decode ``path`` as an RGB PIL image (EXIF orientation applied)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            if im.mode in _WIDE_GREY_MODES:
                # 16-bit greyscale: PIL's convert("RGB") would clip it, so scale to 8 bits by
                # the type's range (65535 is white), never by the data's maximum: a dark
                # 16-bit image stays dark.
                arr = np.asarray(im, dtype=np.float64)
                arr = np.clip(np.round(arr / 65535.0 * 255.0), 0, 255)
                return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
            return im.convert("RGB")
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as exc:
        raise UnreadableImageError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def resize_center_crop(im: Image.Image, image_size: int) -> Image.Image:
    """Resize the shorter side to ``image_size`` (bicubic) and centre-crop a square."""
    w, h = im.size
    scale = image_size / min(w, h)
    nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - image_size) / 2.0)), int(round((nh - image_size) / 2.0))
    return im.crop((left, top, left + image_size, top + image_size))


def load_image(path: str | os.PathLike, image_size: int | None = None) -> torch.Tensor:
    """Read an image file as float pixels in [0, 1].

    Args:
        path: any format PIL reads; greyscale, palette, 16-bit and alpha
            images are converted to RGB (alpha dropped).
        image_size: resize the shorter side to this and centre-crop a square;
            None keeps the original size.

    Returns:
        (3, H, W) float32 tensor in [0, 1].

    Raises:
        FileNotFoundError: no such file.
        UnreadableImageError (a ValueError): not an image, truncated or corrupt.
    """
    image_size = _check_size(image_size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    im = _open_rgb(path)
    if image_size is not None:
        im = resize_center_crop(im, image_size)
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


def save_png(pixels: torch.Tensor, path: str | os.PathLike) -> Path:
    """Save (3, H, W) pixels in [0, 1] as a lossless 8-bit RGB PNG.

    Pixels are rounded to the nearest of the 256 levels, so
    ``load_image(save_png(x, p))`` returns ``round(x * 255) / 255`` exactly.

    Returns:
        the path written (parent folders are created).
    """
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"save_png: expected pixels as a torch.Tensor, got {type(pixels).__name__}")
    if pixels.dim() != 3 or pixels.shape[0] != 3 or not pixels.is_floating_point():
        raise ValueError(f"save_png: expected float pixels of shape (3, H, W) in [0, 1], got "
                         f"{tuple(pixels.shape)} {pixels.dtype}")
    x = pixels.detach().to("cpu", torch.float64)
    if x.numel() == 0:
        raise ValueError(f"save_png: empty image of shape {tuple(pixels.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"save_png: pixels must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    arr = (x * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr), mode="RGB").save(path, format="PNG")
    return path


def readable_class_name(folder: str) -> str:
    """``n01440764`` -> ``tench``; ``golden_retriever`` -> ``golden retriever``."""
    if is_imagenet_wnid(folder):
        return wnid_to_name(folder)
    return folder.replace("_", " ").strip()


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` points to (links followed); None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ImageFolderDataset(torch.utils.data.Dataset):
    """Labelled images in the ImageFolder layout (see the module docstring).

    Args:
        root: folder with one sub-folder per class.
        image_size: side of the square crop (the model's ``image_size``);
            None returns images at their own size.
        verify: ``"full"`` decodes every image once at construction so bad
            files are skipped up front (default); ``"header"`` only reads
            headers (fast; a truncated file then raises
            UnreadableImageError from ``__getitem__``); ``"none"`` trusts
            file extensions.
        min_classes: fewer usable classes than this is an error (2: a
            one-class folder cannot be classified).

    Attributes:
        classnames: readable class names, label order (sorted folder names).
            Two folders with the same readable name get their folder name
            appended, ``"missile (n03773504)"``, so names stay distinct.
        folder_names: the class folder names, same order.
        samples: list of (path, label).
        skipped: list of :class:`Skipped` (path, reason).
        small: (path, (width, height)) of images kept although a side is
            under ``pyvlmx.checks.MIN_IMAGE_SIDE`` (32 px) and below
            ``image_size``; one warning lists them (checked unless
            ``verify="none"``).
    """

    def __init__(self, root: str | os.PathLike, image_size: int | None = None, verify: str = "full",
                 min_classes: int = 2):
        if verify not in ("full", "header", "none"):
            raise ValueError(f"verify must be 'full', 'header' or 'none', got {verify!r}")
        self.image_size = _check_size(image_size)
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise FileNotFoundError(f"dataset folder {self.root} does not exist "
                                    f"(use 'samples' for the embedded sample photos)")
        if not self.root.is_dir():
            raise ValueError(f"dataset path {self.root} is a file, not a folder in the ImageFolder "
                             f"layout root/<class>/<image>")
        self.skipped: list[Skipped] = []
        self.small: list[tuple[str, tuple[int, int]]] = []  # (path, (width, height)) below MIN_IMAGE_SIDE
        entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        class_dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
        for e in entries:
            if not e.is_dir():
                self.skipped.append(Skipped(e.path, "file at the top level, not inside a class folder"))
        if not class_dirs:
            loose = sum(1 for e in entries if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))
            hint = (f"; it holds {loose} image file(s) directly, but the layout is root/<class>/<image>"
                    if loose else "")
            raise ValueError(f"dataset folder {self.root} has no class folders{hint}")

        kept: list[tuple[str, list[str]]] = []
        self._seen_dirs: dict[tuple[int, int], str] = {}
        self._seen_files: dict[tuple[int, int], str] = {}
        for d in class_dirs:
            files = self._scan_class(Path(d.path), verify)
            if files:
                kept.append((d.name, files))
            else:
                self.skipped.append(Skipped(d.path, "class folder without a readable image; class dropped"))
        n_images = sum(len(f) for _, f in kept)
        if n_images == 0:
            raise ValueError(f"no readable images in {self.root} ({len(class_dirs)} class folder(s), "
                             f"{len(self.skipped)} file(s)/folder(s) skipped: {self._skip_summary()})")
        if len(kept) < min_classes:
            names = [n for n, _ in kept]
            raise ValueError(f"{self.root} has {len(kept)} usable class folder(s) {names}; need at least "
                             f"{min_classes} (a one-class folder cannot be classified: add a folder of "
                             f"images of at least one more class; from Python, min_classes=1 loads it anyway)")
        self.folder_names = [n for n, _ in kept]
        names = [readable_class_name(n) for n in self.folder_names]
        counts = Counter(names)
        self.classnames = [f"{n} ({f})" if counts[n] > 1 else n for n, f in zip(names, self.folder_names)]
        self.class_to_idx = {f: i for i, f in enumerate(self.folder_names)}
        self.samples = [(p, i) for i, (_, files) in enumerate(kept) for p in files]
        if self.skipped:
            warnings.warn(f"{self.root}: skipped {len(self.skipped)} file(s)/folder(s) "
                          f"(see dataset.skipped): {self._skip_summary()}", stacklevel=2)
        if self.small:
            listed = ", ".join(f"{p} ({w}x{h})" for p, (w, h) in self.small[:3])
            more = f" and {len(self.small) - 3} more" if len(self.small) > 3 else ""
            warnings.warn(f"{self.root}: {len(self.small)} image(s) smaller than {MIN_IMAGE_SIDE} px on a side "
                          f"will be upscaled to {self.image_size}x{self.image_size} from almost no detail (see "
                          f"dataset.small): {listed}{more}", stacklevel=2)

    def _scan_class(self, folder: Path, verify: str) -> list[str]:
        """Image files under ``folder``, in os.walk's top-down sorted order.

        Symbolic links are followed, but each real folder is entered once
        and each real file counted once (identity = device and inode): a link
        to a folder above it (a loop, ``ln -s . dog/me``, ``ln -s .. dog/up``)
        is reported with one warning and not followed; a second way to reach
        a folder or file already scanned is listed in ``skipped``.
        """
        files = []
        # (dev, ino) of every real folder on the way down from the dataset root
        ancestors = {_identity(self.root)}
        stack: list[tuple[Path, tuple[int, int] | None]] = [(folder, None)]
        while stack:
            current, marker = stack.pop()
            if marker is not None:  # leaving a folder
                ancestors.discard(marker)
                continue
            ident = _identity(current)
            if ident is None:
                self.skipped.append(Skipped(str(current), "folder cannot be read"))
                continue
            if ident in ancestors:
                target = os.path.realpath(current)
                self.skipped.append(Skipped(str(current), f"symbolic link to {target}, a folder above it "
                                                          f"(a loop); not followed"))
                warnings.warn(f"{current}: symbolic link to {target}, a folder that contains it; the loop "
                              f"is not followed", stacklevel=3)
                continue
            if ident in self._seen_dirs:
                self.skipped.append(Skipped(str(current), f"folder already scanned as "
                                                          f"{self._seen_dirs[ident]}; not counted twice"))
                continue
            self._seen_dirs[ident] = str(current)
            ancestors.add(ident)
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError as exc:
                self.skipped.append(Skipped(str(current), f"folder cannot be read ({exc.strerror or exc})"))
                ancestors.discard(ident)
                continue
            subdirs = []
            for e in entries:
                try:
                    is_dir = e.is_dir()
                except OSError:
                    is_dir = False
                if is_dir:
                    if not e.name.startswith("."):
                        subdirs.append(Path(e.path))
                    continue
                path = e.path
                if not e.name.lower().endswith(IMG_EXTENSIONS):
                    self.skipped.append(Skipped(path, f"not an image file extension {IMG_EXTENSIONS}"))
                    continue
                fid = _identity(Path(path))
                if fid is not None and fid in self._seen_files:
                    self.skipped.append(Skipped(path, f"same file as {self._seen_files[fid]}; counted once"))
                    continue
                reason = self._check_file(Path(path), verify)
                if reason is None:
                    files.append(path)
                    if fid is not None:
                        self._seen_files[fid] = path
                else:
                    self.skipped.append(Skipped(path, reason))
            # depth-first, sorted: push the leave-marker first, then the sub-folders in reverse
            stack.append((current, ident))
            stack.extend((d, None) for d in reversed(subdirs))
        return files

    def _check_file(self, path: Path, verify: str) -> str | None:
        """Why ``path`` cannot be used (None: it can); notes images too small to upscale well."""
        if verify == "none":
            return None
        if verify == "full":
            try:
                size = _open_rgb(path).size
            except UnreadableImageError as exc:
                return str(exc)
        else:
            try:
                with Image.open(path) as im:
                    size = im.size
                    im.verify()
            except _DECODE_ERRORS as exc:
                return f"cannot read image {path}: {type(exc).__name__}: {exc}"
        if self.image_size is not None and min(size) < min(MIN_IMAGE_SIDE, self.image_size):
            self.small.append((str(path), tuple(size)))
        return None

    def _skip_summary(self) -> str:
        reasons = Counter(s.reason.split(":")[0] if s.reason.startswith("cannot read") else s.reason
                          for s in self.skipped)
        return "; ".join(f"{n} x {r}" for r, n in reasons.most_common())

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.samples]

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return load_image(path, self.image_size), label

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(root={str(self.root)!r}, images={len(self)}, classes={len(self.classnames)}, "
                f"image_size={self.image_size}, skipped={len(self.skipped)})")


def load_dataset(spec: str | os.PathLike, image_size: int | None = 224, **kwargs) -> ImageFolderDataset:
    """Open a labelled image set.

    Args:
        spec: ``"samples"`` (the embedded labelled sample photos, installed on
            first use from pip packages; see :mod:`pyvlmx.data.samples`) or
            a folder in the ImageFolder layout.
        image_size: square crop side; pass the model's ``image_size``.
        **kwargs: ``verify``, ``min_classes`` for :class:`ImageFolderDataset`.

    Returns:
        an :class:`ImageFolderDataset`.
    """
    if str(spec) == "samples":
        from pyvlmx.data.samples import ensure_installed

        spec = ensure_installed()
    return ImageFolderDataset(spec, image_size=image_size, **kwargs)
