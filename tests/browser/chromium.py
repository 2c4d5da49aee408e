"""Launch Debian's Chromium headless through Playwright, skipping the test with a clear reason when it is absent.

``make browser`` (a dependency of ``make test``) installs the package; ``playwright install`` is never used: the
system binary is launched through ``executable_path``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def chromium_executable() -> str | None:
    """``$CHROMIUM`` if set, else Debian's ``/usr/bin/chromium`` or whatever ``chromium`` is on the PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextmanager
def launch_or_skip() -> Iterator[Any]:
    """A Playwright ``Browser`` on the system Chromium, or ``pytest.skip`` saying how to get one."""
    exe = chromium_executable()
    if exe is None:
        pytest.skip(
            "Chromium not installed: run `make browser` (apt-get install chromium) for the browser tests"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (python) is not installed in the venv")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def another_browser(browser: Any, extra_args: tuple[str, ...]) -> Iterator[Any]:
    """A second Chromium with extra command-line switches, from the running Playwright of ``browser`` (one sync
    Playwright per process)."""
    second = browser.browser_type.launch(
        executable_path=chromium_executable(), args=[*ARGS, *extra_args], headless=True
    )
    try:
        yield second
    finally:
        second.close()


@dataclass
class Console:
    """Console errors and uncaught exceptions of a page (the tests require none)."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> Any:
        page.on(
            "console",
            lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        return page


def undecoded_images(page: Any, *, with_src_only: bool = False) -> list[str]:
    """Every ``<img>`` on the page that did not decode (``naturalWidth == 0``), by the start of its ``src``.

    ``with_src_only``: ignore ``<img>`` elements that have no ``src`` yet (placeholders of hidden panels).
    """
    return page.evaluate(
        """(withSrcOnly) => Array.from(document.images)
            .filter(i => !withSrcOnly || i.getAttribute('src'))
            .filter(i => !(i.complete && i.naturalWidth > 0))
            .map(i => (i.getAttribute('src') || '(no src)').slice(0, 80))""",
        with_src_only,
    )


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path
