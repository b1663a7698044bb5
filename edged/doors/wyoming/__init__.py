"""The Wyoming door (Home Assistant)."""
