"""The one exception a user can cause.

Anything raised as :class:`RegodeError` reaches the command line as a single
``regode: error: ...`` line and a non-zero exit code; every other exception is
a bug and keeps its traceback.
"""


class RegodeError(Exception):
    """A problem with the user's input, files or options (not a bug in regode)."""
