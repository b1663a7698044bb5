"""What both realtime transcription dialects (Riva's and OpenAI's) share: event ids, the client's
events read off the WebSocket, base64 audio fields, and the audio held between commits."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web

from edged.doors.web.errors import BadInput, error_event
from edged.errors import RequestError


def new_id(prefix: str) -> str:
    """A fresh id such as `item_3f...` (OpenAI's and Riva's ids look alike)."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def b64_field(event: dict[str, Any], field: str) -> bytes:
    """The bytes of `event[field]`, a base64 string; BadInput naming the field otherwise."""
    data = event.get(field, "")
    if not isinstance(data, str):
        raise BadInput(f"{event.get('type')}.{field} must be a base64 string.")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{event.get('type')}.{field} is not valid base64.") from None


async def client_events(ws: web.WebSocketResponse, idle_s: float | None = None) -> AsyncIterator[dict[str, Any]]:
    """The client's events, as dicts; a malformed one is answered with an error event and skipped.
    RequestError after `idle_s` without a message (a transcription holds a stream slot)."""
    while True:
        try:
            msg = await ws.receive(timeout=idle_s)
        except asyncio.TimeoutError:
            raise RequestError(f"No event for {idle_s:g} s; the conversation was ended "
                               "(asr_stream_idle_timeout_s).") from None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            return
        if msg.type == WSMsgType.TEXT:
            try:
                event = json.loads(msg.data)
                if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                    raise BadInput("An event must be a JSON object with a string `type`.")
            except (json.JSONDecodeError, BadInput) as exc:
                await ws.send_json(error_event(
                    exc if isinstance(exc, BadInput) else BadInput(f"The event is not valid JSON: {exc}."),
                    "Realtime event"))
                continue
            yield event
        elif msg.type == WSMsgType.BINARY:
            await ws.send_json(error_event(BadInput("Binary messages are not part of this API; send JSON "
                                                    "events with base64 audio."), "Realtime event"))
        elif msg.type == WSMsgType.ERROR:
            failure = ws.exception()
            raise BadInput(f"The WebSocket failed: {failure}; messages may be at most max_message_mb (config.sh)."
                           if "too big" in str(failure).lower() else f"The WebSocket failed: {failure}.")


async def starting_with(first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """`first`, then the events of `rest` (the event that chose the dialect is served too)."""
    yield first
    async for event in rest:
        yield event


class HeldAudio:
    """The client's audio between commits, bounded by max_message_mb."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, audio: bytes) -> None:
        """Hold `audio` until the next commit; BadInput (the chunk dropped) past the bound."""
        if self._size + len(audio) > self._max:
            raise BadInput(f"The audio buffer would hold {self._size + len(audio)} bytes, more than max_message_mb "
                           f"({self._max // (1024 * 1024)} MiB) allows between commits; this chunk was dropped: "
                           "send input_audio_buffer.commit more often.")
        self._chunks.append(audio)
        self._size += len(audio)

    def take(self) -> bytes:
        """The audio held, which is then let go."""
        audio = b"".join(self._chunks)
        self.clear()
        return audio

    def clear(self) -> None:
        """Let go of the audio held."""
        self._chunks, self._size = [], 0
