"""Report rendering, and the HTML in a real (headless Chromium) browser."""

import base64
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from pyvlmx.report import build_report
from pyvlmx.report.browser import find_chromium, image_check, render_dom

# CI sets PYVLMX_REQUIRE_BROWSER=1 (after installing Chromium), so there the
# browser tests run or fail; they are never skipped.
needs_browser = pytest.mark.skipif(
    find_chromium() is None and os.environ.get("PYVLMX_REQUIRE_BROWSER") != "1",
    reason="Chromium not installed (.ci/run installs it)")


def _study_folder(tmp_path, n_figures=3):
    rng = np.random.default_rng(0)
    figs = []
    for i in range(n_figures):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / f"f{i}.png")
        figs.append({"file": f"f{i}.png", "caption": f"figure {i}"})
    study = {
        "title": "test study",
        "headline": [{"metric": "zero-shot top-1", "value": 0.95, "fmt": "{:.1%}", "note": "20 images",
                      "ci": [0.7639, 0.9911], "ci_method": "wilson"},
                     {"metric": "systematic accuracy", "value": 0.0, "fmt": "{:.1%}", "note": "",
                      "ci": [0.0, 0.0527], "ci_method": "wilson"},
                     {"metric": "PSNR median", "value": float("inf"), "fmt": "{:.1f} dB", "note": ""}],
        "headline_note": "Intervals: 95%; wilson: Wilson score interval of the rate.",
        "sections": [{"title": "Sweep", "text": "para one\n\npara <two>",
                      "tables": [{"columns": ["a", "b"], "rows": [[1, 2.5], ["x", None]], "caption": "t"},
                                 {"columns": ["test", "p"], "rows": [["w", 0.00048828125]], "caption": "p",
                                  "formats": [None, "{:.2g}"]}],
                      "figures": figs}],
        "settings": {"model": "m"}, "environment": {"torch": "x"},
    }
    (tmp_path / "study.json").write_text(json.dumps(study))
    return tmp_path


def test_markdown_and_html_contents(tmp_path):
    md, page = build_report(_study_folder(tmp_path))
    text = md.read_text()
    assert "| metric | value | 95% interval | note |" in text
    # each interval beside its figure, in the figure's format; an entry without one leaves the cell empty
    assert "| zero-shot top-1 | 95.0% | [76.4%, 99.1%] | 20 images |" in text
    assert "| systematic accuracy | 0.0% | [0.0%, 5.3%] |  |" in text
    assert "| PSNR median | inf |  |  |" in text
    assert "Intervals: 95%; wilson: Wilson score interval of the rate." in text
    # a column's own format; the others the default
    assert "| w | 0.00049 |" in text and "| 1 | 2.500 |" in text
    assert "![figure 1](f1.png)" in text
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 3
    # the embedded images are the figure files, in the section's order
    payloads = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert [base64.b64decode(p) for p in payloads] == [(tmp_path / f"f{i}.png").read_bytes() for i in range(3)]
    assert "para &lt;two&gt;" in html  # text is escaped
    assert "<td>zero-shot top-1</td><td>95.0%</td><td>[76.4%, 99.1%]</td><td>20 images</td>" in html
    assert "<td>w</td><td>0.00049</td>" in html
    assert "f0.png" not in html  # self-contained: no links to files


def test_missing_figure_is_an_error(tmp_path):
    folder = _study_folder(tmp_path)
    (folder / "f2.png").unlink()
    with pytest.raises(FileNotFoundError, match="'f2.png' not found"):
        build_report(folder)


def test_missing_study_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="no study.json"):
        build_report(tmp_path)


@needs_browser
def test_report_renders_in_headless_chromium(tmp_path):
    _, page = build_report(_study_folder(tmp_path, n_figures=4))
    dom = render_dom(page)
    loaded, total = image_check(dom)
    assert total == 4 and loaded == 4
    assert 'id="headline"' in dom and "systematic accuracy" in dom and "[0.0%, 5.3%]" in dom


@needs_browser
def test_browser_check_detects_a_broken_image(tmp_path):
    _, page = build_report(_study_folder(tmp_path, n_figures=2))
    html = page.read_text()
    start = html.index("data:image/png;base64,") + len("data:image/png;base64,")
    page.write_text(html[:start] + "AAAA" + html[start + 40:])  # corrupt the first image
    loaded, total = image_check(render_dom(page))
    assert total == 2 and loaded == 1
