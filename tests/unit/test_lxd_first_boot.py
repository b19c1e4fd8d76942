"""What the lxd provider's first boot puts into the instance: the public key checked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from tracker_deployer.errors import DeployError
from tracker_deployer.providers import lxd


def _key_pair(tmp_path: Path) -> Path:
    private = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@host", "-f", str(private)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return private


def test_the_public_key_line_is_what_goes_into_authorized_keys(tmp_path: Path) -> None:
    private = _key_pair(tmp_path)
    public = private.with_suffix(".pub")
    assert lxd._public_key_line(public) == public.read_text().strip()


def test_a_private_key_given_as_the_public_one_is_refused_and_never_shown(
    tmp_path: Path,
) -> None:
    """Swapped paths sent the private key onto lxc's command line (ps shows it) and
    into the instance's authorized_keys."""
    private = _key_pair(tmp_path)
    with pytest.raises(DeployError) as raised:
        lxd._public_key_line(private)
    assert f"{private} is not an OpenSSH public key" in str(raised.value)
    body = private.read_text().splitlines()[1]
    assert body not in str(raised.value)
    assert "public_key_path" in (raised.value.hint or "")
