"""backup.conf: backup.sh's own parser reads what bash reads (issue 11, extra item).

backup.sh never sources backup.conf; it parses a subset of shell assignments itself.
The parser runs here through bash, by sourcing backup.sh (it is sourceable), and is
compared with bash's own reading of the same file (``. backup.conf``). Whatever
backup.sh accepts must read back exactly as bash reads it; the quoting a person or
Python's ``shlex.quote`` writes must be accepted.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tracker_deployer.render import quoting

from tests.helpers import REPO_ROOT

BACKUP_SH = REPO_ROOT / "docker" / "backup" / "backup.sh"
ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}

# For each file: "ok" and the value of V as backup.sh reads it, or "refused" and
# the error (its load_config exits 2 through die, so each file runs in a subshell).
_BACKUP_SH_READS = r"""
source "$1"
shift
for file in "$@"; do
  if value="$( (load_config "${file}" && printf '%s.' "${CONFIG[V]-}") 2>"${file}.err")"; then
    printf 'ok\0%s\0' "${value%.}"
  else
    printf 'refused\0%s\0' "$(cat "${file}.err")"
  fi
done
"""
_BASH_READS = r"""
for file in "$@"; do
  ( . "${file}"; printf '%s\0' "${V-}" )
done
"""


def _run(script: str, *args: str, cwd: Path) -> list[str]:
    result = subprocess.run(
        ["bash", "-c", script, "bash", *args],
        capture_output=True,
        check=True,
        cwd=cwd,
        env=ENV,
        timeout=120,
    )
    return result.stdout.decode("utf-8").split("\0")[:-1]


def _write(directory: Path, texts: list[str]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for index, text in enumerate(texts):
        path = directory / f"c{index}.conf"
        path.write_bytes(text.encode("utf-8"))
        files.append(str(path))
    return files


def backup_sh_reads(directory: Path, texts: list[str]) -> list[tuple[str, str]]:
    """(verdict, value or error) per backup.conf text, as backup.sh parses it."""
    out = _run(_BACKUP_SH_READS, str(BACKUP_SH), *_write(directory, texts), cwd=directory)
    return list(zip(out[0::2], out[1::2], strict=True))


def bash_reads(directory: Path, texts: list[str]) -> list[str]:
    """The value of V per text, as bash reads it by sourcing the file."""
    return _run(_BASH_READS, *_write(directory, texts), cwd=directory)


# --------------------------------------------------------------------------- quoting styles

_DQ_SPECIAL = '\\"$`'


def double_quoted(value: str) -> str:
    """Every special character escaped inside double quotes."""
    return '"' + "".join("\\" + c if c in _DQ_SPECIAL else c for c in value) + '"'


def double_quoted_lazily(value: str) -> str:
    """As a person writes it: a backslash is escaped only where bash would eat it."""
    out = []
    for index, char in enumerate(value):
        following = value[index + 1 : index + 2]
        if char in '"$`' or (char == "\\" and (following == "" or following in _DQ_SPECIAL)):
            out.append("\\" + char)
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def double_quoted_over_lines(value: str) -> str:
    """Double quotes with a backslash-newline after every third character."""
    quoted = double_quoted(value)[1:-1]
    # Split only between escapes, never inside one.
    parts, index = [], 0
    while index < len(quoted):
        step = 2 if quoted[index] == "\\" else 1
        parts.append(quoted[index : index + step])
        index += step
    lines = ["".join(parts[start : start + 3]) for start in range(0, len(parts), 3)]
    return '"' + "\\\n".join(lines) + '"'


def backslashed(value: str) -> str:
    """No quotes at all: a backslash before every character."""
    return "".join("\\" + c for c in value)


STYLES = {
    "renderer": quoting.shell,
    "shlex": shlex.quote,
    "double": double_quoted,
    "double-lazy": double_quoted_lazily,
    "double-lines": double_quoted_over_lines,
    "backslashed": backslashed,
}

PRINTABLE = st.characters(exclude_categories=["Cc", "Cs"])
AWKWARD = st.sampled_from(["'", '"', "\\", "$", "`", " ", "#", "\\n", "$(", "${", "!", "é"])
VALUES = st.lists(st.one_of(AWKWARD, st.text(PRINTABLE, min_size=1, max_size=4)), max_size=8).map(
    "".join
)


def mixed(draw: st.DrawFn, value: str) -> str:
    """The value cut into pieces, each quoted in a style of its own (concatenated)."""
    cuts = sorted(draw(st.sets(st.integers(0, len(value)), max_size=3)))
    pieces = [value[a:b] for a, b in zip([0, *cuts], [*cuts, len(value)], strict=True)]
    styles = [draw(st.sampled_from(sorted(STYLES))) for _ in pieces]
    return "".join(STYLES[style](piece) for style, piece in zip(styles, pieces, strict=True))


@st.composite
def quoted_values(draw: st.DrawFn) -> tuple[str, str]:
    value = draw(VALUES)
    style = draw(st.sampled_from([*sorted(STYLES), "mixed"]))
    text = mixed(draw, value) if style == "mixed" else STYLES[style](value)
    return value, text


# --------------------------------------------------------------------------- properties


def test_hardening_extra_backup_conf_grammar_shlex_quote_is_read_like_bash(
    tmp_path: Path,
) -> None:
    values = ["it's", "'", "''", 'say "hi"', "a'b\"c$d`e\\f", "", " x ", "é'ñ"]
    texts = [f"V={shlex.quote(value)}\n" for value in values]

    assert backup_sh_reads(tmp_path, texts) == [("ok", value) for value in values]
    assert bash_reads(tmp_path, texts) == values


@settings(max_examples=20, deadline=None)
@given(cases=st.lists(quoted_values(), min_size=20, max_size=20))
def test_hardening_extra_backup_conf_grammar_every_quoting_style_reads_back_exactly(
    cases: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("conf")
    values = [value for value, _ in cases]
    texts = [f"# a comment\nV={text}\n" for _, text in cases]

    assert bash_reads(directory, texts) == values  # the styles are right
    assert backup_sh_reads(directory, texts) == [("ok", value) for value in values]


# Shell syntax in small pieces: whatever backup.sh accepts, bash must read the same way.
SHELL_PIECES = st.sampled_from(
    [
        *("'", '"', "\\", "$", "`", " ", "#", "\n", "a", "b", "é", "{", "}", "(", ")"),
        *(";", "|", "&", "<", ">", "~", "*", "=", "\\\n", "\\\\", '\\"', "\\$", "\\`", "$a"),
        "${a}",
    ]
)
ASSIGNMENTS = st.lists(SHELL_PIECES, min_size=1, max_size=10).map(lambda p: "V=" + "".join(p))


@settings(max_examples=30, deadline=None)
@given(texts=st.lists(ASSIGNMENTS, min_size=25, max_size=25))
def test_hardening_extra_backup_conf_grammar_what_backup_sh_accepts_bash_reads_alike(
    texts: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = tmp_path_factory.mktemp("conf")
    # Plain assignments every example holds: a backup.sh that refused everything
    # would otherwise pass (nothing accepted, nothing compared).
    plain = ["V=ab\n", "V='a b;c'\n", 'V="x y"\n']
    texts = plain + [text + "\n" for text in texts]

    verdicts = backup_sh_reads(directory, texts)

    assert verdicts[: len(plain)] == [("ok", "ab"), ("ok", "a b;c"), ("ok", "x y")]
    accepted = [
        (text, value)
        for text, (verdict, value) in zip(texts, verdicts, strict=True)
        if verdict == "ok"
    ]
    # Only what backup.sh accepted goes to bash: it holds nothing bash would run.
    got = bash_reads(directory / "accepted", [text for text, _ in accepted])
    assert got == [value for _, value in accepted], accepted
    assert not list(directory.rglob("[ab]")), "something was redirected to a file"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('V="a$b"', "'$' inside double quotes (bash would expand it"),
        ('V="$(touch pwned)"', "'$' inside double quotes"),
        ('V="a`touch pwned`"', "'`' inside double quotes (bash would expand it"),
        ('V="unterminated', "unterminated double quote"),
        ('V="a\\', "unterminated double quote (a backslash ends the file)"),
        ('V="tab\there"', "control character in the value"),
        ('V="crlf"\r', "carriage return in the value"),
    ],
)
def test_hardening_extra_backup_conf_grammar_refuses_what_bash_would_expand(
    text: str, error: str, tmp_path: Path
) -> None:
    ((verdict, message),) = backup_sh_reads(tmp_path, [text])

    assert verdict == "refused"
    assert error in message
    assert "c0.conf:1: malformed value for V" in message
    assert "pwned" not in message
    assert not (tmp_path / "pwned").exists()
