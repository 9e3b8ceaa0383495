"""Widgets shared by the TUI screens."""
