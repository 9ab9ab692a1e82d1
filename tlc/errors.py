"""Errors that are the user's to fix."""


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the flag or field and what would be valid."""
