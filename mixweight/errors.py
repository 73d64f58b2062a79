"""The one exception type for mistakes a user can make (bad flags, files, configs).

The CLI prints these as one clear line instead of a traceback; everything else is a bug.
A message never carries a whole user value: `brief` echoes a bounded excerpt, and a message
longer than MAX_MESSAGE is cut in the middle (a YAML alias expanded to megabytes stays one short line);
control characters in it (a newline in a path) are written as escapes, so it stays one line.
"""

import difflib
import reprlib

MAX_MESSAGE = 2000  # characters of one error line; the middle of a longer message is left out
BRIEF_LIMIT = 80  # characters of a user value echoed in a message


class MixweightError(ValueError):
    """Bad user input: the message says what was wrong, where, and what would be right."""

    def __init__(self, message: object = "", *args) -> None:
        if isinstance(message, str):
            if not message.isprintable():  # a path or value with a newline must not split the one line
                message = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
            if len(message) > MAX_MESSAGE:
                left = len(message) - MAX_MESSAGE
                half = MAX_MESSAGE // 2
                message = f"{message[:half]} ...({left} characters left out)... {message[-half:]}"
        super().__init__(message, *args)


def first_line(exc: BaseException) -> str:
    """A library's exception as a fragment of one error line (their messages run to several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def did_you_mean(name: object, valid, cutoff: float = 0.5) -> str:
    """The one did-you-mean fragment: "did you mean 'x'? " for the closest valid name, else ""."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=cutoff)
    return f"did you mean '{close[0]}'? " if close else ""


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def brief(value: object, limit: int = BRIEF_LIMIT) -> str:
    """`repr(value)` for a message, at most `limit` characters: bounded in time and size whatever the value
    (reprlib stops at a depth and a length, so a structure of shared references is never expanded)."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
