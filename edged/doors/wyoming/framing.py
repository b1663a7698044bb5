"""Reading Wyoming events within limits: a header line, its JSON data, its binary payload.

A Wyoming event is a JSON header line (`type`, and optionally `data`, `data_length`,
`payload_length`), then `data_length` bytes of JSON merged into `data`, then `payload_length`
bytes of payload. The `wyoming` package reads whatever lengths a header announces; here a header
longer than MAX_HEADER_BYTES, data longer than MAX_DATA_BYTES or a payload longer than the
server's `max_message_mb` is refused before it is read (`FrameError`), so a client cannot make
the server buffer what it announces. After a refusal the connection cannot be resynchronised:
the door answers with an `error` event and closes it.
"""

from __future__ import annotations

import asyncio
import json

from wyoming.event import Event

from edged.errors import RequestError

MAX_HEADER_BYTES = 64 * 1024
"""Longest header line (Wyoming headers are a few hundred bytes): the limit of the
asyncio.StreamReader that `wyoming`'s server reads a connection with (asyncio's default)."""
MAX_DATA_BYTES = 1024 * 1024
"""Longest JSON data block (a long `synthesize` text is some kilobytes)."""


class FrameError(RequestError):
    """An event that cannot be read within the limits, or cannot be framed at all."""


def _length(header: dict[str, object], field: str, limit: int, setting: str) -> int:
    value = header.get(field)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FrameError(f"The event's {field} must be a non-negative integer, not {value!r}.")
    if value > limit:
        raise FrameError(f"The event announces {value} bytes of {field.removesuffix('_length')}; "
                         f"the most this server reads is {limit} ({setting}).")
    return value


async def read_event(reader: asyncio.StreamReader, max_payload_bytes: int) -> Event | None:
    """The next event, or None at the end of the stream; FrameError beyond the limits."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    except asyncio.LimitOverrunError:
        raise FrameError(f"An event header is longer than {MAX_HEADER_BYTES} bytes.") from None
    try:
        header = json.loads(line)
    except ValueError:
        raise FrameError("An event header is not JSON.") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise FrameError("An event header must be a JSON object with a string `type`.")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise FrameError("An event's `data` must be a JSON object.")
    data_length = _length(header, "data_length", MAX_DATA_BYTES, "Wyoming's limit")
    payload_length = _length(header, "payload_length", max_payload_bytes, "max_message_mb")
    if data_length:
        try:
            extra = json.loads(await reader.readexactly(data_length))
        except ValueError:
            raise FrameError("An event's data block is not JSON.") from None
        if not isinstance(extra, dict):
            raise FrameError("An event's data block must be a JSON object.")
        data = {**data, **extra}
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=header["type"], data=data, payload=payload)
