"""Ask a running server for its status (edged.v1 Status) and show it."""

from __future__ import annotations

from typing import Any

import grpc

from edged.client.health import open_channel
from edged.errors import DaemonError
from edged.proto import edged_pb2, edged_pb2_grpc


def api_metadata(api_key: str) -> list[tuple[str, str]]:
    """Call metadata carrying the API key (none if empty)."""
    return [("authorization", f"Bearer {api_key}")] if api_key else []


def fetch_status(address: str, credentials: grpc.ChannelCredentials | None = None,
                 api_key: str = "", timeout: float = 3.0) -> dict[str, Any]:
    """The server's status as plain data; DaemonError if it cannot be reached."""
    with open_channel(address, credentials) as channel:
        try:
            resp = edged_pb2_grpc.EdgedStub(channel).Status(
                edged_pb2.StatusRequest(), timeout=timeout, metadata=api_metadata(api_key))
        except grpc.RpcError as exc:
            raise DaemonError(f"No edged answers at {address} ({exc.code().name}: {exc.details()}); "
                              "start it with `edged start`.") from None
    return {
        "version": resp.version, "pid": resp.pid, "listen": resp.listen,
        "uptime_s": round(resp.uptime_s, 1), "health": resp.health,
        "services": {s.name: s.status for s in resp.services},
        "models": [{"name": m.name, "pipeline": m.pipeline, "service": m.service, "state": m.state,
                    "memory_mb": round(m.memory_mb, 1), "reason": m.reason,
                    "idle_s": round(m.idle_s, 1)} for m in resp.models],
        "streams": {s.service: {"active": s.active, "limit": s.limit} for s in resp.streams},
        "memory": {"budget_mb": round(resp.memory_budget_mb), "available_mb": round(resp.memory_available_mb),
                   "rss_mb": round(resp.rss_mb), "high_water_mb": round(resp.memory_high_water_mb)},
        "microphone": {"state": resp.microphone.state or "off", "device": resp.microphone.device,
                       "device_rate": resp.microphone.device_rate, "muted": resp.microphone.muted,
                       "overflows": resp.microphone.overflows, "audio_s": round(resp.microphone.audio_s, 1),
                       "finals": resp.microphone.finals},
        "speaker": {"state": resp.speaker.state or "off", "device": resp.speaker.device,
                    "queued": resp.speaker.queued, "played": resp.speaker.played},
    }
