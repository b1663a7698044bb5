"""Audio helpers shared by the pipelines: sample formats and resampling (numpy only, no I/O)."""
