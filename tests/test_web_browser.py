"""The pages in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) against
a real `opencanvas serve`: the gallery, generating an image and seeing its attributed nearest training
images (hostile catalog text shown as text, never run), voting by clicking and by keyboard, and the
results page changing. Skips when Chromium is not installed (`make setup` installs it).

Set OPENCANVAS_SCREENSHOTS=DIR to save a screenshot of each page there (docs/ has them)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencanvas.humaneval.prepare import prepare
from tests.web_server import free_port, start_server
from tests.web_workspace import EVIL_TITLE, shared_web_workspace

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromium-driver are not "
                                "installed: `make setup` (apt-get install chromium chromium-driver)")
SHOTS = os.environ.get("OPENCANVAS_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from opencanvas.cards.writer import write_cards

    ws, clip = shared_web_workspace(tmp_path_factory)
    write_cards(ws, "tiny-a")
    prepare(ws, "browser", ["tiny-a", "tiny-b"], ws.root / "prompts.tsv", steps=2, sampler="euler")
    port = free_port()
    proc = start_server(ws.root, port, "--clip", str(clip), log=ws.root / "serve-browser.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="opencanvas-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1200,1000",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _shot(driver: object, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")   # type: ignore[attr-defined]
        driver.set_window_size(1200, min(max(int(height), 800), 2000))                  # type: ignore[attr-defined]
        driver.save_screenshot(str(Path(SHOTS) / f"{name}.png"))                        # type: ignore[attr-defined]
        driver.set_window_size(1200, 1000)                                              # type: ignore[attr-defined]


def _wait(driver: object, condition: object, timeout: float = 90) -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def test_gallery_and_run_page(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server + "/")
    runs = [e.get_attribute("data-run") for e in d.find_elements(By.CSS_SELECTOR, "a.run")]
    assert runs == ["tiny-a", "tiny-b"]
    assert "browser" in d.find_element(By.CSS_SELECTOR, "ul.studies").text
    _shot(d, "web-gallery")
    d.find_element(By.CSS_SELECTOR, 'a.run[data-run="tiny-a"]').click()
    _wait(d, lambda d: "Run tiny-a" in d.find_element(By.TAG_NAME, "h1").text)
    assert d.find_elements(By.CSS_SELECTOR, "svg.curve polyline")
    assert d.execute_script("return document.querySelector('.grids img').naturalWidth") > 0
    _shot(d, "web-run")
    d.find_element(By.LINK_TEXT, "MODEL_CARD.md").click()
    _wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "article.card h1"))
    assert "Model card" in d.find_element(By.CSS_SELECTOR, "article.card h1").text
    assert d.find_elements(By.CSS_SELECTOR, "article.card table td")      # Markdown tables rendered
    _shot(d, "web-card")


def test_generate_shows_attributed_neighbours_as_text(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.get(server + "/generate?run=tiny-b")
    steps = d.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("4")
    d.find_element(By.ID, "go").click()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#by-phash .neighbour")) == 4)
    _wait(d, lambda d: d.execute_script("return document.getElementById('image').naturalWidth") > 0)
    assert d.find_element(By.ID, "progress").get_attribute("value") == "1"
    meta = d.find_element(By.ID, "meta").text
    assert "tiny-b" in meta and "commercial" in meta
    card = d.find_element(By.CSS_SELECTOR, "#by-clip .neighbour")
    assert EVIL_TITLE in card.find_element(By.CSS_SELECTOR, ".title").text    # shown as text...
    assert d.execute_script("return window.__pwned") is None                   # ...and never run
    assert not d.find_elements(By.CSS_SELECTOR, ".neighbour .title img, .neighbour script")
    assert card.find_element(By.CSS_SELECTOR, ".title a").get_attribute("href").startswith("https://example.org/")
    assert not card.find_elements(By.CSS_SELECTOR, ".author a")               # javascript: author link dropped
    assert "cc0" in card.find_element(By.CSS_SELECTOR, ".license").text
    assert re.search(r"cosine -?\d\.\d{3}", card.text)
    assert d.execute_script("return document.querySelector('#by-phash .neighbour img').naturalWidth") == 32
    _shot(d, "web-generate")


def _summary(d: object) -> int:
    from selenium.webdriver.common.by import By

    return int(d.find_element(By.ID, "summary").text.split()[0])


def test_vote_by_click_and_keyboard_and_results_change(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = browser
    d.get(server + "/humaneval/browser/results")
    before = _summary(d)
    d.get(server + "/arena/browser")
    _wait(d, lambda d: d.find_element(By.ID, "arena").get_attribute("data-pair"))
    first = d.find_element(By.ID, "arena").get_attribute("data-pair")
    assert d.find_element(By.ID, "prompt").text
    _wait(d, lambda d: d.execute_script("return document.getElementById('left').naturalWidth") > 0)
    _shot(d, "web-arena")
    d.find_element(By.CSS_SELECTOR, '.question[data-question="overall"] button[data-choice="left"]').click()
    _wait(d, lambda d: "current" in d.find_element(By.CSS_SELECTOR, '.question[data-question="prompt"]')
          .get_attribute("class"))
    d.find_element(By.CSS_SELECTOR, '.question[data-question="prompt"] button[data-choice="tie"]').click()
    _wait(d, lambda d: d.find_element(By.ID, "arena").get_attribute("data-pair") != first)
    second = d.find_element(By.ID, "arena").get_attribute("data-pair")
    body = d.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    _wait(d, lambda d: "current" in d.find_element(By.CSS_SELECTOR, '.question[data-question="prompt"]')
          .get_attribute("class"))
    body.send_keys("l")
    _wait(d, lambda d: d.find_element(By.ID, "arena").get_attribute("data-pair") != second)
    d.get(server + "/humaneval/browser/results")
    assert _summary(d) == before + 4
    rates = [e.text for e in d.find_elements(By.CSS_SELECTOR, '.question-results[data-question="overall"] .win-rate')]
    assert len(rates) == 2 and all(r.endswith("%") for r in rates)
    assert d.execute_script("return document.querySelector('img.plot').naturalWidth") > 200
    _shot(d, "web-results")

