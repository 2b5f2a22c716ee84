"""pyvlmx.checks: inputs refused (or warned about) before any work starts, with messages that name them."""

import os
import shutil
import subprocess

import pytest

from pyvlmx.checks import (MIN_IMAGE_SIDE, check_eps, check_image_size, check_input_file, check_out_dir,
                           check_positive_int, check_sample_count, check_targets)
from pyvlmx.errors import UserError


@pytest.fixture
def unwritable(tmp_path):
    """A real folder this process cannot write to, root included (root ignores permission bits)."""
    d = tmp_path / "locked"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        undo = ["chmod", "755", str(d)]
    else:
        chattr = shutil.which("chattr")
        if chattr is None or subprocess.run([chattr, "+i", str(d)], capture_output=True).returncode != 0:
            pytest.skip("running as root and 'chattr +i' is unavailable here (needs ext2/3/4 and "
                        "CAP_LINUX_IMMUTABLE), so no folder is unwritable for this process")
        undo = [chattr, "-i", str(d)]
    try:
        with pytest.raises(OSError):  # really unwritable, or the test below proves nothing
            (d / "probe").write_text("x")
        yield d
    finally:
        subprocess.run(undo, check=True)


def test_out_dir_is_created_and_probed(tmp_path):
    out = check_out_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []  # the probe file is gone again
    assert check_out_dir(out) == out  # an existing folder is fine


def test_out_dir_refuses_a_file(tmp_path):
    f = tmp_path / "results.json"
    f.write_text("{}")
    with pytest.raises(UserError, match=rf"--out {f} is an existing file, not a folder"):
        check_out_dir(f)
    with pytest.raises(UserError, match=rf"--out {f / 'sub'}: {f} is a file, so the folder cannot be created"):
        check_out_dir(f / "sub")
    assert f.read_text() == "{}"


def test_out_dir_refuses_a_read_only_folder(unwritable):
    with pytest.raises(UserError, match=rf"--out {unwritable} is not writable \(.*\); choose a folder"):
        check_out_dir(unwritable)
    with pytest.raises(UserError, match=rf"--out {unwritable / 'new'}: cannot create the folder"):
        check_out_dir(unwritable / "new")


def test_input_file(tmp_path):
    with pytest.raises(UserError, match="--image .*nope.png: no such file"):
        check_input_file(tmp_path / "nope.png", name="--image")
    with pytest.raises(UserError, match="is a folder; expected a checkpoint"):
        check_input_file(tmp_path, name="--pretrained", what="checkpoint")
    (tmp_path / "x.pt").write_bytes(b"1")
    assert check_input_file(tmp_path / "x.pt", name="--pretrained") == tmp_path / "x.pt"


def test_eps():
    assert check_eps(4 / 255) == 4 / 255
    with pytest.raises(UserError, match=r"--eps 300/255 is above 1|--eps 1.17647 is above 1: .*did you mean"):
        check_eps(300 / 255)
    for bad in (0, -0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(UserError, match="must be a number in"):
            check_eps(bad)
    with pytest.warns(UserWarning, match=r"32.0/255\) is above 16/255: the change will be visible"):
        assert check_eps(32 / 255) == 32 / 255


def test_targets_and_counts():
    assert check_targets("all", 5) == "all" and check_targets("3", 5) == 3 and check_targets(4, 5) == 4
    with pytest.raises(UserError, match=r"--targets 999 is more than the 4 other class\(es\) of a 5-class "
                                        r"dataset; use at most 4 or 'all'"):
        check_targets(999, 5)
    with pytest.raises(UserError, match="'all' or a positive integer, got 0"):
        check_targets(0, 5)
    with pytest.raises(UserError, match="got 'some'"):
        check_targets("some", 5)
    assert check_positive_int(3, name="--max-images") == 3
    with pytest.raises(UserError, match="--max-images must be >= 1, got 0"):
        check_positive_int(0, name="--max-images")
    with pytest.raises(UserError, match="--max-images must be an integer >= 1, got True"):
        check_positive_int(True, name="--max-images")
    with pytest.raises(UserError, match="--n 4 is too small: the normality test needs at least 20"):
        check_sample_count(4, 20, name="--n", why="the normality test")


def test_image_size(tmp_path):
    assert check_image_size((640, 480)) is None
    assert check_image_size((MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)) is None
    note = check_image_size((1, 1), path=tmp_path / "dot.png")
    assert note == (f"{tmp_path / 'dot.png'}: image is 1x1 px, smaller than {MIN_IMAGE_SIDE} px on a side; "
                    f"it would be upscaled from almost no detail")
