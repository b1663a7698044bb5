"""Clients of a running edged (or Riva) server, used by the CLI."""
