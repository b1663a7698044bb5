"""Admission control and the memory budget as pure logic (no server)."""

from __future__ import annotations

import asyncio

import pytest

from edged.errors import ResourceExhaustedError
from edged.service.admission import Admission


def test_limit_refuses_at_once_and_frees_slots() -> None:
    """Beyond the limit a stream is refused with the limit named; a closed stream frees its slot."""

    async def scenario() -> None:
        admission = Admission(reserve_mb=100, available_mb=lambda: 1000.0)
        async with admission.stream("asr", 2), admission.stream("asr", 2):
            assert admission.active == {"asr": 2}
            with pytest.raises(ResourceExhaustedError, match="the limit is 2"):
                async with admission.stream("asr", 2):
                    pass
            async with admission.stream("tts", 1):  # another service has its own slots
                assert admission.total == 3
        async with admission.stream("asr", 2):
            assert admission.active["asr"] == 1
        assert admission.total == 0

    asyncio.run(scenario())


def test_memory_pressure_refuses_new_streams() -> None:
    """With less than the reserve available a new stream is refused, whatever the count."""

    async def scenario() -> None:
        free = [1000.0]
        admission = Admission(reserve_mb=256, available_mb=lambda: free[0])
        async with admission.stream("asr"):
            free[0] = 200.0
            with pytest.raises(ResourceExhaustedError, match="Memory is short .*memory_reserve_mb=256"):
                async with admission.stream("asr"):
                    pass
        free[0] = 300.0
        async with admission.stream("asr"):
            pass

    asyncio.run(scenario())

