"""Playwright driving Debian's system Chromium (browser downloads are not reachable here),
and the check every screenshot gets: the page rendered (a picture of the viewport's size
with real content) and shows no error banner."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")


def chromium_path() -> str:
    """The system Chromium (``MLOX_CHROMIUM`` overrides); a clear failure without it."""
    candidates = [os.environ.get("MLOX_CHROMIUM"), *CHROMIUM_PATHS, shutil.which("chromium")]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found is None:
        raise RuntimeError("no Chromium: install Debian's (apt-get install -y chromium; scripts/setup --e2e does it)")
    return found


def launch(playwright):
    """A headless system Chromium. As root (CI) it needs --no-sandbox: Chromium refuses to run
    its sandbox as root; the pages it opens are this test's own, on loopback."""
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=args)


def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots go: ``MLOX_TEST_ARTIFACTS`` when set, else the test's tmp dir."""
    base = Path(os.environ["MLOX_TEST_ARTIFACTS"]) if os.environ.get("MLOX_TEST_ARTIFACTS") else tmp_path
    base.mkdir(parents=True, exist_ok=True)
    return base


def screenshot(page, folder: Path, name: str) -> Path:
    """Save a full-page screenshot and check it: rendered, and no error banner on the page."""
    from PIL import Image

    assert page.locator(".banner.error, [role=alert].error").count() == 0, \
        f"{name}: an error banner: {page.locator('.banner.error').all_inner_texts()}"
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as image:
        width, height = image.size
        viewport = page.viewport_size
        assert width == viewport["width"] and height >= viewport["height"] // 2, (name, image.size)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 20, f"{name}: the picture is almost blank ({len(colors)} colours)"
    return path
