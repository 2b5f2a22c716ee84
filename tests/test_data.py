"""pyvlmx.data: image I/O, ImageFolder datasets and their error cases, the sample photos."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pyvlmx.data import (IMAGENET_CLASSNAMES, IMAGENET_WNIDS, ImageFolderDataset, UnreadableImageError,
                         load_dataset, load_image, save_png, wnid_to_name)
from pyvlmx.data import samples as samples_mod


def _write(path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --- ImageNet table ---------------------------------------------------------------------------

def test_imagenet_table():
    assert len(IMAGENET_CLASSNAMES) == len(IMAGENET_WNIDS) == 1000
    assert list(IMAGENET_WNIDS) == sorted(set(IMAGENET_WNIDS))  # standard index order
    assert IMAGENET_CLASSNAMES[0] == "tench" and IMAGENET_WNIDS[0] == "n01440764"
    assert IMAGENET_CLASSNAMES[281] == "tabby cat" and wnid_to_name("n02123045") == "tabby cat"
    with pytest.raises(ValueError, match="'n99999999' is not one of the 1000"):
        wnid_to_name("n99999999")


# --- load_image / save_png --------------------------------------------------------------------

def test_load_image_centre_crop_is_exact_without_resize(tmp_path):
    arr = _rgb(200, 300)
    p = _write(tmp_path / "a.png", arr)
    x = load_image(p, 200)  # shorter side already 200: pure centre crop, columns 50..249
    assert x.shape == (3, 200, 200) and x.dtype == torch.float32
    expect = torch.from_numpy(arr[:, 50:250]).permute(2, 0, 1).float() / 255
    assert torch.equal(x, expect)
    full = load_image(p)
    assert full.shape == (3, 200, 300)


@pytest.mark.parametrize("hw", [(100, 37), (37, 100), (64, 64), (500, 333)])
def test_load_image_resize_shapes_and_range(tmp_path, hw):
    p = _write(tmp_path / "a.jpg", _rgb(*hw), quality=95)
    x = load_image(p, 48)
    assert x.shape == (3, 48, 48)
    assert float(x.min()) >= 0 and float(x.max()) <= 1


def test_load_image_resize_keeps_content(tmp_path):
    # left half black, right half white: after resize + crop the halves survive.
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 100:] = 255
    x = load_image(_write(tmp_path / "h.png", arr), 50)  # resized to 50x100, crop columns 25..74
    assert torch.all(x[:, :, :20] == 0) and torch.all(x[:, :, 30:] == 1)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_load_image_converts_modes_to_rgb(tmp_path, mode):
    rgb = Image.fromarray(_rgb(20, 30))
    if mode == "I;16":
        im = Image.fromarray((np.arange(600, dtype=np.uint16).reshape(20, 30) * 100))
        assert im.mode.startswith("I;16")
    else:
        im = rgb.convert(mode)
    p = tmp_path / ("a.tif" if mode == "CMYK" else "a.png")
    im.save(p)
    x = load_image(p, 16)
    assert x.shape == (3, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1
    if mode == "I;16":  # 16-bit scaled, not clipped to white
        assert 0.05 < float(x.mean()) < 0.95


def test_save_png_round_trip_is_lossless(tmp_path):
    x = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(0))
    p = save_png(x, tmp_path / "sub" / "x.png")
    y = load_image(p)
    assert torch.equal(y, (x * 255).round() / 255)
    assert torch.equal(load_image(save_png(y, tmp_path / "y.png")), y)  # quantised pixels are exact


def test_save_png_errors(tmp_path):
    with pytest.raises(ValueError, match=r"pixels must lie in \[0, 1\], got values in \[-0.5"):
        save_png(torch.full((3, 4, 4), -0.5), tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"shape \(3, H, W\).*got \(1, 3, 4, 4\)"):
        save_png(torch.rand(1, 3, 4, 4), tmp_path / "a.png")
    with pytest.raises(TypeError, match="torch.Tensor, got ndarray"):
        save_png(np.zeros((3, 4, 4)), tmp_path / "a.png")


def test_load_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file at"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "t.png").write_text("not an image")
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*t\.png"):
        load_image(tmp_path / "t.png")
    with pytest.raises(ValueError, match="image_size must be a positive int or None, got 0"):
        load_image(tmp_path / "t.png", 0)


# --- ImageFolderDataset -----------------------------------------------------------------------

def _good_folder(root, classes=("n01440764", "golden_retriever", "zebra"), per_class=2):
    for c_i, c in enumerate(classes):
        for k in range(per_class):
            _write(root / c / f"{k}.png", _rgb(40, 30, seed=10 * c_i + k))
    return root


def _truncated_jpeg(path):
    import io

    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, format="JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def test_folder_names_labels_and_items(tmp_path):
    ds = ImageFolderDataset(_good_folder(tmp_path), image_size=24)
    assert ds.folder_names == ["golden_retriever", "n01440764", "zebra"]
    assert ds.classnames == ["golden retriever", "tench", "zebra"]  # wnid -> readable, _ -> space
    assert len(ds) == 6 and ds.targets == [0, 0, 1, 1, 2, 2] and ds.skipped == []
    assert ds.paths[2].endswith(os.path.join("n01440764", "0.png"))
    x, y = ds[2]
    assert x.shape == (3, 24, 24) and y == 1
    assert torch.equal(x, load_image(ds.paths[2], 24))
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 24, 24) and yb.tolist() == [0, 0, 1, 1]


def test_folder_skips_bad_files_with_reasons(tmp_path):
    root = _good_folder(tmp_path)
    (root / "zebra" / "notes.txt").write_text("hello")
    (root / "zebra" / "empty.jpg").write_bytes(b"")
    (root / "zebra" / "garbage.png").write_bytes(os.urandom(300))
    _truncated_jpeg(root / "golden_retriever" / "cut.jpg")
    (root / "README.md").write_text("top-level file")
    (root / "empty_class").mkdir()
    with pytest.warns(UserWarning, match=r"skipped 6 file\(s\)/folder\(s\)"):
        ds = ImageFolderDataset(root, image_size=16)
    reasons = {os.path.basename(s.path): s.reason for s in ds.skipped}
    assert set(reasons) == {"notes.txt", "empty.jpg", "garbage.png", "cut.jpg", "README.md", "empty_class"}
    assert "not an image file extension" in reasons["notes.txt"]
    assert "truncated" in reasons["cut.jpg"]
    assert reasons["empty.jpg"].startswith("cannot read image")
    assert "class dropped" in reasons["empty_class"]
    assert ds.classnames == ["golden retriever", "tench", "zebra"] and len(ds) == 6
    for i in range(len(ds)):  # every kept item loads
        assert ds[i][0].shape == (3, 16, 16)


def test_folder_header_check_defers_truncation_to_getitem(tmp_path):
    root = _good_folder(tmp_path, per_class=1)
    bad = _truncated_jpeg(root / "zebra" / "cut.jpg")
    ds = ImageFolderDataset(root, image_size=16, verify="header")
    assert str(bad) in ds.paths
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*cut\.jpg.*truncated"):
        ds[ds.paths.index(str(bad))]


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist .*use 'samples'"):
        ImageFolderDataset(tmp_path / "nope")
    f = _write(tmp_path / "one.png", _rgb(8, 8))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        ImageFolderDataset(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no class folders$"):
        ImageFolderDataset(empty)
    loose = tmp_path / "loose"
    _write(loose / "a.png", _rgb(8, 8))
    with pytest.raises(ValueError, match=r"1 image file\(s\) directly, but the layout is root/<class>/<image>"):
        ImageFolderDataset(loose)
    one = _good_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(ValueError, match=r"1 usable class folder\(s\) \['cat'\]; need at least 2"):
        ImageFolderDataset(one)
    assert ImageFolderDataset(one, min_classes=1).classnames == ["cat"]
    broken = tmp_path / "broken"
    for c in ("a", "b"):
        (broken / c).mkdir(parents=True)
        (broken / c / "x.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ValueError, match=r"no readable images in .*broken"):
        ImageFolderDataset(broken)
    with pytest.raises(ValueError, match="verify must be 'full', 'header' or 'none', got 'fast'"):
        ImageFolderDataset(one, verify="fast")
    with pytest.raises(ValueError, match="image_size must be a positive int or None, got -3"):
        ImageFolderDataset(one, image_size=-3)


def test_folder_duplicate_readable_names_are_disambiguated(tmp_path):
    ds = ImageFolderDataset(_good_folder(tmp_path, classes=("n03773504", "n04008634", "tabby cat")), 8)
    assert IMAGENET_CLASSNAMES[657] == IMAGENET_CLASSNAMES[744] == "missile"
    assert ds.classnames == ["missile (n03773504)", "missile (n04008634)", "tabby cat"]


# --- symbolic links: each real folder once, each real file once, loops end ------------------

def _paths_and_warnings(root, **kw):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(root, image_size=8, **kw)
    return ds, [str(w.message) for w in caught]


def test_folder_self_link_counts_each_photo_once(tmp_path):
    root = _good_folder(tmp_path / "data", classes=("cat", "dog"), per_class=1)
    os.symlink(".", root / "dog" / "me")  # ln -s . dog/me: once 41 copies of dog/0.png
    ds, msgs = _paths_and_warnings(root)
    assert len(ds) == 2 and ds.targets == [0, 1]
    loops = [m for m in msgs if "the loop is not followed" in m]
    assert len(loops) == 1 and str(root / "dog" / "me") in loops[0]
    assert [s.path for s in ds.skipped] == [str(root / "dog" / "me")]
    assert "a folder above it (a loop)" in ds.skipped[0].reason


def test_folder_link_to_parent_and_root_are_not_followed(tmp_path):
    root = _good_folder(tmp_path / "data", classes=("cat", "dog"), per_class=2)
    os.symlink("..", root / "cat" / "up")  # back to the dataset root: cat/up/cat/up/...
    (root / "dog" / "deep" / "er").mkdir(parents=True)
    _write(root / "dog" / "deep" / "er" / "x.png", _rgb(10, 10, seed=7))
    os.symlink("../..", root / "dog" / "deep" / "er" / "back")  # to dog/ itself
    ds, msgs = _paths_and_warnings(root)
    assert len(ds) == 5 and sorted(os.path.relpath(p, root) for p in ds.paths) == [
        "cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "dog/deep/er/x.png"]
    assert sum("the loop is not followed" in m for m in msgs) == 2
    assert {os.path.relpath(s.path, root) for s in ds.skipped} == {"cat/up", "dog/deep/er/back"}


def test_folder_links_to_one_folder_or_file_count_it_once(tmp_path):
    root = _good_folder(tmp_path / "data", classes=("cat", "dog"), per_class=1)
    extra = tmp_path / "elsewhere"
    _write(extra / "e.png", _rgb(10, 10, seed=3))
    os.symlink(extra, root / "dog" / "a")
    os.symlink(extra, root / "dog" / "b")  # the same real folder again
    os.symlink(root / "cat" / "0.png", root / "dog" / "cat-copy.png")  # the same real file again
    os.link(root / "cat" / "0.png", root / "dog" / "hard.png")
    ds, _ = _paths_and_warnings(root)
    rel = [os.path.relpath(p, root) for p in ds.paths]
    assert rel == ["cat/0.png", "dog/0.png", "dog/a/e.png"]
    reasons = {os.path.relpath(s.path, root): s.reason for s in ds.skipped}
    assert reasons["dog/b"].startswith(f"folder already scanned as {root / 'dog' / 'a'}")
    assert reasons["dog/cat-copy.png"] == f"same file as {root / 'cat' / '0.png'}; counted once"
    assert reasons["dog/hard.png"] == f"same file as {root / 'cat' / '0.png'}; counted once"


def test_folder_scan_ends_on_a_forest_of_loops(tmp_path):
    """Many links that each double the tree under os.walk(followlinks=True): a scan of seconds."""
    import subprocess
    import sys
    import time

    root = _good_folder(tmp_path / "data", classes=("cat", "dog"), per_class=1)
    for c in ("cat", "dog"):
        for k in range(6):
            os.symlink(".", root / c / f"self{k}")
            os.symlink("..", root / c / f"up{k}")
    code = ("import warnings, sys; warnings.simplefilter('ignore');"
            "from pyvlmx.data import ImageFolderDataset;"
            f"ds = ImageFolderDataset({str(root)!r}, image_size=8); print(len(ds), len(ds.skipped))")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "24"]
    assert time.perf_counter() - t0 < 60


def test_folder_keeps_os_walk_order_without_links(tmp_path):
    root = tmp_path / "data"
    for rel in ("a/z.png", "a/b/y.png", "a/b/c/x.png", "a/c.png", "a/d/w.png", "b/1.png"):
        _write(root / rel, _rgb(10, 10))
    (root / "a" / ".hidden").mkdir()
    _write(root / "a" / ".hidden" / "h.png", _rgb(10, 10))
    expect = []
    for c in ("a", "b"):
        for dirpath, dirnames, filenames in os.walk(root / c):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            expect += [os.path.join(dirpath, f) for f in sorted(filenames)]
    ds, _ = _paths_and_warnings(root)
    assert ds.paths == expect and len(expect) == 6


def test_dark_16bit_png_scales_by_the_type_range(tmp_path):
    arr = np.full((12, 10), 200, dtype=np.uint16)  # 200 / 65535: almost black
    p = tmp_path / "dark16.png"
    Image.fromarray(arr).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I;16") or im.mode == "I"
    x = load_image(p)
    assert x.shape == (3, 12, 10)
    assert torch.all(x == 1 / 255)  # round(200 / 65535 * 255) = 1 grey level, not 0.78
    arr[:6] = 65535
    Image.fromarray(arr).save(p)
    x = load_image(p)
    assert torch.all(x[:, :6] == 1) and torch.all(x[:, 6:] == 1 / 255)


def test_folder_reports_tiny_images(tmp_path):
    root = tmp_path / "data"
    _write(root / "cat" / "0.png", _rgb(32, 48))
    _write(root / "dog" / "0.png", _rgb(40, 40))
    _write(root / "dog" / "dot.png", _rgb(1, 1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ImageFolderDataset(root, image_size=None).small == []  # kept at its own size: nothing to say
        assert ImageFolderDataset(root, image_size=1).small == []  # not upscaled

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ImageFolderDataset(root, image_size=224)
    assert ds.small == [(str(root / "dog" / "dot.png"), (1, 1))] and len(ds) == 3  # reported, still used
    msgs = [str(w.message) for w in caught if "smaller than 32 px" in str(w.message)]
    assert msgs == [f"{root}: 1 image(s) smaller than 32 px on a side will be upscaled to 224x224 from almost no "
                    f"detail (see dataset.small): {root / 'dog' / 'dot.png'} (1x1)"]
    with pytest.warns(UserWarning, match="smaller than 32 px"):
        assert ImageFolderDataset(root, image_size=224, verify="header").small == ds.small


# --- the embedded samples ---------------------------------------------------------------------

def test_samples_dataset(samples):
    assert len(samples) >= 20 and len(samples.classnames) >= 10 and samples.skipped == []
    assert set(samples.classnames) <= set(IMAGENET_CLASSNAMES)
    man = samples_mod.manifest()
    assert man["n_images"] == len(samples) and man["n_classes"] == len(samples.classnames)
    for rec in man["images"]:
        # the folder (= label) is the readable name of the recorded ImageNet index
        assert rec["file"].split("/")[0] == IMAGENET_CLASSNAMES[rec["imagenet_index"]] == rec["class"]
        if rec["source"].startswith("foolbox/"):  # foolbox encodes the ImageNet index in the file name
            assert int(rec["source"][:-4].split("_")[-1]) == rec["imagenet_index"]
    x, y = samples[0]
    assert x.shape == (3, 224, 224) and float(x.max()) <= 1


def test_samples_install_check_and_env_dir(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    images = samples_mod.install(root)
    assert samples_mod.check(root) is None
    assert sum(1 for _ in images.rglob("*.*")) == len(samples_mod.SOURCES)
    # a changed file is noticed, and a reinstall repairs it
    victim = next(images.rglob("*.jpg"))
    victim.write_bytes(b"x")
    assert "changed since install" in samples_mod.check(root)
    samples_mod.install(root)
    assert samples_mod.check(root) is None
    # $PYVLMX_SAMPLES_DIR: load_dataset("samples") installs there on first use
    monkeypatch.setenv("PYVLMX_SAMPLES_DIR", str(tmp_path / "env"))
    assert samples_mod.check() is not None
    ds = load_dataset("samples", 32)
    assert ds.root == tmp_path / "env" / "samples" and len(ds) == len(samples_mod.SOURCES)
    assert json.loads((tmp_path / "env" / "samples.json").read_text())["n_images"] == len(ds)


def test_samples_cli(tmp_path, capsys):
    assert samples_mod.main(["--dir", str(tmp_path)]) == 1
    assert "not installed" in capsys.readouterr().out
    assert samples_mod.main(["--install", "--dir", str(tmp_path)]) == 0
    n_cls = len({i for _, _, i in samples_mod.SOURCES})
    assert f"{len(samples_mod.SOURCES)} photos over {n_cls} ImageNet classes" in capsys.readouterr().out
    assert samples_mod.main(["--dir", str(tmp_path)]) == 0


def test_samples_never_import_foolbox():
    import subprocess
    import sys

    code = ("import sys, tempfile; from pyvlmx.data import samples as s; s.install(tempfile.mkdtemp()); "
            "print('foolbox' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

