"""The upload page at ``/``: served self-contained by the gateway, and driven in headless Chromium.

The browser test uses Debian's ``chromium`` and ``chromium-driver`` (``make system-deps``) through
selenium with the system driver's path, so nothing is downloaded. Without them the test is skipped
locally and fails under CI=true.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import GatewayServer

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
WAIT_S = 30.0
SHIPPED_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"


class _References(HTMLParser):
    """Every src/href/action attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href", "action") and v]


def _png(seed: int, size: tuple[int, int] = (120, 90)) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 2, y * 2, (x + y)], axis=-1) % 256
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_page_is_served_self_contained(tiny_gateway: GatewayServer) -> None:
    page = httpx.get(f"{tiny_gateway.url}/", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    parser = _References()
    parser.feed(page.text)
    assert sorted(parser.refs) == ["ui/app.js", "ui/style.css"]
    assert re.search(r'<input[^>]+type="file"', page.text)
    assets = {ref: httpx.get(f"{tiny_gateway.url}/{ref}", timeout=10) for ref in parser.refs}
    assert {r: a.status_code for r, a in assets.items()} == {"ui/app.js": 200, "ui/style.css": 200}
    assert assets["ui/app.js"].headers["content-type"].startswith("text/javascript")
    assert assets["ui/style.css"].headers["content-type"].startswith("text/css")
    for text in [page.text, *(a.text for a in assets.values())]:
        assert "http://" not in text and "https://" not in text
    assert not any(re.match(r"^([a-z][a-z0-9+.-]*:|//|/)", ref) for ref in parser.refs)  # relative only
    assert "url(" not in assets["ui/style.css"].text and "@import" not in assets["ui/style.css"].text
    assert "score?probe=true&perturbation=true" in assets["ui/app.js"].text

    missing = httpx.get(f"{tiny_gateway.url}/ui/index.html", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    paths = httpx.get(f"{tiny_gateway.url}/openapi.json", timeout=10).json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)
    assert "/score" in paths


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = f"needs {CHROMIUM} and {CHROMEDRIVER} (Debian chromium, chromium-driver: make system-deps)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for_outcome(driver: WebDriver) -> None:
    """Until the page shows a result or an error."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(
        lambda d: (
            d.find_element(By.ID, "result").is_displayed() or d.find_element(By.ID, "error").is_displayed()
        )
    )


def _score_in_page(driver: WebDriver, server: GatewayServer, path: Path) -> None:
    """Open the page, choose ``path`` in the file input, wait for the outcome."""
    from selenium.webdriver.common.by import By

    driver.get(f"{server.url}/")
    driver.find_element(By.ID, "file").send_keys(str(path))
    _wait_for_outcome(driver)


# A drop as the browser delivers it: a DragEvent whose DataTransfer holds one File.
_DROP_SCRIPT = """
const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
document.getElementById("drop-zone").dispatchEvent(
  new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
"""


def _text(driver: WebDriver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.ID, element_id).text)


def _natural_width(driver: WebDriver, element_id: str) -> int:
    script = f"return document.getElementById('{element_id}').naturalWidth;"
    return int(driver.execute_script(script))


def test_page_shows_the_score_of_an_upload(
    browser: WebDriver, tiny_gateway: GatewayServer, tmp_path: Path
) -> None:
    data = _png(seed=3)
    path = tmp_path / "generated.png"
    path.write_bytes(data)
    _score_in_page(browser, tiny_gateway, path)
    assert _text(browser, "error") == ""

    plain = httpx.post(f"{tiny_gateway.url}/score", files={"file": ("x.png", data, "image/png")}, timeout=30)
    assert plain.status_code == 200
    expected = plain.json()
    assert _text(browser, "score") == f"{expected['score']:.2f}"
    assert (
        _text(browser, "model")
        == f"{expected['model']} version {expected['version']} ({expected['crops']} crops)"
    )
    assert _natural_width(browser, "preview") == 120

    # The tiny repository has no iqa_probe: the gateway refuses the probe and the page scores without it.
    probed = httpx.post(
        f"{tiny_gateway.url}/score?probe=true&perturbation=true",
        content=data,
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    if probed.status_code == 200:
        assert "probe" not in probed.json()
        assert _text(browser, "probe-state") == "probe unavailable on this gateway"
    else:
        error = probed.json()["error"]
        assert (probed.status_code, error["code"]) == (422, "probe_unavailable")
        assert _text(browser, "probe-state") == f"probe unavailable: {error['message']}"
    assert _text(browser, "delta") == ""
    assert not browser.find_element("id", "perturbation-figure").is_displayed()


def test_dropping_an_image_scores_it(browser: WebDriver, tiny_gateway: GatewayServer) -> None:
    data = _png(seed=4, size=(80, 100))
    browser.get(f"{tiny_gateway.url}/")
    browser.execute_script(_DROP_SCRIPT, base64.b64encode(data).decode("ascii"))
    _wait_for_outcome(browser)

    expected = httpx.post(
        f"{tiny_gateway.url}/score", content=data, headers={"Content-Type": "image/png"}, timeout=30
    ).json()
    assert _text(browser, "error") == ""
    assert _text(browser, "score") == f"{expected['score']:.2f}"
    assert _text(browser, "file-name") == "dropped.png"
    assert _natural_width(browser, "preview") == 80


def test_page_shows_the_api_error_of_a_non_image(
    browser: WebDriver, tiny_gateway: GatewayServer, tmp_path: Path
) -> None:
    data = b"this is not an image, only text"
    path = tmp_path / "not-an-image.png"
    path.write_bytes(data)
    _score_in_page(browser, tiny_gateway, path)

    api = httpx.post(
        f"{tiny_gateway.url}/score", content=data, headers={"Content-Type": "image/png"}, timeout=30
    )
    assert api.status_code == 400
    error = api.json()["error"]
    assert _text(browser, "error") == f"Error 400 {error['code']}: {error['message']}"
    assert not browser.find_element("id", "result").is_displayed()


def test_page_sends_the_api_key(
    browser: WebDriver,
    gateway_factory: Callable[..., contextlib.AbstractContextManager[GatewayServer]],
    tiny_model_repository: Path,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data = _png(seed=5)
    path = tmp_path / "keyed.png"
    path.write_bytes(data)
    env = {"IQA_API_KEYS": "page-test-key", "IQA_ORT_INTRA_OP_THREADS": "1"}
    with gateway_factory(tiny_model_repository, env=env) as server:
        _score_in_page(browser, server, path)  # the page itself is open; its /score call needs the key
        assert _text(browser, "error").startswith("Error 401 unauthorized: a valid API key is required")

        browser.find_element(By.ID, "api-key").send_keys("page-test-key")
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.ID, "result").is_displayed())
        expected = httpx.post(
            f"{server.url}/score",
            content=data,
            headers={"Content-Type": "image/png", "X-API-Key": "page-test-key"},
            timeout=30,
        ).json()
    assert _text(browser, "error") == ""
    assert _text(browser, "score") == f"{expected['score']:.2f}"


def test_page_shows_the_probe_of_the_shipped_model(
    browser: WebDriver,
    gateway_factory: Callable[..., contextlib.AbstractContextManager[GatewayServer]],
    tmp_path: Path,
) -> None:
    """The shipped repository has the FGSM probe (``iqa_probe``): delta, flag and the perturbation."""
    data = _png(seed=6, size=(160, 120))
    path = tmp_path / "probed.png"
    path.write_bytes(data)
    with gateway_factory(SHIPPED_REPOSITORY, env={"IQA_ORT_INTRA_OP_THREADS": "1"}) as server:
        _score_in_page(browser, server, path)
        api = httpx.post(
            f"{server.url}/score?probe=true&perturbation=true",
            content=data,
            headers={"Content-Type": "image/png"},
            timeout=60,
        ).json()
    assert _text(browser, "error") == ""
    assert _text(browser, "score") == f"{api['score']:.2f}"
    probe = api["probe"]
    assert _text(browser, "delta") == f"{'+' if probe['delta'] >= 0 else ''}{probe['delta']:.2f}"
    assert _text(browser, "adv-score") == f"{probe['adv_score']:.2f}"
    assert _text(browser, "linearity") == f"{probe['linearity']:.2f}"
    assert _text(browser, "probe-state").startswith("FLAGGED" if probe["flagged"] else "not flagged")
    perturbation = Image.open(io.BytesIO(base64.b64decode(probe["perturbation_png"])))
    assert perturbation.width > 0
    assert _natural_width(browser, "perturbation") == perturbation.width
    shown = browser.find_element("id", "perturbation").get_attribute("src")
    assert shown == f"data:image/png;base64,{probe['perturbation_png']}"
