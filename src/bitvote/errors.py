"""The one exception type for user mistakes.

Anything a user can get wrong (a voter spec, a model name, a data folder, a checkpoint)
raises :class:`BitvoteError` with a one-line message that names the input. The CLI prints
that line and exits non-zero; anything else is a bug and keeps its traceback.
"""

__all__ = ["BitvoteError"]


class BitvoteError(ValueError):
    """A user-facing error: its message is one line naming the offending input."""
