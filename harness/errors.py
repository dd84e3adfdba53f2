"""The one error type a user can cause and fix: the CLI prints its message and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a field, a name, a path, an address). The message is one line naming it."""
