"""The base class of errors that are the user's to fix (a bad file, a bad flag), not bugs.

The CLI prints these as one line naming the file and the problem and exits non-zero; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An input problem with a message fit for the person who supplied the input."""
