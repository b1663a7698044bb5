"""Admission control and the memory budget as pure logic (no server)."""

from __future__ import annotations

import asyncio

import pytest

from edged.errors import IdleTimeoutError, ResourceExhaustedError
from edged.service.admission import Admission, Waiting, high_water_mb


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


def test_rss_past_the_high_water_mark_refuses_new_streams_after_releasing_memory() -> None:
    """Past the high-water mark the allocator's free memory is given back first: a stream is
    refused, naming the setting, only if RSS stays past the mark; under it streams are taken."""

    async def scenario() -> None:
        rss = [500.0]
        freeable = [0.0]
        """What the allocator holds free, given back by release()."""
        released: list[float] = []

        def release() -> None:
            released.append(rss[0])
            rss[0] -= freeable[0]

        admission = Admission(reserve_mb=0, available_mb=lambda: 8000.0, high_water_mb=800,
                              rss_mb=lambda: rss[0], release_memory=release)
        async with admission.stream("asr"):
            assert released == []  # under the mark nothing is released
        rss[0] = 900.0
        with pytest.raises(ResourceExhaustedError, match=r"900 MB in use, memory_high_water_mb=800"):
            async with admission.stream("tts"):
                pass
        assert released == [900.0] and admission.total == 0
        freeable[0] = 150.0  # giving back brings RSS under the mark
        async with admission.stream("tts"):
            assert rss[0] == 750.0 and admission.active["tts"] == 1
        admission.high_water_mb = 0  # off: RSS is not looked at
        rss[0] = 10_000.0
        async with admission.stream("asr"):
            pass

    asyncio.run(scenario())


def test_high_water_mark_from_the_setting_or_derived_from_the_budget() -> None:
    """`auto` is the RSS when ready plus what the models' budget has left; a number is taken as is."""
    assert high_water_mb(None, ready_rss_mb=450.0, budget_left_mb=1200.0) == 1650.0
    assert high_water_mb(None, ready_rss_mb=450.0, budget_left_mb=-30.0) == 450.0
    assert high_water_mb(2048, ready_rss_mb=450.0, budget_left_mb=1200.0) == 2048.0
    assert high_water_mb(0, ready_rss_mb=450.0, budget_left_mb=1200.0) == 0.0


