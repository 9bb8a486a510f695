"""report.html: self-contained, offline, rendered by a real headless Chromium and checked in a screenshot."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lowlight.compile.report_html import SECTION_COLOURS


def test_report_is_self_contained(int8_bundle) -> None:
    page = (int8_bundle.bundle / "report.html").read_text()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//|file:)", page), "report.html must not load anything"
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for sid, (title, colour) in SECTION_COLOURS.items():
        assert f'id="{sid}"' in page and colour in page
    assert page.count("data:image/png;base64,") == len(__import__("json").loads(
        (int8_bundle.bundle / "verification.json").read_text())["error_maps"])


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def test_report_renders_in_headless_chromium(int8_bundle, tmp_path: Path) -> None:
    import cv2

    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the browser rendering check needs it")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,6000", f"--screenshot={shot}",
         (int8_bundle.bundle / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    img = cv2.imread(str(shot))[..., ::-1].astype(np.int16)  # RGB
    for sid, (title, colour) in SECTION_COLOURS.items():
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
        hits = np.all(np.abs(img - rgb) <= 2, axis=-1)
        rows = np.nonzero(hits.any(axis=1))[0]
        assert hits.sum() > 200, f"section {sid!r} ({title}) is not visible in the screenshot"
        SECTION_COLOURS_ROWS[sid] = int(rows.min())
    order = [SECTION_COLOURS_ROWS[s] for s in SECTION_COLOURS]
    assert order == sorted(order), "sections render in the page order"
    # the worst-sample panel rendered as an image: inferno's bright yellow end is on screen
    assert np.all(np.abs(img - np.array([252, 255, 164])) <= 12, axis=-1).sum() > 0 or np.all(
        np.abs(img - np.array([0, 0, 4])) <= 6, axis=-1).sum() > 500


SECTION_COLOURS_ROWS: dict[str, int] = {}
