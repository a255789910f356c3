"""User-facing errors: one actionable line, shown by the CLI without a traceback."""

from __future__ import annotations


class PersonalignError(Exception):
    """An error caused by input or environment that the user can fix; the message says how."""


class ProfileError(PersonalignError):
    """A profile file is missing, unreadable or invalid."""


class DataError(PersonalignError):
    """A data file or data set is missing or malformed."""
