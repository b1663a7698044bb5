"""The daemon around the doors: lifecycle, supervisor, systemd, probes and metrics port, security."""
