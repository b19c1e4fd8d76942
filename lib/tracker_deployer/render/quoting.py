"""Quote values for each file format we render, so the consumer reads back exactly
the original value (passwords may contain any printable character).

Each function is tested against the real consumer: bash for :func:`shell`,
Docker Compose for :func:`dotenv`, a TOML parser for :func:`toml`, a YAML
parser for :func:`yaml`, MariaDB for :func:`sql_string`.
"""

from __future__ import annotations

from urllib.parse import quote as _url_quote


def shell(value: str) -> str:
    """POSIX shell single quotes; an embedded ``'`` becomes ``'\\''``.

    This is also the grammar ``backup.sh`` parses (without executing anything).
    """
    return "'" + value.replace("'", "'\\''") + "'"


def dotenv(value: str) -> str:
    """A value for a Docker Compose ``.env`` file: always double quotes.

    Inside double quotes compose-go turns ``\\\\``, ``\\"`` and ``\\$`` back into
    ``\\``, ``"`` and a literal ``$``; every backslash written starts one of
    those three escapes. Single quotes cannot hold every value: compose-go reads
    ``\\'`` there as an escaped quote, so a value ending in ``\\`` would run on
    past its closing quote. Values never hold control characters (the config
    refuses them), so no other escape is needed.
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return '"' + escaped + '"'


def sql_string(value: str) -> str:
    """A MySQL/MariaDB string literal for a session whose sql_mode has
    NO_BACKSLASH_ESCAPES (the statements that use it set it first): there only
    ``'`` is special, and it is written twice. Names and secrets are UTF-8 text
    without control characters (the config refuses them).
    """
    return "'" + value.replace("'", "''") + "'"


def mysql_image_env(value: str) -> str:
    """A password for the MySQL image's ``MYSQL_ROOT_PASSWORD``/``MYSQL_PASSWORD``.

    The official image's entrypoint (docker-library/mysql, docker_setup_db) pastes
    them unescaped between ``'`` into SQL (the default sql_mode: backslash escapes)
    and between ``"`` into a client option file. ``\\``, ``'`` and ``"`` behind a
    backslash read back as themselves in both; no other character is special in
    either. Checked against the real MariaDB server and client in
    tests/integration/test_mysql_passwords.py; the entrypoint of the MariaDB double
    (test-doubles/images/mariadb) pastes the values as the official image does.
    """
    return value.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"')


# sh that sets MYSQL_PWD (exported) to the root password itself, inside a MySQL
# container whose MYSQL_ROOT_PASSWORD holds it as :func:`mysql_image_env` wrote it.
# No single quote in it: it goes inside sh -c '...'.
MYSQL_PWD_FROM_IMAGE_ENV = (
    r'MYSQL_PWD="$(printf "%s" "${MYSQL_ROOT_PASSWORD}" | sed "s/\\\\\\(.\\)/\\1/g")"; '  # noqa: S105 - no password in it
    "export MYSQL_PWD"
)


def toml(value: str) -> str:
    """A TOML basic string (double quotes, backslash escapes)."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _yaml_printable(code: int) -> bool:
    # NEL, LS and PS are line breaks to YAML (folded in quotes): escape them too.
    if code in (0x2028, 0x2029):
        return False
    return (
        0x20 <= code <= 0x7E
        or 0xA0 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


def yaml(value: str) -> str:
    """A YAML double-quoted scalar; anything YAML calls non-printable is escaped."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif _yaml_printable(code):
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02X}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04X}")
        else:
            out.append(f"\\U{code:08X}")
    out.append('"')
    return "".join(out)


def url_part(value: str) -> str:
    """Percent-encode a URL user-info or path part (everything but unreserved)."""
    return _url_quote(value, safe="")
