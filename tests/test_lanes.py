"""Lanes: independent calls side by side, results in order, errors after every call ended."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edged.backends.base import BackendOptions
from edged.config import Settings
from edged.pipelines.asr.jobs import DecodeJob, JobKind
from edged.pipelines.asr.model import _fill_lanes
from edged.pipelines.lanes import Lanes
from edged.pipelines.pools import Pools


def test_map_keeps_order_and_runs_calls_side_by_side(pools: Pools) -> None:
    lanes = Lanes(2, pools, "test")
    running, most = 0, 0
    lock = threading.Lock()

    def call(x: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.02 if x % 2 else 0.005)
        with lock:
            running -= 1
        return x * x

    assert lanes.map(call, range(7)) == [x * x for x in range(7)]
    assert most == 2


def test_one_lane_runs_on_the_calling_thread(pools: Pools) -> None:
    lanes = Lanes(1, pools, "test")
    threads = lanes.map(lambda _: threading.current_thread(), range(3))
    assert threads == [threading.current_thread()] * 3


def test_an_error_is_raised_after_the_other_calls_ended(pools: Pools) -> None:
    lanes = Lanes(2, pools, "test")
    started: list[int] = []
    finished: list[int] = []

    def call(x: int) -> int:
        started.append(x)
        time.sleep(0.05 if x else 0.01)
        if x == 0:
            raise ValueError("bad item")
        finished.append(x)
        return x

    with pytest.raises(ValueError, match="bad item"):
        lanes.map(call, [0, 1, 2, 3])
    assert sorted(started) == sorted([0, *finished])  # no call abandoned mid-run
    assert len(started) < 4  # no new call once one failed


def test_lanes_come_from_settings() -> None:
    assert BackendOptions.from_settings(Settings(inference_lanes=3)).lanes == 3
    assert BackendOptions.from_settings(Settings()).lanes == 2


def test_a_lone_batch_is_split_so_that_every_lane_has_one() -> None:
    def job(seconds: float) -> DecodeJob:
        return DecodeJob(None, JobKind.FINAL, 0, np.zeros(int(seconds * 16000), np.float32), 0, 0)  # type: ignore[arg-type]

    batch = [job(2.0), job(2.1), job(2.2)]
    assert [len(g) for g in _fill_lanes([batch], 2)] == [2, 1]
    assert len(_fill_lanes([[job(3.0)]], 2)) == 1  # one utterance cannot be split
    assert len(_fill_lanes([batch[:1], batch[1:]], 2)) == 2  # already one per lane
    assert sum(len(g) for g in _fill_lanes([batch], 4)) == 3
