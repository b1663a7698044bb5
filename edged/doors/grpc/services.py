"""The gRPC services the server offers, each added by an installer (see ServiceInstaller).

A service module provides `install(ctx) -> list[str]`: it adds its servicer to `ctx.server` and
returns the full names of the services it registered (for health and reflection). A servicer
only translates messages: it calls the speech services in `ctx.services` (`edged.service.asr`,
`edged.service.tts`: model choice and loading, admission, metrics, batching) and answers their
errors with `edged.doors.grpc.status.abort`, the one map from edged's exceptions to status codes.
Health for `nvidia.riva.asr.RivaSpeechRecognition` and `nvidia.riva.tts.RivaSpeechSynthesis`
follows their models; the server sets it. Security is the server's: TLS, the API key
(UNAUTHENTICATED) and the max message size apply before a servicer sees a call.
"""

from __future__ import annotations

from edged.doors.grpc.context import ServiceInstaller


def default_installers() -> list[ServiceInstaller]:
    """Every service this edged serves, in registration order."""
    from edged.doors.grpc import asr, tts

    installers: list[ServiceInstaller] = [asr.install, tts.install]
    return installers
