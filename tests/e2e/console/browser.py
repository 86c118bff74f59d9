"""Debian's chromium, driven by Selenium through Debian's chromedriver, headless and offline.

``make test`` installs both as root (the Makefile's deploy-tools); without them the console's tests
skip and say so. Each run gets a new empty profile, and the flags keep Chromium from calling home.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
#: When set, tests save screenshots of the main pages there (docs/console.md's pictures).
SCREENSHOTS_ENV = "FERRY_CONSOLE_SCREENSHOTS"

T = TypeVar("T")


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: `make test` installs chromium and chromium-driver as root"
    return None


class Browser:
    """One headless Chromium with the console's helpers: go to a page, wait for an element."""

    def __init__(self, base_url: str, downloads: Path) -> None:
        self.base_url = base_url
        self.profile = tempfile.mkdtemp(prefix="ferry-chromium-")
        self.downloads = downloads
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={self.profile}", "--window-size=1280,900"):
            options.add_argument(flag)
        options.add_experimental_option(
            "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
        )
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.screenshots = os.environ.get(SCREENSHOTS_ENV)

    def quit(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, fragment: str = "") -> None:
        """Loads the console at ``#/<fragment>`` (a full load, so each test starts clean)."""
        self.driver.get(f"{self.base_url}/console/#/{fragment}")

    def wait(self, until: Callable[[], T | None], timeout_s: float = 30.0, what: str = "") -> T:
        """Polls ``until`` (ignoring elements not there yet) until it answers something truthy."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = until()
                if value:
                    return value
            except WebDriverException as error:
                last = error
            time.sleep(0.1)
        main = self.driver.find_element(By.ID, "main").text[:2000]
        url = self.driver.current_url
        raise AssertionError(f"timed out waiting for {what or until} at {url}: {last}\npage shows:\n{main}")

    def element(self, css: str, timeout_s: float = 30.0) -> WebElement:
        return self.wait(lambda: self.driver.find_element(By.CSS_SELECTOR, css), timeout_s, css)

    def elements(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text_of(self, css: str, contains: str, timeout_s: float = 30.0) -> str:
        """Waits until the element's text contains ``contains``; returns the text."""

        def found() -> str | None:
            text = self.driver.find_element(By.CSS_SELECTOR, css).text
            return text if contains in text else None

        return self.wait(found, timeout_s, f"{contains!r} in {css}")

    def run(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def errors(self) -> list[str]:
        """The page's console errors since last asked (a CSP violation or a script error is one).

        An API call answering 4xx is logged too ("Failed to load resource"): tests make those on
        purpose, and the page shows them as errors of its own, so they are left out here."""
        return [
            entry["message"]
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
        ]

    def shot(self, name: str, width: int = 1280, height: int = 800) -> None:
        """Saves a small PNG of the page as ``<name>.png`` when FERRY_CONSOLE_SCREENSHOTS is set."""
        if not self.screenshots:
            return
        self.driver.set_window_size(width, height)
        time.sleep(0.3)
        path = Path(self.screenshots) / f"{name}.png"
        self.driver.save_screenshot(str(path))
        from PIL import Image  # only for the docs' pictures: a 128-color palette keeps them small

        Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)
        self.driver.set_window_size(1280, 900)
