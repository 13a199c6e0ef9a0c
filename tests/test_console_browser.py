"""The web console in a real browser: headless Chromium (Debian's, driven by Playwright) against one
running wanserve on loopback. Each test starts from a fresh tab, drives the page as a person would and
leaves a screenshot of every state it reaches in the module's "screenshots" folder.

The preview engine takes several seconds to render wan2.6-i2v-flash's 10-15 s at 1080P: long enough to
watch the progress bar move (through the event stream, and by polling where there is none) and to cancel
a task while it runs."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from wanserve.catalog.models import MODELS

from .conftest import Server, image_bytes, running_server

CHROMIUM = "/usr/bin/chromium"
KEY = "sk-console-browser"
MODEL = "wan2.6-i2v-flash"  # first frame, durations 2-15 s: a long task in the preview engine
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("console-data"), workers=1, bootstrap_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # A newcomer's machine may have no Chromium: the README's test command then skips these tests, saying
    # why. CI installs it and sets WANSERVE_REQUIRE_BROWSER=1, so there a missing browser fails the run.
    if not Path(CHROMIUM).exists():
        if os.environ.get("WANSERVE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} is missing and WANSERVE_REQUIRE_BROWSER=1: apt-get install -y chromium")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium to run the console's browser tests")
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium refuses to start as root (CI containers) with its sandbox on
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def page(browser: Browser, console_server: Server) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) on the console, offline: any request leaving loopback fails."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/]).*"), lambda route: route.abort())
    tab = context.new_page()
    tab.goto(console_server.base + "/")
    yield tab
    context.close()


def shot(page: Page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 0
    return path


def sign_in(page: Page, key: str = KEY) -> None:
    page.fill("#api-key", key)
    page.click("#sign-in-form button[type=submit]")


def fill_first_frame_task(page: Page, image: Path, *, duration: int = 15) -> None:
    page.select_option("#model", MODEL)
    page.fill("#f-prompt", "A lighthouse at dawn, the camera slowly pushing in")
    page.select_option("#f-duration", str(duration))
    page.uncheck("#f-audio")
    page.set_input_files("input[data-field=img_url]", str(image))


def submit_and_get_task_id(page: Page) -> str:
    page.click("#submit")
    expect(page.locator("#message")).to_contain_text("Created task", timeout=30_000)
    return re.search(r"Created task (\S+)\.", page.inner_text("#message")).group(1)


def task_status(page: Page, task_id: str) -> str:
    return page.get_attribute(f"#task-{task_id}", "data-status") or ""


@pytest.fixture
def first_frame(tmp_path: Path) -> Path:
    path = tmp_path / "first frame.png"
    path.write_bytes(image_bytes(640, 360))
    return path


def test_signing_in_with_a_key_opens_the_console_with_every_model(page: Page, screenshots: Path):
    expect(page.locator("#sign-in")).to_be_visible()
    shot(page, screenshots, "01-sign-in")
    sign_in(page)
    expect(page.locator("#console")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('wanserve.apiKey')") == KEY
    assert page.locator("#model option").all_inner_texts() == [m.name for m in MODELS]
    shot(page, screenshots, "02-signed-in")


def test_a_wrong_key_is_refused_with_the_apis_message(page: Page, console_server: Server, screenshots: Path):
    expected = httpx.get(f"{console_server.api}/tasks", headers={"Authorization": "Bearer sk-wrong"}).json()
    sign_in(page, "sk-wrong")
    expect(page.locator("#message.error")).to_have_text(expected["message"])
    expect(page.locator("#console")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('wanserve.apiKey')") is None
    shot(page, screenshots, "03-wrong-key")


def test_signing_out_forgets_the_key(page: Page, screenshots: Path):
    sign_in(page)
    expect(page.locator("#console")).to_be_visible()
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('wanserve.apiKey')") is None
    page.reload()
    expect(page.locator("#sign-in")).to_be_visible()
    shot(page, screenshots, "04-signed-out")


def test_each_models_form_offers_its_own_choices(page: Page):
    sign_in(page)
    page.select_option("#model", "wan2.6-t2v")
    assert page.locator("#f-size option").all_inner_texts()[0] == "1280*720"
    assert page.input_value("#f-size") == "1920*1080"
    page.select_option("#model", "wanx2.1-kf2v-plus")
    assert page.locator("#f-resolution option").all_inner_texts() == ["720P"]
    assert page.locator("input[type=file]").evaluate_all("xs => xs.map(x => x.dataset.field)") == [
        "first_frame_url", "last_frame_url"]
    assert "hanfu-1" in page.locator("#f-template option").all_inner_texts()


def test_a_missing_first_frame_shows_the_apis_error_message(page: Page, screenshots: Path):
    sign_in(page)
    page.select_option("#model", MODEL)
    page.fill("#f-prompt", "A lighthouse at dawn")
    rows = page.locator("#tasks tbody tr").count()
    page.click("#submit")
    expect(page.locator("#message.error")).to_have_text("Field required: input.img_url")
    assert page.locator("#tasks tbody tr").count() == rows
    shot(page, screenshots, "05-error")


def paths_requested(page: Page) -> list[str]:
    """The path of every request the tab makes from now on (filled in as they happen)."""
    paths: list[str] = []
    page.on("request", lambda request: paths.append(urlsplit(request.url).path))
    return paths


def without_event_stream(page: Page) -> None:
    """The tab sees a server with no GET /tasks/{id}/events (404, as before it existed)."""
    page.route(re.compile(r".*/events$"), lambda route: route.fulfill(
        status=404, content_type="application/json",
        body='{"request_id": "x", "code": "NotFound", "message": "Not found!"}'))


@pytest.mark.slow
@pytest.mark.parametrize("live", ["events", "polling"])
def test_a_first_frame_task_uploads_its_image_shows_progress_and_plays(
        page: Page, console_server: Server, first_frame: Path, screenshots: Path, live: str):
    if live == "polling":
        without_event_stream(page)
    requested = paths_requested(page)
    sign_in(page)
    fill_first_frame_task(page, first_frame, duration=10)
    task_id = submit_and_get_task_id(page)
    stored = console_server.services.store.get(task_id)
    assert stored is not None and stored["request"]["media"][0]["url"].startswith("oss://")

    seen: list[float] = []  # the progress bar's values while the task runs
    bar = page.locator(f"#task-{task_id} progress")
    while (status := task_status(page, task_id)) not in TERMINAL:
        value = bar.get_attribute("value") if status == "RUNNING" and bar.count() else None
        if value is not None and (not seen or float(value) != seen[-1]):
            seen.append(float(value))
            if len(seen) == 2:
                shot(page, screenshots, f"06-running-{live}")
        page.wait_for_timeout(50)
    assert status == "SUCCEEDED", page.inner_text(f"#task-{task_id}")
    assert len(seen) >= 2 and seen == sorted(seen) and seen[0] < 100, seen
    expect(page.locator(f"#task-{task_id} .eta")).to_have_count(0)
    shot(page, screenshots, f"07-succeeded-{live}")
    polls = requested.count(f"/api/v1/tasks/{task_id}")
    assert f"/api/v1/tasks/{task_id}/events" in requested
    assert polls == 0 if live == "events" else polls >= 2

    page.click(f"#task-{task_id} button.play")
    video = page.locator("#player")
    expect(video).to_be_visible()
    # headless Chromium may block autoplay with sound: start it as a muted user would
    page.evaluate("async () => { const v = document.querySelector('#player'); v.muted = true; "
                  "await v.play(); }")
    page.wait_for_function("document.querySelector('#player').currentTime > 0.5", timeout=30_000)
    shot(page, screenshots, f"08-playing-{live}")

    url = console_server.task(task_id)["output"]["video_url"]
    assert urlsplit(video.get_attribute("src")).path == urlsplit(url).path
    download = page.get_attribute("#download", "href")
    assert download == video.get_attribute("src") and page.get_attribute("#download", "download")
    assert httpx.get(download).content[4:8] == b"ftyp"


def test_a_broken_event_stream_falls_back_to_polling(page: Page, first_frame: Path):
    running = '{"output": {"task_id": "%s", "task_status": "RUNNING"}}'
    page.route(re.compile(r".*/events$"), lambda route: route.fulfill(  # one event, then the stream ends
        status=200, content_type="text/event-stream",
        body=f"event: task\ndata: {running % route.request.url.split('/')[-2]}\n\n"))
    requested = paths_requested(page)
    sign_in(page)
    fill_first_frame_task(page, first_frame, duration=2)
    page.select_option("#f-resolution", "720P")
    task_id = submit_and_get_task_id(page)
    expect(page.locator(f"#task-{task_id} .status")).to_have_text("SUCCEEDED", timeout=60_000)
    assert requested.count(f"/api/v1/tasks/{task_id}") >= 1


@pytest.mark.slow
def test_canceling_a_running_task_shows_canceled(page: Page, console_server: Server, first_frame: Path,
                                                  screenshots: Path):
    sign_in(page)
    fill_first_frame_task(page, first_frame)
    task_id = submit_and_get_task_id(page)
    page.click(f"#task-{task_id} button.cancel")
    expect(page.locator(f"#task-{task_id} .status")).to_have_text("CANCELED", timeout=30_000)
    expect(page.locator(f"#task-{task_id} button.cancel")).to_have_count(0)
    assert console_server.task(task_id)["output"]["task_status"] == "CANCELED"
    shot(page, screenshots, "09-canceled")


def test_swagger_ui_and_redoc_render_with_no_network(page: Page, console_server: Server, screenshots: Path):
    page.goto(console_server.base + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("wanserve", timeout=30_000)
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    shot(page, screenshots, "10-swagger-ui")
    page.goto(console_server.base + "/redoc")
    expect(page.locator("h1")).to_contain_text("wanserve", timeout=30_000)
    shot(page, screenshots, "11-redoc")
