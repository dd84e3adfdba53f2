"""Backends that run grid cells: `local` (worker processes on this machine)."""
