"""The project's error hierarchy.

Every expected failure is a :class:`DeployError`: a one-line message saying what
is wrong and where, plus a hint saying how to fix it. The CLI turns these into
one clean message and a non-zero exit; anything else is a bug.
"""

from __future__ import annotations

from tracker_deployer.say import printable


class DeployError(Exception):
    """An expected failure with a message and a hint for the operator."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} — hint: {self.hint}"
        return self.message


class ConfigError(DeployError, ValueError):
    """An environment config is missing, unreadable or invalid.

    ``issues`` holds every problem found (all are reported at once).
    """

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        lines = [issue.format(source) for issue in self.issues]
        super().__init__("\n".join(lines))

    def __str__(self) -> str:
        return self.message


class ConfigIssue:
    """One problem in a config: where (JSON path), what, and how to fix it."""

    __slots__ = ("hint", "message", "path")

    def __init__(self, path: str, message: str, hint: str | None = None) -> None:
        self.path = path
        self.message = message
        self.hint = hint

    def format(self, source: str) -> str:
        # A key is the config's own text: escape what a terminal would obey (ESC, newline).
        path = printable(self.path)
        where = f"at '{path}'" if self.path else "at the top level"
        text = f"{source}: {where}: {self.message}"
        if self.hint:
            text += f" — hint: {self.hint}"
        return text

    def __repr__(self) -> str:
        return f"ConfigIssue({self.path!r}, {self.message!r}, {self.hint!r})"


class RenderError(DeployError):
    """A template could not be rendered (a bug in a template, named with its line)."""


class RemoteError(DeployError):
    """Something on the target host failed or is missing."""

    exit_code = 3


class ProvisionUnsupported(DeployError):
    """This provider cannot create hosts here; exit 2 with one line saying what to do."""

    exit_code = 2
