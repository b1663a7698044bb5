"""Speech pipelines: pure Python and numpy over backend sessions (no transport code)."""
