"""`python -m tests.server_harness CONFIG`: edged's server plus a test-only servicer.

`edgedtest.Hold/Hold` (raw bytes, no proto) takes "SECONDS[:MODEL]": it holds one of at most
MAX_STREAMS "test" admission slots for SECONDS (using MODEL through the registry, which loads it
if lazy), answering RESOURCE_EXHAUSTED when full, as the ASR and TTS servicers do.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import grpc

from edged.config import load_settings
from edged.daemon.app import serve
from edged.doors.grpc.context import ServerContext
from edged.errors import ResourceExhaustedError

SERVICE = "edgedtest.Hold"
METHOD = f"/{SERVICE}/Hold"
MAX_STREAMS = 8


def install(ctx: ServerContext) -> list[str]:
    """Register the Hold servicer."""

    async def hold(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seconds, _, model = request.decode().partition(":")
        try:
            async with ctx.services.admission.stream("test", MAX_STREAMS):
                if model:
                    await ctx.services.registry.use(model)
                await asyncio.sleep(float(seconds))
        except ResourceExhaustedError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        return b"done"

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Hold": grpc.unary_unary_rpc_method_handler(hold)})
    ctx.server.add_generic_rpc_handlers((handler,))
    return [SERVICE]


if __name__ == "__main__":
    settings, _ = load_settings(Path(sys.argv[1]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(serve(settings, [install])))
