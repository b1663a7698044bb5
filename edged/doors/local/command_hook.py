"""What runs with a command the microphone heard after a wake word (`local_command_hook`).

The hook is a program (its command line split as a shell would, without a shell) that gets the
transcript as JSON on its standard input, or an http(s) URL the JSON is POSTed to. What it answers
(standard output, or the response body) is text to speak: plain text, or a JSON object whose
`text` is. A hook that cannot start, fails, answers an error or outlasts its timeout is logged in
one line and its answer dropped; it never stops the microphone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
from typing import Any

_LOGGER = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 * 1024
"""The most of a hook's answer that is read (the rest is ignored)."""


class CommandHook:
    """Hands one command's transcript to the configured program or URL; `ask` gives its answer."""

    def __init__(self, target: str, timeout_s: float) -> None:
        self.target = target.strip()
        self.timeout_s = timeout_s
        self.is_url = self.target.lower().startswith(("http://", "https://"))

    async def ask(self, transcript: dict[str, Any]) -> str | None:
        """The text to speak back, or None (no answer, or the hook failed: logged)."""
        body = json.dumps(transcript, ensure_ascii=False).encode()
        try:
            raw = await asyncio.wait_for(self._post(body) if self.is_url else self._run(body), self.timeout_s)
        except asyncio.TimeoutError:
            _LOGGER.warning("Command hook %s gave no answer within %d s (local_command_hook_timeout_s); "
                            "it was stopped", self._shown, self.timeout_s)
            return None
        except _HookFailed as exc:
            _LOGGER.warning("Command hook %s %s", self._shown, exc)
            return None
        return answer_text(raw)

    @property
    def _shown(self) -> str:
        """The hook as its log lines name it: the URL, or the program without its arguments."""
        return repr(self.target if self.is_url else self.target.split()[0])

    async def _run(self, body: bytes) -> bytes:
        try:
            proc = await asyncio.create_subprocess_exec(
                *shlex.split(self.target), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except (OSError, ValueError) as exc:
            raise _HookFailed(f"could not start: {exc}") from None
        try:
            out, err = await proc.communicate(body)
        except asyncio.CancelledError:  # the timeout: the program goes too
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise _HookFailed(f"exited with status {proc.returncode}" + (f": {last[0][:200]}" if last[0] else ""))
        return out[:MAX_ANSWER_BYTES]

    async def _post(self, body: bytes) -> bytes:
        import aiohttp

        try:
            async with aiohttp.ClientSession() as session, session.post(
                    self.target, data=body, headers={"Content-Type": "application/json"}) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES)
                if response.status >= 400:
                    raise _HookFailed(f"answered HTTP {response.status} {response.reason or ''}".rstrip())
                return raw
        except aiohttp.ClientError as exc:
            raise _HookFailed(f"could not be reached: {exc or type(exc).__name__}") from None


class _HookFailed(Exception):
    """The hook did not run to an answer (the message says why, after the hook's name)."""


def answer_text(raw: bytes) -> str | None:
    """The text in a hook's answer: a JSON object's `text`, a JSON string, or the plain text."""
    text = raw.decode("utf-8", errors="replace").strip()
    if text.startswith(("{", '"')):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, dict):
            value = value.get("text")
        return (value.strip() or None) if isinstance(value, str) else None
    return text or None
