"""The Kubernetes HPA's arithmetic on edged_load_ratio, to size targets before a cluster does.

For a Pods metric with an AverageValue target the HPA asks for
`ceil(current * average / target)` replicas, keeps the count while `average / target` is within
its tolerance of 1 (0.1 by default), and clamps to `[min, max]`. Like the HPA controller, it
works in milli-units: the average is the integer mean of the pods' values in thousandths.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

HPA_TOLERANCE = 0.1
"""kube-controller-manager's --horizontal-pod-autoscaler-tolerance default."""


def desired_replicas(per_pod: Sequence[float], target: float, min_replicas: int = 1,
                     max_replicas: int = 10, tolerance: float = HPA_TOLERANCE) -> int:
    """Replicas the HPA asks for, given each current pod's metric value and the target average."""
    current = len(per_pod)
    if current == 0:
        return min_replicas
    average_milli = sum(round(v * 1000) for v in per_pod) // current
    ratio = average_milli / round(target * 1000)
    wanted = current if abs(ratio - 1.0) <= tolerance else math.ceil(current * ratio)
    return max(min_replicas, min(max_replicas, wanted))
