"""The one exception class for a user's mistake (bad input, a refused file, a busy folder).

:class:`UserError` is a ValueError, so code and tests that catch ValueError
keep working.  The CLI prints it as one line, ``pyvlmx <command>: error:
<message>``, and exits with code 2; anything else that escapes a command is
treated as a bug (traceback kept, with where to report it).  Raise it where
the message alone tells the user what to change.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input that the message explains; the CLI prints it as one line (exit code 2)."""
