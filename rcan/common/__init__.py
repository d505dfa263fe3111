"""Helpers shared by the project's trainers (checkpoint files)."""
