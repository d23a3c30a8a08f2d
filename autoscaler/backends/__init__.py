"""Backends that run workers: local processes (docker and kubernetes come later)."""
