"""The protocol-free speech services every front door calls: ASR and TTS sessions over the
model registry, admission control and metrics (see `edged.service.context`)."""
