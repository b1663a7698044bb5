"""Property tests of the Wyoming door's event reader (`doors/wyoming/framing.py`): whatever bytes
a client sends, it returns events, the end of the stream, or a FrameError within the limits
(never another exception, never more read than announced within them); and what the `wyoming`
package writes, it reads back unchanged."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from wyoming.event import Event, write_event

from edged.doors.wyoming.framing import MAX_DATA_BYTES, FrameError, read_event

MAX_PAYLOAD = 4096


def _read_all(sent: bytes, max_payload: int = MAX_PAYLOAD) -> tuple[list[Event], BaseException | None]:
    """The events `read_event` gives for `sent` then the end of the stream, and what stopped it."""
    async def run() -> tuple[list[Event], BaseException | None]:
        reader = asyncio.StreamReader(limit=64 * 1024)
        reader.feed_data(sent)
        reader.feed_eof()
        events: list[Event] = []
        try:
            while (event := await read_event(reader, max_payload)) is not None:
                events.append(event)
        except (FrameError, asyncio.IncompleteReadError) as exc:
            return events, exc
        return events, None
    return asyncio.run(run())


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3),
                           max_leaves=10)
events = st.builds(Event, type=st.text(min_size=1, max_size=20).filter(lambda t: "\n" not in t),
                   data=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
                   payload=st.none() | st.binary(min_size=1, max_size=MAX_PAYLOAD))


def _wire(event: Event) -> bytes:
    out = io.BytesIO()
    write_event(event, out)
    return out.getvalue()


@settings(max_examples=100, deadline=None)
@given(st.lists(events, max_size=4))
def test_what_the_wyoming_package_writes_is_read_back(sent: list[Event]) -> None:
    got, stopped = _read_all(b"".join(map(_wire, sent)))
    assert stopped is None
    assert [(e.type, e.data, e.payload) for e in got] == [(e.type, e.data, e.payload) for e in sent]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_give_events_or_a_frame_error(sent: bytes) -> None:
    got, stopped = _read_all(sent)
    assert stopped is None or isinstance(stopped, (FrameError, asyncio.IncompleteReadError))
    assert all(isinstance(e.data, dict) and (e.payload is None or len(e.payload) <= MAX_PAYLOAD) for e in got)


headers = st.fixed_dictionaries({"type": st.one_of(st.text(max_size=10), st.integers(), st.none())}, optional={
    "data": json_values, "data_length": st.one_of(st.integers(-5, 2 * MAX_DATA_BYTES), st.text(max_size=3),
                                                  st.booleans(), st.floats(allow_nan=False)),
    "payload_length": st.one_of(st.integers(-5, 2**40), st.text(max_size=3), st.booleans(), st.none())})


@settings(max_examples=150, deadline=None)
@given(headers, st.binary(max_size=300))
def test_malformed_headers_are_refused_before_their_lengths_are_read(header: dict[str, Any], rest: bytes) -> None:
    """A header with a wrong type, or lengths that are not non-negative integers within the limits,
    is a FrameError naming the problem, and nothing it announces is read."""
    got, stopped = _read_all(json.dumps(header).encode() + b"\n" + rest)
    announced = [header.get(f) for f in ("data_length", "payload_length")]
    valid = (isinstance(header["type"], str) and isinstance(header.get("data") or {}, dict)
             and all(v is None or (type(v) is int and v >= 0) for v in announced)
             and (header.get("data_length") or 0) <= MAX_DATA_BYTES
             and (header.get("payload_length") or 0) <= MAX_PAYLOAD)
    if not valid:
        assert not got and isinstance(stopped, FrameError) and str(stopped).endswith("."), (got, stopped)
