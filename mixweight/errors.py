"""The one exception type for mistakes a user can make (bad flags, files, configs).

The CLI prints these as one clear line instead of a traceback; everything else is a bug.
"""

import difflib


class MixweightError(ValueError):
    """Bad user input: the message says what was wrong, where, and what would be right."""


def first_line(exc: BaseException) -> str:
    """A library's exception as a fragment of one error line (their messages run to several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def did_you_mean(name: object, valid, cutoff: float = 0.5) -> str:
    """The one did-you-mean fragment: "did you mean 'x'? " for the closest valid name, else ""."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=cutoff)
    return f"did you mean '{close[0]}'? " if close else ""
