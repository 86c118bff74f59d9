"""One headless Chromium for the console's browser tests, against the e2e package's stack.

The console's tests ran a ``ferry up`` of their own (efficientnet-lite0 and minilm), 15-25 s of
the suite's CPU to start; the e2e stack serves both models and runs its tests after these (this
folder sorts first in tests/e2e), so they share it.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from skimage import data as skimage_data

from tests.e2e import conftest as e2e
from tests.e2e.console.browser import Browser, missing
from tests.e2e.rest import Rest

#: Set both to run the tests against a stack that is already up (`ferry up`) instead of a new one.
STACK_URL_ENV = "FERRY_CONSOLE_STACK_URL"
STACK_KEY_ENV = "FERRY_CONSOLE_STACK_KEY"
API_KEY = os.environ.get(STACK_KEY_ENV, e2e.API_KEY)


#: Pictures in the job test's zip, besides one file that is not a picture.
ZIP_PHOTOS = 12


def _jpeg(pixels: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.fixture(scope="package")
def console_stack(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The e2e package's stack, which serves the tests' image classifier and text model (its
    candidate labels carry the XSS check's markup), or the one ``STACK_URL_ENV`` names."""
    if why := missing():
        pytest.skip(why)
    if url := os.environ.get(STACK_URL_ENV):  # a stack already up: quicker while working on the console
        return {"http_url": url}
    stack: dict[str, Any] = request.getfixturevalue("stack")
    return stack


@pytest.fixture(scope="package")
def api(console_stack: dict[str, Any]) -> Rest:
    return Rest(console_stack["http_url"], API_KEY)


@pytest.fixture(scope="package")
def browser_session(
    console_stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Browser]:
    browser = Browser(console_stack["http_url"], Path(tmp_path_factory.mktemp("downloads")))
    yield browser
    browser.quit()


@pytest.fixture
def browser(browser_session: Browser) -> Iterator[Browser]:
    """The package's browser, signed out at the start of the test; no console errors by its end."""
    browser_session.open("signin")
    browser_session.run("sessionStorage.clear()")
    browser_session.errors()
    yield browser_session
    assert browser_session.errors() == [], "the console logged errors (a CSP violation or a script error)"


def sign_in(browser: Browser, key: str = API_KEY) -> None:
    browser.open("signin")
    browser.element("#api-key").send_keys(key)
    browser.element("#signin-form button").click()
    browser.wait(
        lambda: browser.driver.current_url.endswith("#/models"), what="the models page after signing in"
    )
    browser.element("#nav a[href='#/models']")


@pytest.fixture(scope="package")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """scikit-image's photos as files a user picks: the cat, and a zip of cats and coffees, one
    file that is not an image (one failed item) and a Mac's bookkeeping files (no items)."""
    root = Path(tmp_path_factory.mktemp("photos"))
    cat = _jpeg(skimage_data.chelsea())
    (root / "chelsea.jpg").write_bytes(cat)
    coffee = _jpeg(skimage_data.coffee())
    with zipfile.ZipFile(root / "photos.zip", "w") as archive:
        # Enough items that the job is still running when its page opens and starts watching.
        for i in range(ZIP_PHOTOS):
            archive.writestr(f"{i:02d}-{'chelsea' if i % 2 else 'coffee'}.jpg", cat if i % 2 else coffee)
        archive.writestr("zz-notes.jpg", b"these bytes are not a picture")
        # As macOS's Finder zips a folder: no items of these (else each would be a failed one).
        archive.writestr("__MACOSX/._00-coffee.jpg", b"\x00\x05\x16\x07" + bytes(80))
        archive.writestr(".DS_Store", b"Bud1" + bytes(2044))
    return {"cat": root / "chelsea.jpg", "zip": root / "photos.zip"}
