"""``Say``: how long operations report progress, one line per call; and
:func:`printable`, the one way text from elsewhere (a host, a config) reaches the
operator's terminal.

The CLI passes a function that prints and flushes; tests pass ``list.append``.
"""

from __future__ import annotations

from collections.abc import Callable

Say = Callable[[str], None]


def printable(text: str, keep: str = "") -> str:
    """``text`` with every character a terminal could obey escaped (``\\x1b``, ``\\r``,
    ``\\u202e``...): control and format characters, line and paragraph separators.
    Characters in ``keep`` (say, ``"\\n"``) pass as they are."""
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)
