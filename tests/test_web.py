"""The web page at ``/`` in a real browser: headless Chromium driven by Playwright, against the session's Serve.

The browser is Debian's ``chromium`` package (Playwright's own browser download is not used): ``.ci/run``
installs it; elsewhere set ``IMGVERIFY_CHROMIUM`` to a Chromium or Chrome binary. One browser for the whole
module, a fresh context (no shared cookies or cache) per test.

Every check compares what the page shows with what the JSON API answers for the same bytes.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.serve

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("IMGVERIFY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Written when missing or when IMGVERIFY_SCREENSHOT=1, so that ordinary runs leave the committed one alone.
SCREENSHOT = REPO / "docs" / "screenshot.png"
SCREENSHOT_MAX_BYTES = 300 * 1024
TIMEOUT_MS = 180_000  # two shared CPU cores: a first verdict can take a while

CAMERA_PHOTO = ("camera-models", "real", "Canon_EOS_7D.jpg")
AI_IMAGE = ("c2pa", "ai", "DALL-E_cloud_surfing_puppy.webp")  # Content Credentials declare DALL-E


@dataclass
class Tab:
    """A page and every console error or uncaught exception it produced."""

    page: object  # playwright.sync_api.Page
    errors: list[str] = field(default_factory=list)

    def open(self, url: str) -> None:
        self.page.goto(url)
        # /v1/config (limits, URL input) and /v1/detectors (feature meanings) have arrived.
        self.page.wait_for_selector("body[data-ready='true'][data-specs='true']", state="attached")

    def assert_no_console_errors(self, allowed: str | None = None) -> None:
        """No console error, no uncaught exception, no CSP violation; ``allowed`` is a regex of ones a test provoked."""
        unexpected = [e for e in self.errors if not (allowed and re.search(allowed, e))]
        assert unexpected == [], unexpected


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (Debian/Ubuntu), or set IMGVERIFY_CHROMIUM "
            "to a Chromium or Chrome binary"
        )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def tab(browser, serve_url) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    tab = Tab(page)
    page.on("console", lambda message: message.type == "error" and tab.errors.append(message.text))
    page.on("pageerror", lambda error: tab.errors.append(f"uncaught: {error}"))
    yield tab
    context.close()


@pytest.fixture(scope="module")
def client(serve_url):
    with httpx.Client(base_url=serve_url, timeout=300) as http:
        yield http


def api_detect(client: httpx.Client, data: bytes) -> dict:
    return client.post("/v1/detect", files={"file": ("upload", data)}).json()


def upload(tab: Tab, files: list[tuple[str, bytes]]) -> None:
    """What the file picker does: hand files to the page's <input type=file>."""
    payloads = [{"name": name, "mimeType": "application/octet-stream", "buffer": data} for name, data in files]
    tab.page.set_input_files("#file-input", payloads)


# Drag-and-drop and paste hand the page a DataTransfer holding the file, as the browser would.
DISPATCH_FILE = """([how, name, b64]) => {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name));
    if (how === "drop") {
        document.getElementById("dropzone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    } else {
        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true}));
    }
}"""


def hand_over(tab: Tab, how: str, name: str, data: bytes) -> None:
    """Drop (``how="drop"``) or paste (``how="paste"``) one file into the page."""
    tab.page.evaluate(DISPATCH_FILE, [how, name, base64.b64encode(data).decode()])


def wait_for_verdict(tab: Tab, name: str) -> None:
    tab.page.wait_for_function(
        "name => !document.getElementById('result').hidden && "
        "document.getElementById('result-source').textContent === name",
        arg=name,
    )


