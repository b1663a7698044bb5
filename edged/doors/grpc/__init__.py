"""The gRPC door: the Riva API (ASR, TTS) and edged.v1, with health and reflection."""
