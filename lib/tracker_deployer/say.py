"""``Say``: how long operations report progress, one line per call.

The CLI passes a function that prints and flushes; tests pass ``list.append``.
"""

from __future__ import annotations

from collections.abc import Callable

Say = Callable[[str], None]
