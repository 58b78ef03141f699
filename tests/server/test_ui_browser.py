"""The teaching page in a real browser: Debian's Chromium driven by Playwright against a real server.

Strokes are drawn with the mouse on the canvas (pointer events, as a pen or a finger would). The
page's screenshots go to ``artifacts/ui/`` (git-ignored); docs/images/ holds copies for the README.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from testkit import REPO, ServerProcess, running_server

playwright_api = pytest.importorskip("playwright.sync_api")

SCREENSHOTS = REPO / "artifacts" / "ui"
Stroke = list[tuple[float, float]]  # points in [0, 1] of the canvas


def chromium() -> str:
    """Debian's Chromium, installed with apt-get when missing (CI runs as root on a fresh machine)."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
            subprocess.run(install, env=env, capture_output=True, check=True)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser, server: ServerProcess) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()


def circle(cx: float = 0.5, cy: float = 0.5, r: float = 0.35) -> list[Stroke]:
    angles = [2 * math.pi * i / 40 for i in range(41)]
    return [[(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]]


def cross(shift: float = 0.0, size: float = 0.6) -> list[Stroke]:
    a, b = 0.2 + shift, 0.2 + shift + size
    return [[(a, 0.2), (b, 0.2 + size)], [(b, 0.2), (a, 0.2 + size)]]


def triangle() -> list[Stroke]:
    return [[(0.5, 0.15), (0.85, 0.8), (0.15, 0.8), (0.5, 0.15)]]


def letter_e() -> list[Stroke]:
    return [[(0.75, 0.2), (0.3, 0.2), (0.3, 0.8), (0.75, 0.8)], [(0.3, 0.5), (0.65, 0.5)]]


def draw(page, strokes: list[Stroke]) -> None:
    """Draw on the canvas with the mouse, stroke by stroke."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        points = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for point in points[1:]:
            page.mouse.move(*point, steps=4)
        page.mouse.up()


def teach(page, label: str, strokes: list[Stroke]) -> None:
    count = page.locator("#concepts li[data-label]").count()
    draw(page, strokes)
    page.fill("#label", label)
    page.click("#teach")
    page.locator(f'#concepts li[data-label="{label}"]').wait_for()
    assert page.locator("#concepts li[data-label]").count() in (count, count + 1)


def classify(page, strokes: list[Stroke]) -> str:
    page.click("#clear")
    draw(page, strokes)
    page.click("#classify")
    page.locator("#result .answer").first.wait_for()
    return page.locator("#result .answer").first.inner_text()


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def test_teach_classify_forget_and_none_of_these(page, server: ServerProcess) -> None:
    page.goto(server.url + "/")  # leads to /ui/
    assert page.url.endswith("/ui/")
    page.fill("#new-task", "browser-shapes")
    page.click("#new-task-form button")
    for label, strokes in [("circle", circle()), ("cross", cross()), ("triangle", triangle())]:
        teach(page, label, strokes)
    assert page.locator("#concepts li[data-label]").count() == 3
    assert page.locator('#concepts li[data-label="cross"] .count').inner_text() == "1 example"
    assert page.locator("#key-button").is_hidden()  # this server asks for no key

    # A fourth drawing, smaller and shifted: the right concept comes back, with top-k scores.
    assert classify(page, cross(shift=0.05, size=0.5)) == "cross"
    assert page.locator("#result .topk li").count() == 3
    screenshot(page, "desktop.png")

    # A drawing unlike any concept of the task: "None of these", with the nearest concepts named but
    # no scores (they assume the drawing is one of the concepts: no confidence for one that is not).
    assert classify(page, letter_e()) == "None of these"
    assert "unlike every concept" in page.locator("#result .hint").first.inner_text()
    guesses = page.locator("#result .topk.guesses li")
    assert guesses.count() == 3 and page.locator("#result .topk .bar").count() == 0
    assert "%" not in page.locator("#result .topk").inner_text()
    screenshot(page, "none-of-these.png")

    # Forget a concept: it leaves the list, and the task keeps the others after a reload.
    page.click('#concepts li[data-label="triangle"] button.forget')
    page.locator('#concepts li[data-label="triangle"]').wait_for(state="detached")
    page.reload()
    page.locator('#concepts li[data-label="circle"]').wait_for()
    assert page.locator("#concepts li[data-label]").count() == 2
    assert page.locator("#task-select").input_value() == "browser-shapes"

    # Phone width: everything in one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert classify(page, cross(shift=-0.05, size=0.55)) == "cross"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "phone.png")


def test_upload_image_file_and_delete_task(page, server: ServerProcess, tmp_path: Path) -> None:
    page.goto(server.url + "/ui/")
    page.fill("#new-task", "browser-upload")
    page.click("#new-task-form button")
    teach(page, "circle", circle())
    teach(page, "cross", cross())
    # Dark ink on white, any size: the server normalizes polarity and size.
    image = Image.new("RGB", (300, 300), "white")
    ImageDraw.Draw(image).ellipse((60, 60, 240, 240), outline="black", width=12)
    path = tmp_path / "ring.png"
    image.save(path)
    page.set_input_files("#upload", str(path))
    page.locator("#pending-images img").wait_for()
    page.click("#classify")
    page.locator("#result .answer").first.wait_for()
    assert page.locator("#result .answer").first.inner_text() == "circle"

    page.click("#delete-task")
    page.locator("#status.info", has_text='Deleted task "browser-upload"').wait_for()
    assert "browser-upload" not in page.locator("#task-select").inner_text()


def test_download_and_upload_a_task(page, server: ServerProcess, tmp_path: Path) -> None:
    page.goto(server.url + "/ui/")
    page.fill("#new-task", "browser-move")
    page.click("#new-task-form button")
    teach(page, "circle", circle())
    teach(page, "cross", cross())
    with page.expect_download() as download:
        page.click("#export-task")
    assert download.value.suggested_filename == "browser-move.metanet.json"
    path = tmp_path / "moved.json"
    download.value.save_as(path)
    assert [e["label"] for e in json.loads(path.read_text())["examples"]] == ["circle", "cross"]

    page.fill("#new-task", "browser-moved")  # the upload's task id; the file's own when left empty
    page.set_input_files("#import-task", str(path))
    page.locator("#status.info", has_text='as task "browser-moved": 2 examples').wait_for()
    assert page.locator("#task-select").input_value() == "browser-moved"
    page.locator('#concepts li[data-label="cross"]').wait_for()
    assert classify(page, cross(shift=0.05, size=0.5)) == "cross"
    page.set_input_files("#import-task", str(path))  # again: the task exists now
    page.locator("#status", has_text="exists").wait_for()


def test_errors_are_shown_in_words(page, server: ServerProcess) -> None:
    page.goto(server.url + "/ui/")
    page.fill("#new-task", "browser-empty")
    page.click("#new-task-form button")
    page.click("#classify")
    page.locator("#status", has_text="This task has no concepts yet").wait_for()
    page.fill("#label", "nothing")
    page.click("#teach")
    page.locator("#status", has_text="Draw a symbol first").wait_for()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"METANET_API_KEYS": "acme:secret-key"}
    with running_server(tmp_path_factory.mktemp("keyed") / "data", env=env) as process:
        yield process


def test_api_key_is_asked_once_and_kept_for_the_tab(browser, keyed_server: ServerProcess) -> None:
    context = browser.new_context()
    page = context.new_page()
    with contextlib.ExitStack() as stack:
        stack.callback(context.close)
        page.goto(keyed_server.url + "/ui/")
        page.locator("#key-button").wait_for()  # shown where the server asks for keys
        page.locator("#key-form").wait_for()  # the server answered 401: the page asks for a key
        page.locator("#status", has_text="needs an API key").wait_for()
        page.fill("#api-key", "secret-key")
        page.click("#key-form button[type=submit]")
        page.locator("#status.info", has_text="Key accepted").wait_for()
        teach(page, "circle", circle())
        page.reload()  # the key stays in this tab's session storage
        page.locator('#concepts li[data-label="circle"]').wait_for()
        assert page.evaluate("sessionStorage.getItem('metanet-api-key')") == "secret-key"


def test_drawing_is_sent_as_an_omniglot_like_image(page, server: ServerProcess) -> None:
    """The canvas export: 105x105, dark strokes on white, the drawing centred at about half the size."""
    page.goto(server.url + "/ui/")
    draw(page, cross())
    data_url = page.evaluate("drawingPng()")
    pixels = Image.open(io.BytesIO(base64.b64decode(data_url.partition(",")[2]))).convert("L")
    assert pixels.size == (105, 105)
    ink = [(x, y) for y in range(105) for x in range(105) if pixels.getpixel((x, y)) < 128]
    xs, ys = [x for x, _ in ink], [y for _, y in ink]
    assert 45 <= max(xs) - min(xs) <= 62 and 45 <= max(ys) - min(ys) <= 62
    assert abs((max(xs) + min(xs)) / 2 - 52) <= 3 and abs((max(ys) + min(ys)) / 2 - 52) <= 3
