"""The one exception type for mistakes a user can make (bad flags, files, configs).

The CLI prints these as one clear line instead of a traceback; everything else is a bug.
"""


class MixweightError(ValueError):
    """Bad user input: the message says what was wrong, where, and what would be right."""


def first_line(exc: BaseException) -> str:
    """A library's exception as a fragment of one error line (their messages run to several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
