"""Measure what loading deployed networks costs, in a fresh process: `python -m edged.backends.measure`.

Run by deploy in a child process so the figure is this model's alone, not whatever the
deploying process had already allocated. Prints one JSON object.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import psutil

from edged.backends import BackendOptions, get_backend


def _high_water_mark() -> int | None:
    """Peak RSS of this process image (VmHWM); ru_maxrss would include the parent's, kept across exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def main(argv: list[str]) -> None:
    """argv: BACKEND INTRA_THREADS INTER_THREADS FILE..."""
    backend = get_backend(argv[0])
    options = BackendOptions(int(argv[1]), int(argv[2]))
    # Import the runtime first so its own libraries are not counted as the model's memory.
    if argv[0] == "onnxruntime":
        import onnxruntime  # noqa: F401 - loaded for its libraries, before the baseline is taken
    elif argv[0] == "tensorrt":
        from edged.backends.tensorrt.library import import_trt, trt_module_info

        if trt_module_info() is not None:
            import_trt()  # and so the CUDA context: runtime, not the model's memory
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    sessions = [backend.load(Path(f), options) for f in argv[3:]]
    seconds = time.perf_counter() - t0
    after = proc.memory_info().rss
    peak = _high_water_mark() or after
    print(json.dumps({
        "load_seconds": round(seconds, 3),
        "memory_mb": round((after - before) / 2**20, 1),
        "peak_mb": round((peak - before) / 2**20, 1),
        "networks": len(sessions),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
