"""`local_command_hook`: a real program and a real HTTP server get the transcript; their answers,
failures and timeouts (edged.doors.local.command_hook), and the chime."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from edged.doors.local.chime import CHIME_RATE, NOTES_HZ, chime
from edged.doors.local.command_hook import CommandHook, answer_text
from tests.test_server import free_port

TRANSCRIPT = {"text": "Turn on the kitchen lights.", "wake_word": "wake-alexa", "confidence": 0.9}


def _program(tmp_path: Path, body: str) -> str:
    script = tmp_path / "hook.py"
    script.write_text("import json, sys, time\n" + body, encoding="utf-8")
    return f"{sys.executable} {script}"


def _ask(hook: CommandHook) -> str | None:
    return asyncio.run(hook.ask(TRANSCRIPT))


def test_program_gets_the_transcript_and_its_answer_is_the_text(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    hook = CommandHook(_program(tmp_path, f"open({str(seen)!r}, 'w').write(sys.stdin.read())\n"
                                          "print('The kitchen lights are on.')\n"), timeout_s=30)
    assert _ask(hook) == "The kitchen lights are on."
    assert json.loads(seen.read_text()) == TRANSCRIPT


def test_program_answering_json_or_nothing(tmp_path: Path) -> None:
    said = CommandHook(_program(tmp_path, "print(json.dumps({'text': 'Done.', 'ok': True}))\n"), timeout_s=30)
    assert _ask(said) == "Done."
    quiet = CommandHook(_program(tmp_path, "sys.stdin.read()\n"), timeout_s=30)
    assert _ask(quiet) is None


@pytest.mark.parametrize(("body", "logged"), [
    ("sys.stderr.write('no such room\\n'); sys.exit(3)\n", "exited with status 3: no such room"),
    ("time.sleep(30)\n", "gave no answer within 1 s"),
])
def test_failing_or_slow_program_is_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 body: str, logged: str) -> None:
    hook = CommandHook(_program(tmp_path, body), timeout_s=1)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="edged.doors.local.command_hook"):
        assert _ask(hook) is None
    assert time.monotonic() - started < 10
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and logged in lines[0] and "\n" not in lines[0], lines


def test_missing_program_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edged.doors.local.command_hook"):
        assert _ask(CommandHook("/no/such/hook --flag", timeout_s=5)) is None
    assert [r.getMessage() for r in caplog.records] == [
        "Command hook '/no/such/hook' could not start: [Errno 2] No such file or directory: '/no/such/hook'"]


def test_unparsable_command_line_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edged.doors.local.command_hook"):
        assert _ask(CommandHook("hook 'unclosed", timeout_s=5)) is None
    assert [r.getMessage() for r in caplog.records] == ["Command hook 'hook' could not start: No closing quotation"]


async def _serve(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


def test_url_gets_the_transcript_posted_and_answers(caplog: pytest.LogCaptureFixture) -> None:
    posted: list[Any] = []

    async def answer(request: web.Request) -> web.Response:
        posted.append(await request.json())
        if request.query.get("fail"):
            return web.Response(status=500, text="boom")
        return web.json_response({"text": "Lights on."})

    async def run() -> tuple[str | None, str | None]:
        runner, url = await _serve(answer)
        try:
            return (await CommandHook(url, 10).ask(TRANSCRIPT),
                    await CommandHook(url + "?fail=1", 10).ask(TRANSCRIPT))
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.WARNING, logger="edged.doors.local.command_hook"):
        assert asyncio.run(run()) == ("Lights on.", None)
    assert posted == [TRANSCRIPT, TRANSCRIPT]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("Command hook 'http://127.0.0.1:"), lines
    assert lines[0].endswith("/hook?fail=1' answered HTTP 500 Internal Server Error"), lines


def test_url_refused_or_slow_is_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)  # past the hook's 1 s; the server's cleanup waits for it
        return web.Response(text="late")

    async def run() -> list[str | None]:
        runner, url = await _serve(slow)
        try:
            return [await CommandHook(f"http://127.0.0.1:{free_port()}/hook", 5).ask(TRANSCRIPT),
                    await CommandHook(url, 1).ask(TRANSCRIPT)]
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.WARNING, logger="edged.doors.local.command_hook"):
        assert asyncio.run(run()) == [None, None]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "could not be reached" in lines[0] and "no answer within 1 s" in lines[1], lines


@pytest.mark.parametrize(("raw", "text"), [
    (b"  Hello there.\n", "Hello there."), (b'{"text": "Hi"}', "Hi"), (b'"Hi"', "Hi"),
    (b'{"speech": "Hi"}', None), (b"", None), (b"{not json", "{not json"), (b'{"text": "  "}', None),
])
def test_answer_text(raw: bytes, text: str | None) -> None:
    assert answer_text(raw) == text


def test_chime_is_two_rising_notes() -> None:
    pcm = chime().astype(np.float32) / 32767
    assert 0.1 < len(pcm) / CHIME_RATE < 0.3 and np.abs(pcm).max() < 0.5
    halves = np.array_split(pcm, 2)
    peaks = [np.argmax(np.abs(np.fft.rfft(h))) * CHIME_RATE / len(h) for h in halves]
    assert [round(p / 20) * 20 for p in peaks] == [round(hz / 20) * 20 for hz in NOTES_HZ]
