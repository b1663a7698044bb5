"""edged's own gRPC API (edged.v1), built from edged.proto when first imported.

The messages and stubs come from grpcio-tools at import time (a dependency of nvidia-riva-client,
so always installed with edged) rather than from generated files checked in: generated code
pins the protobuf runtime to at least the generator's version, which a Jetson's older protobuf
may not meet, while code generated here always matches the installed protobuf.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc


def _load() -> tuple[Any, Any]:
    # grpc.protos_and_services finds the file through sys.path, as imports do.
    root = str(Path(__file__).resolve().parent.parent.parent)
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        return grpc.protos_and_services("edged/proto/edged.proto")
    finally:
        if added:
            sys.path.remove(root)


edged_pb2, edged_pb2_grpc = _load()

__all__ = ["edged_pb2", "edged_pb2_grpc"]
