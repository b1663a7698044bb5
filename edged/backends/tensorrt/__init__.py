"""TensorRT backend: engines built at deploy time from the RMIR's ONNX networks, run with cuda-python.

It works with `tensorrt` (JetPack, data centre) and with `tensorrt_rtx` (RTX workstations), which
builds engines ahead of time even on a machine without a GPU. Neither is imported before a
TensorRT deployment is made or loaded, so the CPU path never pays for them.

A deployed network is a small descriptor (`<network>.trt.json`) naming its engine files and
what they were built for (network sha256, TensorRT module and version, GPU name and compute
capability). Loading compares that with this machine and refuses a stale engine with a clear
message instead of handing it to TensorRT. A network TensorRT cannot build is deployed for
ONNX Runtime instead; its record entry says why.

The parts, one job each: `library` (which TensorRT, what an engine is built for, staleness),
`graph` (ONNX rewrites before a build), `build` (the builder: profiles, FP16, timing cache),
`runtime` (the engine session with cuda-python buffers), `backend` (deploy and load).
"""

from __future__ import annotations

from edged.backends.tensorrt.backend import TensorRtBackend

__all__ = ["TensorRtBackend"]
