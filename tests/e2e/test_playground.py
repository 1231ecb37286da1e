"""The playground page (GET /) in a real headless Chromium (Debian's `chromium` and
`chromium-driver`, driven by selenium): upload real photos, wait for the drawing, check the
DOM and the canvas pixels against the JSON the page received, and keep a screenshot of each
task under artifacts/ (playground-<task>.png).

The answers come from the default models (scripts/recipes/build_models.py); the API-key flow runs
over the tiny test classifier.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.masks import decode_rle
from tests.support.app import ROOT, serve, start_server
from tests.support.images import encode, noise_image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = ROOT / "artifacts"
APP_JS = (ROOT / "service" / "static" / "app.js").read_text()
PALETTE = [
    tuple(int(h[i : i + 2], 16) for i in (1, 3, 5))
    for h in re.findall(r'"(#[0-9a-f]{6})"', APP_JS.split("const PALETTE = [")[1].split("]")[0])
]
MASK_ALPHA = 130 / 255  # app.js: overlay.data.set([r, g, b, 130], ...)
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
SHAPES = {"circle", "square", "triangle", "star"}

# Reads pixels of the slot-th result canvas and of the same upload drawn alone at the same
# size, so a test can tell exactly what the page painted over the photo.
PIXELS_JS = """
const [points, slot, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const canvas = document.querySelectorAll('#canvases canvas')[slot];
const file = window.playground.state.files[slot === 0 ? 'a' : 'b'];
createImageBitmap(file, {imageOrientation: 'from-image'}).then((bitmap) => {
  const plain = document.createElement('canvas');
  plain.width = canvas.width;
  plain.height = canvas.height;
  const p = plain.getContext('2d');
  p.drawImage(bitmap, 0, 0, plain.width, plain.height);
  const c = canvas.getContext('2d');
  done(points.map(([x, y]) => [Array.from(p.getImageData(x, y, 1, 1).data).slice(0, 3),
                                 Array.from(c.getImageData(x, y, 1, 1).data).slice(0, 3)]));
}).catch((err) => done(String(err)));
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("headless Chromium missing: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
        "--window-size=1280,1000", "--force-device-scale-factor=1", "--lang=en-US",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def real_server(default_models: Path) -> Iterator[str]:
    yield from start_server(default_models)  # with its own gallery database (start_server)


@pytest.fixture(scope="module")
def shapes_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A held-out image of the default segmenter's shapes dataset, with several objects."""
    from scripts.recipes.shapes import make_split, splits

    out = tmp_path_factory.mktemp("shapes")
    coco = json.loads(make_split(out, splits(0, 6, seed=7)[1]).read_text())
    per_image = [
        sum(a["image_id"] == im["id"] for a in coco["annotations"]) for im in coco["images"]
    ]
    best = coco["images"][int(np.argmax(per_image))]
    assert max(per_image) >= 2, per_image
    return out / "val" / "images" / best["file_name"]


# ---- driving the page ----------------------------------------------------------------


def open_page(browser: Any, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    WebDriverWait(browser, 15).until(
        lambda d: d.find_element("id", "status").get_attribute("data-state") != "loading"
    )


def set_field(browser: Any, field: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    element = browser.find_element("id", field)
    if element.tag_name == "select":
        Select(element).select_by_value(value)
    else:
        element.clear()
        element.send_keys(value)


def run_task(
    browser: Any, url: str, task: str, photos: list[Path], **fields: str
) -> dict[str, Any]:
    """Pick the task, upload, set fields, press Run; -> the JSON the page drew."""
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, url)
    browser.find_element("css selector", f"input[name=task][value='{task}']").click()
    for slot, photo in zip("ab", photos, strict=False):
        browser.find_element("id", f"file-{slot}").send_keys(str(photo))
    for field, value in fields.items():
        set_field(browser, field, value)
    WebDriverWait(browser, 15).until(lambda d: d.find_element("id", "run").is_enabled())
    browser.find_element("id", "run").click()
    result = browser.find_element("id", "result")
    WebDriverWait(browser, 30).until(
        lambda d: result.get_attribute("data-state") in ("done", "error")
    )
    assert result.get_attribute("data-state") == "done", browser.find_element("id", "error").text
    assert result.get_attribute("data-task") == task
    body: dict[str, Any] = browser.execute_script("return window.playground.lastResult.body")
    return body


def items(browser: Any) -> list[Any]:
    return list(browser.find_elements("css selector", "#items li"))


def canvas_scale(browser: Any, image_width: int, slot: int = 0) -> float:
    width = browser.execute_script(
        "return document.querySelectorAll('#canvases canvas')[arguments[0]].width", slot
    )
    return float(width) / image_width


def pixels(browser: Any, points: list[tuple[int, int]], slot: int = 0) -> list[tuple[Any, Any]]:
    """-> [(photo alone RGB, page's canvas RGB)] at canvas pixel coordinates."""
    found = browser.execute_async_script(PIXELS_JS, [list(p) for p in points], slot)
    assert isinstance(found, list), found
    return [(np.array(a, float), np.array(b, float)) for a, b in found]


def screenshot(browser: Any, name: str) -> Path:
    """The whole page, not just the first screenful (Chrome DevTools beyond the viewport)."""
    ARTIFACTS.mkdir(exist_ok=True)
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path = ARTIFACTS / f"playground-{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    with Image.open(path) as img:
        assert img.width >= 1000 and len(np.unique(np.asarray(img.convert("L")))) > 50
    return path


# ---- without a browser ---------------------------------------------------------------


def test_page_is_one_self_contained_document(tiny_classifier_dir: Path):
    """No CDN, no second request: CSS and JS are inlined, and / stays open under API keys."""
    with serve(tiny_classifier_dir, api_keys=["k-1"]) as client:
        r = client.get("/")
        assert client.get("/v1/models").status_code == 401
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "<style>" in page and "rleCounts" in page and "static/app" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "external resource"
    assert "x-api-key" in page.lower() and "localStorage" in page


# ---- in Chromium, over the default models --------------------------------------------


@pytest.mark.real_weights
def test_classify_lists_and_draws_the_labels(browser, real_server, tmp_path):
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(skimage.data.chelsea()).save(photo, quality=92)
    body = run_task(browser, real_server, "classify", [photo], top_k="3")

    assert len(body["predictions"]) == 3 and body["predictions"][0]["label"] in CAT_CLASSES
    shown = [(li.get_attribute("data-label"), li.text) for li in items(browser)]
    assert shown == [
        (p["label"], f"{p['label']} {100 * p['score']:.1f}%") for p in body["predictions"]
    ]
    # the first score bar on the canvas, left of its text, is painted in the first colour
    font = max(12, round(max(body["image"]["width"], body["image"]["height"]) / 40))
    ((_, painted),) = pixels(browser, [(1, font // 4 + 2)])
    assert np.abs(painted - PALETTE[0]).max() <= 2, painted
    screenshot(browser, "classify")


@pytest.mark.real_weights
def test_detect_draws_a_box_per_detection(browser, real_server, testdata):
    photo = testdata / "dog.jpg"
    body = run_task(browser, real_server, "detect", [photo], score_threshold="0.3")

    direct = httpx.post(
        f"{real_server}/detect", params={"score_threshold": 0.3},
        files={"image": ("dog.jpg", photo.read_bytes())}, timeout=30,
    ).json()  # fmt: skip
    assert body["detections"] == direct["detections"]  # the page sent the threshold
    labels = [d["label"] for d in body["detections"]]
    assert {"dog", "bicycle", "car"} <= set(labels)
    assert [li.get_attribute("data-label") for li in items(browser)] == labels
    # every box's left edge, half-way down, is stroked in its class colour
    k = canvas_scale(browser, body["image"]["width"])
    points = [(int(d["box"][0] * k), int((d["box"][1] + d["box"][3]) / 2 * k))
              for d in body["detections"]]  # fmt: skip
    on_edge = [
        np.abs(painted - PALETTE[d["class_id"] % len(PALETTE)]).max() <= 3
        for d, (_, painted) in zip(body["detections"], pixels(browser, points), strict=True)
    ]
    assert sum(on_edge) >= max(1, int(0.75 * len(on_edge))), on_edge
    screenshot(browser, "detect")


@pytest.mark.real_weights
def test_detect_with_tiles_says_how_many_ran(browser, real_server, testdata):
    photo = testdata / "kite.jpg"
    body = run_task(browser, real_server, "detect", [photo], tiling="on", tile_size="416")
    direct = httpx.post(
        f"{real_server}/detect", params={"tiling": "on", "tile_size": 416},
        files={"image": ("kite.jpg", photo.read_bytes())}, timeout=60,
    ).json()  # fmt: skip
    assert body["tiling"] == direct["tiling"] == {
        "mode": "on", "tiles": 12, "tile_size": 416, "overlap": 0.25,
    }  # fmt: skip
    assert body["detections"] == direct["detections"]
    assert "12 tiles of 416 px" in browser.find_element("id", "timing").text
    assert len(items(browser)) == len(body["detections"])
    screenshot(browser, "detect-tiles")


def overlay_samples(body: dict[str, Any], count: int) -> list[tuple[int, int, int]]:
    """(x, y, instance) pixels where the page's overlay must show that instance's colour:
    the last mask drawn there is its mask, all around (7x7), and no box outline or label
    tag is painted over it."""
    height, width = body["image"]["height"], body["image"]["width"]
    owner = np.full((height, width), -1)
    for i, inst in enumerate(body["instances"]):  # later masks paint over earlier ones
        owner[decode_rle(inst["mask"])] = i
    clear = owner >= 0
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            clear &= np.roll(np.roll(owner, dy, 0), dx, 1) == owner
    font = max(12, round(max(width, height) / 40))
    for inst in body["instances"]:
        x1, y1, x2, y2 = (round(v) for v in inst["box"])
        for x in (x1, x2):
            clear[max(0, y1 - 4) : y2 + 5, max(0, x - 4) : x + 5] = False
        for y in (y1, y2):
            clear[max(0, y - 4) : y + 5, max(0, x1 - 4) : x2 + 5] = False
        clear[max(0, y1 - 2 * font) : y1 + 2 * font, max(0, x1 - 4) : x1 + 15 * font] = False
    ys, xs = np.nonzero(clear)
    assert len(xs), "no overlay pixel free of boxes and tags to sample"
    pick = np.random.default_rng(0).choice(len(xs), size=min(count, len(xs)), replace=False)
    return [(int(xs[p]), int(ys[p]), int(owner[ys[p], xs[p]])) for p in pick]


@pytest.mark.real_weights
@pytest.mark.parametrize("mask_format", ["rle", "polygon", "png"])
def test_segment_overlays_translucent_masks(browser, real_server, shapes_photo, mask_format):
    body = run_task(
        browser, real_server, "segment", [shapes_photo], mask_format=mask_format,
        max_detections="5",
    )  # fmt: skip

    instances = body["instances"]
    assert instances and {i["label"] for i in instances} <= SHAPES
    assert all(i["mask"]["format"] == mask_format for i in instances)
    # the page decoded each mask to the pixel count the server measured
    for li, inst in zip(items(browser), instances, strict=True):
        decoded, area = int(li.get_attribute("data-decoded-area")), inst["area"]
        tolerance = 0.04 * area if mask_format == "polygon" else 0  # canvas anti-aliasing
        assert abs(decoded - area) <= tolerance, (mask_format, decoded, area)
    if mask_format != "rle":
        screenshot(browser, f"segment-{mask_format}")
        return
    # inside each mask the photo shows through the instance's colour at the overlay's alpha
    samples = overlay_samples(body, 60)
    k = canvas_scale(browser, body["image"]["width"])
    found = pixels(browser, [(int(x * k), int(y * k)) for x, y, _ in samples])
    blended = [
        np.abs(
            painted - ((1 - MASK_ALPHA) * photo + MASK_ALPHA * np.array(PALETTE[i % len(PALETTE)]))
        ).max()
        for (_, _, i), (photo, painted) in zip(samples, found, strict=True)
    ]
    assert np.mean(np.array(blended) <= 6) >= 0.9, blended
    screenshot(browser, "segment")


@pytest.mark.real_weights
def test_verify_faces_shows_the_verdict_and_landmarks(browser, real_server, testdata):
    body = run_task(
        browser, real_server, "verify-faces", [testdata / "obama.jpg", testdata / "obama2.jpg"]
    )
    verdict = browser.find_element("id", "verdict")
    assert body["verified"] is True and verdict.get_attribute("data-verified") == "true"
    assert verdict.text.startswith("Same person")
    assert f"distance {body['distance']:.3f}" in verdict.text
    assert f"similarity {body['similarity']:.3f}" in verdict.text
    assert len(browser.find_elements("css selector", "#canvases canvas")) == 2
    for slot, side in enumerate("ab"):  # the 5 landmark dots, each in its own colour
        k = canvas_scale(browser, body["images"][side]["width"], slot)
        marks = [(int(x * k), int(y * k)) for x, y in body["faces"][side]["landmarks"]]
        for i, (_, painted) in enumerate(pixels(browser, marks, slot)):
            assert np.abs(painted - PALETTE[i]).max() <= 3, (side, i, painted)
    screenshot(browser, "verify-faces")

    body = run_task(
        browser, real_server, "verify-faces", [testdata / "obama.jpg", testdata / "biden.jpg"]
    )
    assert body["verified"] is False
    assert browser.find_element("id", "verdict").text.startswith("Different people")


def enrol_on_page(browser: Any, gallery: str, subject: str, photo: Path) -> str:
    """Fill the identify tab's "Enrol a face" part and press its button; -> its message."""
    from selenium.webdriver.support.ui import WebDriverWait

    set_field(browser, "gallery", gallery)
    set_field(browser, "subject", subject)
    browser.find_element("id", "enrol-file").send_keys(str(photo))
    button = browser.find_element("id", "enrol")
    WebDriverWait(browser, 15).until(lambda d: button.is_enabled())
    button.click()
    note = browser.find_element("id", "enrol-status")
    WebDriverWait(browser, 30).until(
        lambda d: note.get_attribute("data-state") in ("done", "error")
    )
    assert note.get_attribute("data-state") == "done", note.text
    return str(note.text)


def identified(browser: Any, body: dict[str, Any]) -> list[tuple[str, str]]:
    """(subject or "unknown", colour) per listed face, after checking each face's box edge on
    the canvas is stroked in that colour."""
    shown = [(li.get_attribute("data-subject"), li.get_attribute("data-colour"))
             for li in items(browser)]  # fmt: skip
    k = canvas_scale(browser, body["image"]["width"])
    points = [(int(f["box"][0] * k) + 1, int((f["box"][1] + f["box"][3]) / 2 * k))
              for f in body["faces"]]  # fmt: skip
    for (_, hex_colour), (_, painted) in zip(shown, pixels(browser, points), strict=True):
        expected = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
        assert np.abs(painted - expected).max() <= 3, (hex_colour, painted)
    return shown


@pytest.mark.real_weights
def test_identify_enrols_and_names_each_face(browser, real_server, testdata):
    """From the page alone: enrol Obama and Biden into one gallery, Obama alone into another;
    a third photo of Obama is drawn as "obama", Biden against the Obama-only gallery as
    "unknown"; the API's errors are shown as its code and message."""
    from selenium.webdriver.support.ui import WebDriverWait

    open_page(browser, real_server)
    browser.find_element("css selector", "input[name=task][value='identify']").click()
    message = enrol_on_page(browser, "pg-office", "obama", testdata / "obama.jpg")
    assert message.startswith('Enrolled obama.jpg as "obama" in gallery "pg-office"'), message
    enrol_on_page(browser, "pg-office", "biden", testdata / "biden.jpg")
    enrol_on_page(browser, "pg-solo", "obama", testdata / "obama.jpg")
    subjects = httpx.get(f"{real_server}/v1/faces/galleries/pg-office/subjects", timeout=10)
    assert [(s["subject"], s["faces"]) for s in subjects.json()["subjects"]] == [
        ("biden", 1), ("obama", 1),
    ]  # fmt: skip

    body = run_task(browser, real_server, "identify", [testdata / "obama2.jpg"],
                    gallery="pg-office")  # fmt: skip
    assert [f["subject"] for f in body["faces"]] == ["obama"]
    assert body["enrolled_faces"] == 2 and body["faces"][0]["matches"][1]["subject"] == "biden"
    similarity = body["faces"][0]["similarity"]
    tags = browser.execute_script("return window.playground.drawnTags")
    assert tags == [f"obama {similarity:.2f}"]
    assert [s for s, _ in identified(browser, body)] == ["obama"]
    assert browser.find_element("id", "verdict").text.startswith("1 face(s): obama")
    screenshot(browser, "identify")

    body = run_task(browser, real_server, "identify", [testdata / "biden.jpg"], gallery="pg-solo")
    face = body["faces"][0]
    assert len(body["faces"]) == 1 and face["subject"] is None
    assert face["matches"][0]["subject"] == "obama" and face["similarity"] < body["threshold"]
    tags = browser.execute_script("return window.playground.drawnTags")
    assert tags == [f"unknown {face['similarity']:.2f}"]
    assert identified(browser, body) == [("unknown", "#475467")]
    assert browser.find_element("id", "verdict").text.startswith("1 face(s): 1 unknown")
    screenshot(browser, "identify-unknown")

    # an unknown gallery: the API's 404, code and message, and what to do about it
    open_page(browser, real_server)
    browser.find_element("css selector", "input[name=task][value='identify']").click()
    browser.find_element("id", "file-a").send_keys(str(testdata / "obama2.jpg"))
    set_field(browser, "gallery", "pg-nobody")
    browser.find_element("id", "run").click()
    result = browser.find_element("id", "result")
    WebDriverWait(browser, 30).until(lambda d: result.get_attribute("data-state") == "error")
    error = browser.find_element("id", "error").text
    assert error.startswith("gallery_not_found: ") and "pg-nobody" in error, error
    assert "Enrol a face into it first" in error and "(request " in error
    # a name that cannot go in a URL is refused before anything is sent
    set_field(browser, "subject", "Barack Obama")
    browser.find_element("id", "enrol-file").send_keys(str(testdata / "obama.jpg"))
    browser.find_element("id", "enrol").click()
    note = browser.find_element("id", "enrol-status")
    WebDriverWait(browser, 10).until(lambda d: note.get_attribute("data-state") == "error")
    assert note.text.startswith('Not enrolled: subject name "Barack Obama" is not URL-safe')


@pytest.mark.real_weights
def test_metrics_count_every_endpoint(real_server, testdata, shapes_photo):
    """/metrics, read with Prometheus' own parser, counts each task endpoint and batch."""
    from iis_client.client import Client

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{real_server}/metrics", timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    before = scrape()
    with Client(real_server) as iis:
        iis.classify(testdata / "dog.jpg")
        iis.detect(testdata / "dog.jpg")
        iis.segment(shapes_photo)
        iis.verify_faces(testdata / "obama.jpg", testdata / "obama2.jpg")
        iis.embed_faces(testdata / "obama.jpg")
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    for endpoint in ("/classify", "/detect", "/segment", "/verify-faces", "/faces/embed"):
        assert delta("iis_requests_total", endpoint=endpoint, status="200") == 1, endpoint
        assert delta("iis_request_duration_seconds_count", endpoint=endpoint) == 1, endpoint
    models = {k[1][0][1]: k[1] for k in after if k[0] == "iis_model_info"}
    assert set(models) >= {"mobilenet_v2-imagenet", "yolov3-tiny-coco", "yunet-2023mar",
                           "sface-2021dec", "shapes-maskrcnn-mobilenet_v2"}  # fmt: skip
    # rows run per model: one image each, two faces for verify + one for embed
    assert delta("iis_batch_size_sum", model="mobilenet_v2-imagenet") == 1
    assert delta("iis_batch_size_sum", model="yunet-2023mar") == 3
    assert delta("iis_batch_size_sum", model="sface-2021dec") == 3
    assert after[("iis_model_load_seconds", (("model", "yolov3-tiny-coco"),))] > 0


# ---- API key, over the tiny classifier -----------------------------------------------


@pytest.fixture
def keyed_server(tiny_classifier_dir: Path) -> Iterator[str]:
    yield from start_server(tiny_classifier_dir, IIS_API_KEYS="k-123")


def test_api_key_is_kept_in_the_page_and_sent(browser, keyed_server, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url = keyed_server
    photo = tmp_path / "noise.png"
    photo.write_bytes(encode(noise_image(96, 64, seed=5), "PNG"))
    open_page(browser, url)
    browser.execute_script("localStorage.clear()")
    open_page(browser, url)
    status = browser.find_element("id", "status")
    assert status.get_attribute("data-state") == "error" and "API key" in status.text

    key = browser.find_element("id", "api-key")
    key.send_keys("k-123", Keys.TAB)  # "change" fires on blur
    WebDriverWait(browser, 10).until(lambda d: status.get_attribute("data-state") == "ready")
    assert status.text == "1 models ready"
    assert browser.execute_script("return localStorage.getItem('iis-api-key')") == "k-123"

    body = run_task(browser, url, "classify", [photo], top_k="2")  # reloads the page
    assert browser.find_element("id", "api-key").get_attribute("value") == "k-123"
    assert body["model"] == "tiny-cls" and len(body["predictions"]) == 2
    expected = httpx.post(
        f"{url}/classify", params={"top_k": 2}, headers={"X-API-Key": "k-123"},
        files={"image": ("noise.png", photo.read_bytes())}, timeout=30,
    ).json()  # fmt: skip
    assert body["predictions"] == expected["predictions"]

    browser.execute_script("localStorage.setItem('iis-api-key', 'wrong')")
    open_page(browser, url)
    browser.find_element("id", "file-a").send_keys(str(photo))
    assert browser.find_element("id", "run").is_enabled() is False  # no model list
    assert "not valid" in browser.find_element("id", "status").text
    browser.execute_script("localStorage.clear()")
