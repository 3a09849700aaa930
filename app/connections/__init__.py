"""Connections: where their state is stored, changed and found."""
