"""The browser console in Debian's Chromium (Playwright, never `playwright install`): dictation from
a fake microphone playing beckett.wav, speech played as it arrives, the server's status."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.test_asr_server import beckett_path
from tests.test_http_realtime import web  # noqa: F401 - the fixture

CHROMIUM = Path("/usr/bin/chromium")


def chromium_args(wav: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}"]


@pytest.fixture()
def page(tmp_path: Path, web: tuple[str, int]) -> Any:  # noqa: F811 - a fixture imported above
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    wav = tmp_path / "mic.wav"
    shutil.copy(beckett_path(), wav)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=chromium_args(wav))
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{web[1]}/")
            yield page
        finally:
            browser.close()


def test_console_dictates_speaks_and_shows_status(page: Any, tmp_path: Path, web: tuple[str, int]) -> None:  # noqa: F811 - a fixture imported above
    """Dictation shows the transcript of the fake mic; Speak plays audio; the status lists the models."""
    page.wait_for_function("document.querySelector('#models').children.length >= 3", timeout=20000)
    assert page.text_content("#health") == "SERVING"
    page.click("#dictate")
    page.wait_for_function("document.querySelector('#finals').textContent.toLowerCase().includes('fail')",
                           timeout=60000)
    page.click("#dictate")  # stop: input_audio_buffer.done
    page.wait_for_function("document.querySelector('#dictation-state').textContent === 'idle'", timeout=30000)
    assert page.evaluate("window.edged.interims") > 0
    text = page.text_content("#finals").lower()
    assert "ever tried" in text or "try again" in text, text
    page.wait_for_function("document.querySelector('#voice').options.length > 0", timeout=10000)
    page.fill("#text", "Hello from the browser console.")
    page.click("#speak")
    page.wait_for_function("window.edged.speechDone >= 1", timeout=30000)
    samples = page.evaluate("window.edged.samplesReceived")
    assert samples > 22050, samples
    assert page.evaluate("window.edged.errors") == []
    page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
    with urllib.request.urlopen(f"http://127.0.0.1:{web[1]}/v1/edged/status", timeout=10) as r:
        status = json.load(r)
    assert status["health"] == "SERVING" and {m["name"] for m in status["models"]} >= {"moonshine-base-en"}


def test_console_sends_the_picked_language(page: Any) -> None:
    """The language picker lists what /v1/models says the ASR models recognise, and dictation
    asks for the picked one: a language nobody serves comes back as the server's precise error."""
    page.wait_for_function("document.querySelector('#language').options.length > 0", timeout=20000)
    assert page.eval_on_selector_all("#language option", "os => os.map(o => o.value)") == ["en-US"]
    page.evaluate("() => { const s = document.querySelector('#language'); s.add(new Option('xx-YY', 'xx-YY')); "
                  "s.value = 'xx-YY'; }")
    page.click("#dictate")
    page.wait_for_function("window.edged.errors.length > 0", timeout=20000)
    errors = page.evaluate("window.edged.errors")
    assert errors[0].startswith("No deployed ASR model serves language 'xx-YY'; deployed ASR models: "
                                "moonshine-base-en (en-US)"), errors
    assert page.evaluate("window.edged.finals") == []


def test_a_page_of_another_origin_cannot_open_the_websocket(page: Any, web: tuple[str, int],  # noqa: F811 - a fixture imported above
                                                             default_repo: Path) -> None:
    """The console's origin is http://127.0.0.1:PORT; from it, a WebSocket to localhost:PORT is
    cross-origin (Origin and Host differ): the browser's connection fails and the server logs a 403."""
    outcome = page.evaluate("""(port) => new Promise(done => {
        const ws = new WebSocket(`ws://localhost:${port}/v1/realtime?intent=transcription`);
        ws.onopen = () => { ws.close(); done('open'); };
        ws.onerror = () => done('refused');
    })""", web[1])
    assert outcome == "refused"
    log = (default_repo.parent / "server.log").read_text()
    assert "GET /v1/realtime refused (403): Requests from the web page at 'http://127.0.0.1:" in log
