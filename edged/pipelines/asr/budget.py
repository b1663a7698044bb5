"""How much of the inference executor's time interim results may take, measured on the fly.

Finals (and the decodes that may become them) always run; interims are optional. If interims
took whatever time the finals leave, the executor would always be busy and every final would
queue behind an interim. So interims get a share of the wall time: what keeps the executor
busy `TARGET_BUSY` of the time, given what the required work has recently taken (never less
than `MIN_SHARE`, so that interims go on, thinned out, when the CPU is short). Unused time
accrues as credit up to one cycle's worth, so that the share is spent where streams are due.
"""

from __future__ import annotations

import math

TARGET_BUSY = 0.8
"""Fraction of the wall time the executor should be busy at most (the rest absorbs bursts)."""
MIN_SHARE = 0.15
"""Share of the wall time interims keep however busy the required work is."""
SLICE_S = 0.15
"""Most (estimated) seconds of interim decoding in one executor call: a final that arrives
meanwhile waits for no more than this."""
_HALF_LIFE_S = 2.0
"""How fast the measured required load follows a change (half-life of its average)."""


class InterimBudget:
    """The interim share of the executor's time: `tick` with the wall clock, `record` required
    and interim work as it runs, `allowance` for the next interim call."""

    def __init__(self, now: float) -> None:
        self._last = now
        self._busy = 0.0
        """Decayed seconds of required work."""
        self._wall = 0.0
        """Decayed wall seconds (the same decay)."""
        self.credit = 0.0
        """Seconds of interim decoding the share has accrued and not spent."""

    @property
    def required_share(self) -> float:
        """The recent fraction of the wall time taken by required work."""
        return self._busy / self._wall if self._wall > 0 else 0.0

    @property
    def share(self) -> float:
        """The fraction of the wall time interims may take now."""
        return min(TARGET_BUSY, max(MIN_SHARE, TARGET_BUSY - self.required_share))

    def tick(self, now: float) -> None:
        """Let time pass: the share of the elapsed wall time accrues as credit."""
        dt = max(0.0, now - self._last)
        self._last = now
        decay = math.exp(-dt * math.log(2) / _HALF_LIFE_S)
        self._busy *= decay
        self._wall = self._wall * decay + dt
        self.credit = min(SLICE_S, self.credit + self.share * dt)

    def required(self, seconds: float) -> None:
        """Required work (feeding, finals) took `seconds` of the executor."""
        self._busy += seconds

    def spent(self, seconds: float) -> None:
        """Interims took `seconds` of the executor."""
        self.credit -= seconds

    def allowance(self) -> float:
        """Estimated seconds of interims the next call may run (0: none now)."""
        return min(SLICE_S, self.credit) if self.credit > 0 else 0.0
