"""edged: an edge speech appliance daemon (Riva-compatible ASR and TTS without containers)."""

__version__ = "0.1.0"
