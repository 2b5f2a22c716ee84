"""Open a report in headless Chromium and read back what it rendered.

Used by the test suite to prove ``report.html`` works in a real browser:
every image decoded and the headline table is present.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def render_dom(page: str | Path, chromium: str | None = None, timeout: float = 60.0) -> str:
    """The DOM of ``page`` after its scripts ran, from headless Chromium.

    Raises:
        FileNotFoundError: no Chromium on PATH (Debian: ``apt-get install chromium``).
        RuntimeError: Chromium failed; its stderr is in the message.
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found on PATH (tried " + ", ".join(CHROMIUM_NAMES)
                                + "); on Debian: apt-get install chromium")
    page = Path(page).resolve()
    with tempfile.TemporaryDirectory(prefix="pyvlmx-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or "<html" not in proc.stdout:
        raise RuntimeError(f"chromium exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.stdout


def image_check(dom: str) -> tuple[int, int]:
    """(loaded, total) images as the page's own load handler counted them."""
    m = re.search(r"id=\"image-check\"[^>]*", dom)
    if m is None:
        raise ValueError("the rendered page has no #image-check element")
    tag = m.group(0)
    total = int(re.search(r'data-total="(-?\d+)"', tag).group(1))
    loaded = int(re.search(r'data-loaded="(-?\d+)"', tag).group(1))
    return loaded, total
