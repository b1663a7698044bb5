"""The gRPC services the server offers, each added by an installer (see ServiceInstaller).

A service module provides `install(ctx) -> list[str]`: it adds its servicer to `ctx.server` and
returns the full names of the services it registered (for health and reflection). Servicers
look models up at request time, since models load after the port is open: `ctx.models[name]`,
or `await ctx.registry.use(name)`, which also loads a model left unloaded by `lazy_loading` or
`model_idle_unload_s` and marks it used (ModelStateError if it cannot be loaded: answer
UNAVAILABLE). Health for `nvidia.riva.asr.RivaSpeechRecognition` and
`nvidia.riva.tts.RivaSpeechSynthesis` follows their models; the server sets it.

What `ctx` gives servicers beyond models (`edged.server.admission`, `edged.server.metrics`):

- admission: wrap every request or stream in `async with ctx.admission.stream("asr", limit):`
  (`limit` is the service's own max concurrent streams setting; 0 for none). When the service
  is full or memory is short it raises `edged.errors.ResourceExhaustedError` at once: answer
  `context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))`. Open streams are counted for
  `edged status`, `/metrics`, and the drain at shutdown (within `shutdown_grace_s`).
- metrics: `with metrics.track_request("asr", model):` counts requests and failures;
  `await metrics.run_inference(ctx.executor, model, fn, *args)` runs blocking inference on the
  inference executor and records queue and compute time; `metrics.AUDIO_SECONDS.labels("asr",
  model).inc(seconds)` counts audio.
- security is the server's: TLS, the API key (UNAUTHENTICATED) and the max message size apply
  before a servicer sees a call.
"""

from __future__ import annotations

from edged.server.app import ServiceInstaller


def default_installers() -> list[ServiceInstaller]:
    """Every service this edged serves, in registration order."""
    from edged.server import asr, tts

    installers: list[ServiceInstaller] = [asr.install, tts.install]
    return installers
