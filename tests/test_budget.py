"""The interim share of the ASR executor's time (edged.pipelines.asr.budget): pure logic."""

from __future__ import annotations

import pytest

from edged.pipelines.asr.budget import MIN_SHARE, SLICE_S, TARGET_BUSY, InterimBudget


def test_an_idle_executor_gives_interims_the_whole_target_share() -> None:
    budget = InterimBudget(0.0)
    assert budget.allowance() == 0.0  # nothing accrued yet
    budget.tick(0.1)
    assert budget.share == TARGET_BUSY
    assert budget.credit == pytest.approx(TARGET_BUSY * 0.1)
    budget.tick(10.0)
    assert budget.allowance() == SLICE_S  # credit is capped at one slice


def test_required_work_takes_its_share_first_and_interims_keep_a_floor() -> None:
    budget = InterimBudget(0.0)
    for t in range(1, 101):  # required work 40 % of the time
        budget.tick(t * 0.1)
        budget.required(0.04)
    assert budget.required_share == pytest.approx(0.4, abs=0.02)
    assert budget.share == pytest.approx(TARGET_BUSY - 0.4, abs=0.02)
    for t in range(101, 201):  # then all of it
        budget.tick(t * 0.1)
        budget.required(0.1)
    assert budget.share == MIN_SHARE


def test_spent_credit_is_paid_back_before_the_next_interims() -> None:
    budget = InterimBudget(0.0)
    budget.tick(1.0)
    budget.spent(0.4)  # an interim call that ran longer than the slice's credit
    assert budget.credit == pytest.approx(SLICE_S - 0.4) and budget.allowance() == 0.0
    budget.tick(1.0 + (0.4 - SLICE_S) / TARGET_BUSY + 0.05)
    assert 0.0 < budget.allowance() < SLICE_S
