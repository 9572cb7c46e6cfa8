"""The playground page at `/` in a real browser: headless Debian Chromium driven by selenium against the
real server (uvicorn subprocess, bundled digits-vit, its SoftMax twin digits-vit-softmax and
numbers-en-de on the torch backend; the page shows the twins side by side).

Each check compares what the page shows with what the public API answers for the same input, so the
page can neither invent a result nor drop one: the label of an uploaded file and of a drawing made with
pointer actions, the attention map's brightest patch, the sparsity, the translation and its score,
and an API error in the API's own words. The browser's console must stay empty (the one deliberate 4xx
of the error check is the only log line allowed, and only in that check). Screenshots (desktop and
phone width) go to build/playground/; with MMSERVE_UPDATE_SCREENSHOTS=1 also to docs/ (the README's).
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import httpx
import pytest
from conftest import REPO, ServerProcess

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions import interaction  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CLASSIFIER = REPO / "models" / "digits-vit"
TWIN = REPO / "models" / "digits-vit-softmax"
TRANSLATOR = REPO / "models" / "numbers-en-de"
SAMPLES = REPO / "samples"
SHOT_DIR = REPO / "build" / "playground"
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.slow

# Without the background-networking flags Chromium tries to reach Google's services, which this closed
# network refuses, and those refusals end up in the logs the tests read.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000"]


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(["--classifier", str(CLASSIFIER), "--model", str(TWIN), "--translator", str(TRANSLATOR),
                         "--backend", "torch"])
    yield srv
    assert srv.stop(), srv.output()


@pytest.fixture(scope="module")
def api(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    # A missing browser is a skip on a developer's machine but a failure in CI, where `make test` installs it.
    if not (CHROMIUM and CHROMEDRIVER):
        missing = "chromium/chromedriver not installed (`make browser` installs Debian's chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    profile = tempfile.mkdtemp(prefix="mmserve-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def by_testid(driver, testid: str):
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')


def console_entries(driver) -> list[dict]:
    """Everything the page logged since the last call (reading the log empties it)."""
    return driver.get_log("browser")


@pytest.fixture
def page(browser, server):
    """The page freshly loaded and ready; afterwards, nothing in the console unless the test took it."""
    console_entries(browser)
    browser.get(server.url + "/")
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready === 'true'"), "the page to load")
    yield browser
    logged = console_entries(browser)
    assert logged == [], logged


def wait_classified(driver) -> str:
    """Wait until the panel has an answer and is not waiting for another; return the label shown."""
    def done():
        panel = driver.find_element(By.CSS_SELECTOR, ".panel")
        label = by_testid(driver, "prediction-label").text
        return label if panel.get_attribute("aria-busy") == "false" and label else None
    return wait_for(done, "a classification to be shown")


def attention_alpha_per_cell(driver, rows: int, cols: int) -> list[list[int]]:
    """Opacity of the attention canvas at the centre of each patch cell (0 = nothing drawn there)."""
    return driver.execute_script(  # one readback of the whole canvas (many small ones make Chrome warn)
        """const c = document.querySelector('[data-testid="attention-map"]'); const [rows, cols] = arguments;
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const out = [];
           for (let r = 0; r < rows; r++) { const row = [];
             for (let k = 0; k < cols; k++) {
               const x = Math.floor((k + 0.5) * c.width / cols), y = Math.floor((r + 0.5) * c.height / rows);
               row.push(d[4 * (y * c.width + x) + 3]); }
             out.push(row); }
           return out;""", rows, cols)


def check_against_api(driver, api: httpx.Client, image: bytes, filename: str) -> dict:
    """The label, the map and the sparsity shown equal what /classify answers for the same bytes."""
    response = api.post("/classify", files={"files": (filename, image)}, data={"top_k": "5", "explain": "true"})
    assert response.status_code == 200, response.text
    expected = response.json()["predictions"][0]
    # the page settles on the answer for its latest input (a drawing is also sent after each stroke)
    wait_for(lambda: by_testid(driver, "prediction-label").text == expected["label"]
             and driver.find_element(By.CSS_SELECTOR, ".panel").get_attribute("aria-busy") == "false",
             f"the label {expected['label']!r} that /classify gives this input")
    bars = driver.find_elements(By.CSS_SELECTOR, ".panel:first-child .bars li .bar-label")  # the default model's
    assert [b.text for b in bars] == [t["label"] for t in expected["top_k"]]
    fills = driver.execute_script(  # drawn bar length / track length, per bar
        """return [...document.querySelectorAll('.panel:first-child .bars li')].map(li =>
             li.querySelector('.bar-fill').getBoundingClientRect().width /
             li.querySelector('.bar-track').getBoundingClientRect().width);""")
    for shown, item in zip(fills, expected["top_k"]):
        assert abs(shown - item["score"]) < 0.02, (fills, expected["top_k"])

    explanation = expected["explanation"]
    rows, cols = explanation["grid"]
    alpha = attention_alpha_per_cell(driver, rows, cols)
    weights = explanation["attention"]
    flat_alpha = [a for row in alpha for a in row]
    flat_weight = [w for row in weights for w in row]
    assert max(flat_alpha) > 0, "the attention map is blank"
    assert flat_alpha.index(max(flat_alpha)) == flat_weight.index(max(flat_weight)), (alpha, weights)
    # more attention, more opaque: the map's order of cells is the API's order of weights
    order = sorted(range(len(flat_weight)), key=flat_weight.__getitem__)
    assert all(flat_alpha[a] <= flat_alpha[b] + 1 for a, b in zip(order, order[1:])), (alpha, weights)
    caption = driver.find_element(By.CSS_SELECTOR, ".sparsity")
    assert float(caption.get_attribute("data-sparsity")) == explanation["sparsity"]
    assert "sparsity" in caption.text.lower()
    assert driver.find_element(By.CSS_SELECTOR, ".panel .latency").text.endswith(("ms", "s"))
    return expected


def test_page_is_served_without_changing_the_api(server, api):
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for testid in ("image-input", "draw-canvas", "classify-button", "prediction-label", "attention-map",
                   "translate-input", "translate-button", "translate-output"):
        assert f'data-testid="{testid}"' in page.text
    for asset in ("main.js", "api.js", "heatmap.js", "playground.css", "favicon.svg"):
        assert api.get(f"/playground/{asset}").status_code == 200, asset
    missing = api.get("/no-such-endpoint")  # the API's JSON 404 is untouched by the page's routes
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    assert api.get("/playground/nope.js").json()["code"] == "not_found"
    assert "/" not in api.get("/openapi.json").json()["paths"]


def test_upload_shows_the_api_label_and_attention_map(page, api):
    sample = SAMPLES / "three-drawn.png"
    by_testid(page, "image-input").send_keys(str(sample))
    wait_classified(page)
    check_against_api(page, api, sample.read_bytes(), sample.name)
    assert sample.name in page.find_element(By.ID, "source-line").text


def drop_file(driver, name: str, data: bytes, mime: str) -> None:
    """What the browser does when a file is dropped on the drop zone (WebDriver cannot drag from the OS)."""
    driver.execute_script(
        """const [name, b64, mime] = arguments;
           const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
           const transfer = new DataTransfer();
           transfer.items.add(new File([bytes], name, {type: mime}));
           const zone = document.getElementById('drop-zone');
           for (const type of ['dragenter', 'dragover', 'drop'])
             zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));""",
        name, base64.b64encode(data).decode(), mime)


@pytest.mark.parametrize("name", ["three-drawn.png", "four-photo.jpg", "two-chalk.png", "seven-typed.png"])
def test_attention_grid_sits_where_the_server_cropped(page, api, name):
    """The map covers the square the ink-grid preprocessing maps onto the model's input: the ink's
    bounding box (the server's own normalised ink and threshold), its longest side, centred."""
    import numpy as np
    from PIL import Image

    from mmserve.checkpoints import read_config
    from mmserve.tasks.image_classification import ImagePreprocessing, image_to_grayscale, normalized_ink

    pre = ImagePreprocessing.model_validate(read_config(CLASSIFIER).preprocessing)
    sample = SAMPLES / name
    ink = normalized_ink(image_to_grayscale(Image.open(sample)), pre)
    rows = np.flatnonzero((ink > pre.ink_threshold).any(axis=1))
    cols = np.flatnonzero((ink > pre.ink_threshold).any(axis=0))
    side = max(rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0])
    centre = ((cols[0] + cols[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2)

    by_testid(page, "image-input").send_keys(str(sample))
    wait_for(lambda: name in page.find_element(By.ID, "source-line").text, "the upload to be shown")
    wait_classified(page)
    x, y, shown_side = map(float, page.find_element(By.CSS_SELECTOR, ".map-figure").get_attribute("data-region").split(","))
    tolerance = 0.06 * side
    assert abs(shown_side - side) <= tolerance, (shown_side, side)
    assert abs(x + shown_side / 2 - centre[0]) <= tolerance and abs(y + shown_side / 2 - centre[1]) <= tolerance, \
        ((x, y, shown_side), centre, side)


def test_dropped_photo_is_classified_and_a_bad_file_shows_the_api_error(page, api):
    photo = SAMPLES / "four-photo.jpg"
    drop_file(page, photo.name, photo.read_bytes(), "image/jpeg")
    wait_for(lambda: photo.name in page.find_element(By.ID, "source-line").text, "the photo to be shown")
    wait_classified(page)
    check_against_api(page, api, photo.read_bytes(), photo.name)

    not_an_image = b"this is a note, not a picture\n"
    drop_file(page, "notes.txt", not_an_image, "text/plain")
    refused = api.post("/classify", files={"files": ("notes.txt", not_an_image)}, data={"top_k": "5", "explain": "true"})
    assert refused.status_code in (400, 415, 422), refused.text
    error = by_testid(page, "classify-error")
    wait_for(lambda: error.is_displayed() and refused.json()["detail"] in error.text, "the API's error message")
    assert by_testid(page, "prediction-label").text == ""  # the photo's answer is not left beside the error
    logged = console_entries(page)  # the deliberate 4xx only, once per panel (each asks its own model)
    assert len(logged) == 2 and all("/classify" in e["message"] and str(refused.status_code) in e["message"]
                                     for e in logged), logged


def test_multimax_and_softmax_twins_side_by_side(page, api):
    """One panel per served classifier, the default (MultiMax) first: each shows its own model's label,
    bars and attention sparsity, as /classify answers with that `model`."""
    panels = page.find_elements(By.CSS_SELECTOR, ".panel")
    assert [p.get_attribute("data-model") for p in panels] == ["digits-vit", "digits-vit-softmax"]
    assert "multimax" in panels[0].text.lower() and "softmax" in panels[1].text.lower()
    sample = SAMPLES / "seven-typed.png"
    by_testid(page, "image-input").send_keys(str(sample))
    answers = {}
    for name in ("digits-vit", "digits-vit-softmax"):
        r = api.post("/classify", files={"files": (sample.name, sample.read_bytes())},
                     data={"top_k": "5", "explain": "true", "model": name})
        assert r.status_code == 200 and r.json()["model"] == name, r.text
        answers[name] = r.json()["predictions"][0]
    assert answers["digits-vit"]["explanation"]["sparsity"] != answers["digits-vit-softmax"]["explanation"]["sparsity"]
    for panel in panels:
        expected = answers[panel.get_attribute("data-model")]
        label = panel.find_element(By.CSS_SELECTOR, '[data-testid="prediction-label"]')
        wait_for(lambda: label.text == expected["label"] and panel.get_attribute("aria-busy") == "false",
                 f"{panel.get_attribute('data-model')}'s label {expected['label']!r}")
        bars = panel.find_elements(By.CSS_SELECTOR, ".bars li")
        assert [b.get_attribute("aria-label") for b in bars] == \
            [f"{t['label']}: {100 * t['score']:.1f} %" for t in expected["top_k"]]
        caption = panel.find_element(By.CSS_SELECTOR, ".sparsity")
        assert float(caption.get_attribute("data-sparsity")) == expected["explanation"]["sparsity"]
        assert panel.find_element(By.CSS_SELECTOR, '[data-testid="attention-map"]').is_displayed()


# A "7" as a person draws it: the top bar, then the long diagonal (fractions of the canvas).
SEVEN = [(0.28, 0.22), (0.5, 0.21), (0.72, 0.22), (0.6, 0.45), (0.5, 0.65), (0.42, 0.82)]


def draw(driver, points: list[tuple[float, float]], kind: str = interaction.POINTER_TOUCH) -> None:
    """One stroke through `points` with a pointer of `kind` (touch = a finger, pen, mouse)."""
    canvas = by_testid(driver, "draw-canvas")
    w, h = canvas.size["width"], canvas.size["height"]
    actions = ActionBuilder(driver, mouse=PointerInput(kind, kind))
    x0, y0 = points[0]
    actions.pointer_action.move_to(canvas, int((x0 - 0.5) * w), int((y0 - 0.5) * h)).pointer_down()
    for x, y in points[1:]:
        actions.pointer_action.move_to(canvas, int((x - 0.5) * w), int((y - 0.5) * h))
    actions.pointer_action.pointer_up()
    actions.perform()


def test_drawing_with_pointer_actions_is_classified_like_the_api(page, api):
    draw(page, SEVEN[:3], interaction.POINTER_MOUSE)  # the bar with a mouse, the diagonal with a finger
    draw(page, SEVEN[2:], interaction.POINTER_TOUCH)
    by_testid(page, "classify-button").click()
    wait_classified(page)
    drawing = page.execute_script(
        "return document.querySelector('[data-testid=\"draw-canvas\"]').toDataURL('image/png')")
    png = base64.b64decode(drawing.split(",", 1)[1])
    inked = page.execute_script(
        """const c = document.querySelector('[data-testid="draw-canvas"]');
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
           for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n / (c.width * c.height);""")
    assert inked > 0.03, f"the pointer actions left almost no ink ({inked:.3f})"
    on_stroke = page.execute_script(  # ink under the mouse's bar and under the finger's diagonal
        """const c = document.querySelector('[data-testid="draw-canvas"]');
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           return arguments[0].map(([fx, fy]) =>
             d[4 * (Math.round(fy * c.height) * c.width + Math.round(fx * c.width))] < 128);""",
        [[0.4, 0.215], [0.55, 0.55]])
    assert on_stroke == [True, True], on_stroke
    wait_for(lambda: "your drawing" in page.find_element(By.ID, "source-line").text, "the drawing to be shown")
    check_against_api(page, api, png, "drawing.png")

    page.find_element(By.ID, "clear-button").click()
    assert page.execute_script(
        """const c = document.querySelector('[data-testid="draw-canvas"]');
           return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.every(v => v === 255);""")


def test_translate_shows_the_api_result_and_its_errors(page, api):
    box = by_testid(page, "translate-input")
    box.clear()
    box.send_keys("nineteen thousand and one")
    beam = page.find_element(By.ID, "beam-size")
    beam.clear()
    beam.send_keys("3")
    by_testid(page, "translate-button").click()
    expected = api.post("/translate", json={"texts": ["nineteen thousand and one"], "beam_size": 3}).json()
    translation = expected["translations"][0]
    wait_for(lambda: by_testid(page, "translate-output").text == translation["text"], "the translation")
    meta = page.find_element(By.ID, "translate-meta").text
    assert f"{translation['score']:.4f}" in meta and "ms" in meta

    box.clear()
    box.send_keys("hello world" + Keys.ENTER)  # Enter submits: the form works from the keyboard
    refused = api.post("/translate", json={"texts": ["hello world"], "beam_size": 3})
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    error = by_testid(page, "translate-error")
    wait_for(lambda: error.is_displayed() and detail in error.text, "the API's error message")
    assert by_testid(page, "translate-output").text == ""
    # the deliberate 422 is the one thing the console may show; the page itself logs nothing
    logged = console_entries(page)
    assert len(logged) == 1 and "/translate" in logged[0]["message"] and "422" in logged[0]["message"], logged


def test_keyboard_reaches_every_control(page):
    reached = []
    # a freshly loaded page has nothing focused: Tab starts at the top, like a keyboard user's would
    for _ in range(40):
        ActionChains(page).send_keys(Keys.TAB).perform()  # to whatever has focus, as a keyboard would
        element = page.switch_to.active_element
        reached.append(element.get_attribute("data-testid") or element.get_attribute("id"))
    for control in ("classify-button", "clear-button", "image-input", "translate-input", "beam-size",
                    "translate-button"):
        assert control in reached, (control, reached)


def screenshot(driver, name: str, width: int, height: int, mobile: bool) -> Path:
    """Full-page PNG at a device width (Chrome DevTools device emulation)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
    try:
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow} px at {width} px wide"
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    SHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SHOT_DIR / name
    path.write_bytes(base64.b64decode(shot["data"]))
    if os.environ.get("MMSERVE_UPDATE_SCREENSHOTS") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(path, REPO / "docs" / name)
    return path


def test_screenshots_desktop_and_phone(page, api):
    draw(page, SEVEN, interaction.POINTER_PEN)
    wait_for(lambda: "your drawing" in page.find_element(By.ID, "source-line").text, "the drawing to be shown")
    wait_classified(page)
    by_testid(page, "translate-button").click()
    wait_for(lambda: by_testid(page, "translate-output").text, "the translation")
    ActionChains(page).move_to_element(page.find_element(By.TAG_NAME, "h1")).perform()  # no hover state
    for name, width, height, mobile in (("playground.png", 1280, 900, False),
                                        ("playground-phone.png", 390, 844, True)):
        path = screenshot(page, name, width, height, mobile)
        assert path.stat().st_size > 10_000


def test_api_key_from_settings_unlocks_a_protected_server(browser):
    """With MMSERVE_API_KEY the API refuses the page until the key is given in Settings; the page shows
    the refusal as the API words it, then works with the key."""
    protected = ServerProcess(["--classifier", str(CLASSIFIER), "--backend", "torch"],
                              env={"MMSERVE_API_KEY": "playground-test-key"})
    try:
        console_entries(browser)
        browser.get(protected.url + "/")
        wait_for(lambda: browser.execute_script("return document.body.dataset.ready === 'true'"), "the page")
        refusal = httpx.get(protected.url + "/v1/models").json()["detail"]
        assert refusal in browser.find_element(By.ID, "model-list").text
        browser.find_element(By.CSS_SELECTOR, ".settings summary").click()
        browser.find_element(By.ID, "api-key").send_keys("playground-test-key" + Keys.ENTER)
        wait_for(lambda: "digits-vit" in browser.find_element(By.ID, "model-list").text, "the models with the key")
        sample = SAMPLES / "two-chalk.png"
        by_testid(browser, "image-input").send_keys(str(sample))
        label = wait_classified(browser)
        expected = httpx.post(protected.url + "/classify", files={"files": (sample.name, sample.read_bytes())},
                              headers={"Authorization": "Bearer playground-test-key"}).json()
        assert label == expected["predictions"][0]["label"]
        logged = console_entries(browser)  # the one refused /v1/models call before the key
        assert len(logged) == 1 and "/v1/models" in logged[0]["message"] and "401" in logged[0]["message"], logged
    finally:
        browser.execute_script("sessionStorage.clear()")
        assert protected.stop(), protected.output()