# ---- the page as served ----------------------------------------------------------------------------
def test_page_is_served_with_a_strict_csp_and_no_outside_resources(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    for directive in ("script-src 'self'", "style-src 'self'", "img-src 'self' data: blob:", "connect-src 'self'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    # No CDN, no web font, no inline script or style: every script and stylesheet is one of ours.
    assert re.findall(r"<script[^>]*>", response.text) == ['<script src="static/app.js" defer>']
    assert "<style" not in response.text and " style=" not in response.text
    for name in ("app.js", "style.css"):
        text = client.get(f"/static/{name}").text
        assert not re.search(r"(src|href|url|import)\W+https?://", text), name
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text, name
    assert client.get("/static/../app.py").status_code == 404 and client.get("/static/index.txt").status_code == 404
    config = client.get("/v1/config").json()
    assert config["input"]["allow_url"] is False and config["input"]["max_batch_files"] >= 3
    assert config["heatmaps"] == ["forensics"] and len(config["fusion"]["uncertain_range"]) == 2


def test_url_field_appears_only_where_url_input_is_allowed(tab, serve_url):
    tab.open(f"{serve_url}/")
    assert tab.page.is_hidden("#url-form")
    # The /faulty test application allows URL input; its page (under a route prefix) offers the field, and a
    # refused address comes back as a readable error with its code.
    tab.open(f"{serve_url}/faulty/")
    assert tab.page.is_visible("#url-form")
    tab.page.fill("#url-input", "http://10.0.0.1/photo.jpg")
    tab.page.click("#url-form button[type=submit]")
    tab.page.wait_for_selector("#error:not([hidden])")
    assert tab.page.text_content("#error-code") == "url_address_refused"
    tab.assert_no_console_errors(allowed=r"Failed to load resource: the server responded with a status of 4\d\d")


# ---- one image at a time ------------------------------------------------------------------------------
@pytest.mark.parametrize("parts", [CAMERA_PHOTO, AI_IMAGE], ids=["camera", "ai"])
def test_one_image_shows_the_same_verdict_as_the_api(tab, client, serve_url, fixtures, parts, tmp_path):
    data = fixtures.joinpath(*parts).read_bytes()
    expected = api_detect(client, data)
    tab.open(f"{serve_url}/")
    upload(tab, [(parts[-1], data)])
    wait_for_verdict(tab, parts[-1])
    page = tab.page

    assert page.text_content("#verdict-label") == expected["label"]
    assert page.text_content("#verdict-prob") == f"{expected['fusion_prob']:.3f}"
    assert page.is_visible("#verdict-uncertain") == expected["uncertain"]
    assert page.text_content("#verdict-threshold") == f"{expected['threshold']:.3f}"
    # The plain sentence first, above the label and larger than the reasons; "Why" lists the rest.
    summary = page.locator("#verdict-summary")
    assert summary.text_content() == expected["reasoning"][0]
    if parts == AI_IMAGE:
        assert summary.text_content().startswith(
            "Made by a generator: the file carries a signed C2PA claim from OpenAI"
        )
    else:
        assert summary.text_content().startswith(
            "Uncertain: " if expected["uncertain"] else "Looks like a camera photo"
        )
    assert summary.bounding_box()["y"] < page.locator("#verdict-label").bounding_box()["y"]
    font_px = "(e) => parseFloat(getComputedStyle(e).fontSize)"
    assert summary.evaluate(font_px) > page.locator("#reasoning li").first.evaluate(font_px)
    assert page.locator("#reasoning li").all_text_contents() == expected["reasoning"][1:]
    decided = page.text_content("#decided-by")
    if expected["decided_by"] == "hard_evidence":  # the DALL-E file: its C2PA manifest decides
        c2pa = expected["details"]["provenance"]["provenance"]["c2pa"]
        signer = (expected.get("provenance") or {}).get("signer") or c2pa["signer"]  # the summary, when present
        assert decided.startswith(f"Decided by Content Credentials signed by {signer}")
    else:
        assert decided.startswith("Decided by the fusion model")
    # Every detector has a row with its status, and its features with their meaning.
    for name, report in expected["detectors"].items():
        row = page.locator(f"details.detector[data-detector='{name}']")
        assert row.locator(".badge").text_content() == report["status"]
        row.locator("summary").click()
        assert row.locator("table.features tbody tr").count() >= 1
    assert expected["image"]["sha256"] in page.text_content("#image-info")
    provenance = page.text_content("#provenance")
    if parts == AI_IMAGE:
        assert expected["label"] == "AI" and "trainedAlgorithmicMedia" in provenance
    else:
        assert "Canon EOS 7D" in provenance

    if parts == AI_IMAGE:  # the screenshot in the README: a verdict with its evidence
        page.evaluate("() => window.scrollTo(0, 0)")
        target = (
            SCREENSHOT if os.environ.get("IMGVERIFY_SCREENSHOT") or not SCREENSHOT.exists() else tmp_path / "page.png"
        )
        save_screenshot(page.screenshot(), target)
        assert target.stat().st_size < SCREENSHOT_MAX_BYTES

    # Phone width: nothing wider than the screen.
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    tab.assert_no_console_errors()


def test_heatmap_is_fetched_on_request_and_overlays_the_image(tab, client, serve_url, fixtures):
    data = fixtures.joinpath(*CAMERA_PHOTO).read_bytes()
    asked_for_artifacts = []
    tab.page.on("request", lambda r: "artifacts=true" in r.url and asked_for_artifacts.append(r.url))
    tab.open(f"{serve_url}/")
    hand_over(tab, "paste", CAMERA_PHOTO[-1], data)  # pasted from the clipboard
    wait_for_verdict(tab, CAMERA_PHOTO[-1])
    assert asked_for_artifacts == [] and tab.page.is_hidden("#image-overlay")

    tab.page.click("#heatmap-load")
    overlay = tab.page.locator("#image-overlay")
    overlay.wait_for(state="visible")
    tab.page.wait_for_function("() => document.getElementById('image-overlay').complete")
    assert len(asked_for_artifacts) == 1
    expected = client.post("/v1/detect", files={"file": ("a.jpg", data)}, params={"artifacts": "true"}).json()
    artifact = expected["artifacts"]["ela_heatmap"]
    natural = tab.page.evaluate(
        "() => ['image-overlay', 'image-base'].map(id => document.getElementById(id))"
        ".map(i => [i.naturalWidth, i.naturalHeight])"
    )
    assert natural == [[artifact["width"], artifact["height"]], [600, 900]]
    # Drawn exactly over the photo.
    base_box, overlay_box = tab.page.locator("#image-base").bounding_box(), overlay.bounding_box()
    assert overlay_box == pytest.approx(base_box, abs=1)
    tab.page.fill("#heatmap-opacity", "30")
    assert overlay.evaluate("img => img.style.opacity") == "0.3"
    tab.page.check("#heatmap-none")
    assert tab.page.is_hidden("#image-overlay")
    tab.page.check("#heatmap-ela_heatmap")
    assert tab.page.is_visible("#image-overlay")

    tab.assert_no_console_errors()


def save_screenshot(png: bytes, path: Path) -> None:
    """A palette PNG (256 colours): a few hundred KB of photo become well under the README budget."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)


def test_a_non_image_shows_the_service_error_with_its_code(tab, client, serve_url):
    data = b"these are notes, not an image\n" * 20
    expected = client.post("/v1/detect", files={"file": ("notes.txt", data)})
    assert expected.status_code == 415
    tab.open(f"{serve_url}/")
    hand_over(tab, "drop", "notes.txt", data)  # dragged onto the drop zone
    tab.page.wait_for_selector("#error:not([hidden])")
    assert tab.page.text_content("#error-code") == expected.json()["error"] == "not_an_image"
    assert tab.page.text_content("#error-detail") == expected.json()["detail"]
    assert "415" in tab.page.text_content("#error-status") and tab.page.is_hidden("#result")
    tab.assert_no_console_errors(allowed=r"Failed to load resource: the server responded with a status of 415")


# ---- several files -------------------------------------------------------------------------------------
def test_batch_of_three_with_a_corrupt_file(tab, client, serve_url, fixtures):
    photo = fixtures.joinpath(*CAMERA_PHOTO).read_bytes()
    files = [
        ("photo.jpg", photo),
        ("corrupt.jpg", photo[: len(photo) // 3]),  # a real JPEG cut short
        ("dalle.webp", fixtures.joinpath(*AI_IMAGE).read_bytes()),
    ]
    expected = client.post("/v1/detect/batch", files=[("files", f) for f in files]).json()["results"]
    assert "error" in expected[1] and "label" not in expected[1]
    tab.open(f"{serve_url}/")
    upload(tab, files)
    page = tab.page
    page.wait_for_selector("#batch:not([hidden])")
    # Wait for each row to hold a verdict or an error. (Functions, not expressions: the page's CSP forbids eval.)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#batch-body tr')]"
        ".filter(r => r.querySelector('td.label').textContent !== 'checking ...').length === 3"
    )

    rows = page.locator("#batch-body tr")
    assert [rows.nth(i).get_attribute("data-filename") for i in range(3)] == [name for name, _ in files]
    for i, result in enumerate(expected):
        cells = rows.nth(i)
        if "error" in result:
            assert cells.locator("td.row-error code").text_content() == result["error"]
            assert cells.locator("td.label").text_content() == ""
        else:
            assert cells.locator("td.label").text_content() == result["label"]
            assert cells.locator("td.prob").text_content() == f"{result['fusion_prob']:.3f}"
            assert cells.locator("td.uncertain").text_content() == ("yes" if result["uncertain"] else "no")
            assert cells.locator("img.thumb").get_attribute("src").startswith("blob:")

    # Sorted by P(AI), highest first (the corrupt file, without one, last); the header says so.
    page.click("button.sort[data-key='fusion_prob']")
    page.click("button.sort[data-key='fusion_prob']")
    by_prob = sorted(range(3), key=lambda i: -expected[i].get("fusion_prob", -1))
    assert [rows.nth(i).get_attribute("data-filename") for i in range(3)] == [files[i][0] for i in by_prob]
    assert page.get_attribute("th:has(button[data-key='fusion_prob'])", "aria-sort") == "descending"

    with page.expect_download() as download:
        page.click("#download-csv")
    records = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [r["filename"] for r in records] == [name for name, _ in files]
    assert records[1]["error"] == expected[1]["error"] and records[0]["label"] == expected[0]["label"]
    with page.expect_download() as download:
        page.click("#download-json")
    saved = json.loads(Path(download.value.path()).read_text())
    assert [r.get("fusion_prob") for r in saved] == [r.get("fusion_prob") for r in expected]

    # A row's details open the full verdict of that file.
    rows.nth(0).locator("button:has-text('Details')").click()
    wait_for_verdict(tab, rows.nth(0).get_attribute("data-filename"))
    tab.assert_no_console_errors()