def test_load_ratio_is_the_busiest_service_and_drain_refuses_new_streams() -> None:
    """The gauge the autoscaler reads: the busiest limited service's open streams over its limit,
    0 idle; once draining a new stream is refused (DrainingError) while the open one goes on."""
    from prometheus_client import REGISTRY

    from edged.errors import DrainingError

    def gauge(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    async def scenario() -> None:
        admission = Admission(reserve_mb=0, available_mb=lambda: 1000.0)
        admission.set_limit("asr", 4)
        admission.set_limit("tts", 2)
        assert gauge("edged_stream_capacity", service="asr") == 4.0
        assert admission.load_ratio() == 0.0 == gauge("edged_load_ratio")
        async with admission.stream("asr", 4):
            assert admission.load_ratio() == 0.25 == gauge("edged_load_ratio")
            async with admission.stream("tts", 2):
                assert admission.load_ratio() == 0.5 == gauge("edged_load_ratio")  # tts 1/2, not 2/6
                admission.drain()
                with pytest.raises(DrainingError, match="draining"):
                    async with admission.stream("asr", 4):
                        pass
                assert admission.total == 2
        assert admission.load_ratio() == 0.0 == gauge("edged_load_ratio")

    asyncio.run(scenario())


def test_drain_is_answered_only_on_this_machine() -> None:
    """POST /v2/drain drains, DELETE undoes it; from another machine both are refused; GET is not a drain."""
    from edged.daemon.probes import HttpEndpoint

    drained: list[bool] = []

    def drain(on: bool) -> None:
        if on:
            drained.append(True)
        else:
            drained.clear()

    endpoint = HttpEndpoint(lambda: not drained, drain)
    assert endpoint.respond("GET", "/v2/health/ready")[0] == 200
    assert endpoint.respond("GET", "/v2/drain")[0] == 405
    assert endpoint.respond("POST", "/v2/drain", local=False)[0] == 403
    assert not drained
    assert endpoint.respond("POST", "/v2/drain")[0] == 200
    assert endpoint.respond("GET", "/v2/health/ready")[0] == 503
    assert endpoint.respond("GET", "/v2/health/live")[0] == 200
    assert endpoint.respond("DELETE", "/v2/drain", local=False)[0] == 403
    assert endpoint.respond("DELETE", "/v2/drain") == (200, "text/plain", b"serving\n")
    assert endpoint.respond("GET", "/v2/health/ready")[0] == 200


def test_a_slot_ends_streams_whose_client_keeps_them_waiting() -> None:
    """Past the idle timeout on what a stream waits its client for (send or read), the session is
    told with the setting named; one that does not let go is cancelled; server time never counts."""

    async def scenario() -> None:
        admission = Admission(reserve_mb=0, available_mb=lambda: 1000.0)
        told: list[IdleTimeoutError] = []

        async def stream(behaviour: str) -> str:
            async with admission.stream("asr", 0, 0.6, "asr_stream_idle_timeout_s") as slot:
                quit_when_told = asyncio.Event()
                slot.on_idle = lambda error: (told.append(error), quit_when_told.set())
                if behaviour == "busy client":  # sends every 0.1 s for 2 s
                    for _ in range(20):
                        with slot.waiting(Waiting.SEND):
                            await asyncio.sleep(0.1)
                elif behaviour == "slow server":  # works for 2 s, waiting on no one
                    await asyncio.sleep(2.0)
                elif behaviour == "quiet client":  # waits for audio that never comes; ends when told
                    with slot.waiting(Waiting.SEND):
                        await quit_when_told.wait()
                else:  # "deaf client": a write that never returns, whatever the session is told
                    with slot.waiting(Waiting.READ):
                        await asyncio.sleep(60)
                return behaviour

        started = asyncio.get_running_loop().time()
        outcomes = await asyncio.gather(*(stream(b) for b in ("busy client", "slow server", "quiet client",
                                                              "deaf client")), return_exceptions=True)
        elapsed = asyncio.get_running_loop().time() - started
        assert outcomes[:3] == ["busy client", "slow server", "quiet client"], outcomes
        assert isinstance(outcomes[3], asyncio.CancelledError), outcomes
        assert elapsed < 4.0 and admission.total == 0, (elapsed, admission.active)
        assert sorted(str(e) for e in told) == [
            "The client read nothing for 0.6 s; the asr stream was ended (asr_stream_idle_timeout_s).",
            "The client sent nothing for 0.6 s; the asr stream was ended (asr_stream_idle_timeout_s)."]

    asyncio.run(scenario())


def test_settled_waits_for_the_last_open_stream_to_end_its_clean_up() -> None:
    """A stopping server waits here before it shuts its pools: a session still cleaning up
    after its door cancelled it holds its slot until the clean-up ends."""
    admission = Admission(reserve_mb=0, available_mb=lambda: 1e6)

    async def main() -> tuple[bool, bool, bool, float]:
        assert await admission.settled(0.0)  # nothing open
        cleaned = asyncio.Event()

        async def session() -> None:
            async with admission.stream("tts", 2):
                try:
                    await asyncio.sleep(60)
                finally:  # a cancelled stream's clean-up, still under its slot
                    await asyncio.sleep(0.2)
                    cleaned.set()

        task = asyncio.create_task(session())
        await asyncio.sleep(0.05)
        early = await admission.settled(0.05)  # open, and its client is not done
        task.cancel()
        loop = asyncio.get_running_loop()
        started = loop.time()
        settled = await admission.settled(5.0)
        return early, settled, cleaned.is_set(), loop.time() - started

    early, settled, cleaned, waited = asyncio.run(main())
    assert not early
    assert settled and cleaned and waited < 2.0
    assert admission.total == 0
