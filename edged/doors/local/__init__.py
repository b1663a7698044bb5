"""The machine's own microphone and speaker."""
