"""Domain errors that services raise; views and consumers map them to what their clients see.

Services never raise HTTP exceptions: a view turns :class:`NotFound` into a 404 page (see
``chat.views._common``), the websocket consumer into an ``error`` frame.
"""

from __future__ import annotations


class NotFound(Exception):
    """A user-owned object that does not exist or belongs to someone else (the same to the caller)."""


class PresetError(ValueError):
    """Input a user can fix (a bad name, panel or import file); the message says how."""
