"""Audio: sample formats and resampling for the pipelines (`resample`, numpy only, no I/O), and
this machine's sound devices through PyAudio (`devices`, for the daemon and the CLI)."""
