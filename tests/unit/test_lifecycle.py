"""The host lifecycle's pure parts: the state directory, key creation, host records,
the configure plan and firewall, and the CLI's refusals that need no host."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from tracker_deployer import lifecycle, state
from tracker_deployer.config.model import LxdProvider
from tracker_deployer.errors import DeployError, RemoteError
from tracker_deployer.remote import configure, host_scripts, mysql_passwords
from tracker_deployer.remote import deploy as remote
from tracker_deployer.render import render
from tracker_deployer.render.tree import INVENTORY_LIST_TIMEOUT_SECONDS
from tracker_deployer.topology import derive

import tasks
from tests.helpers import REPO_ROOT, parse, sample_data

# --------------------------------------------------------------------------- state directory


def test_state_root_follows_xdg_state_home_and_ignores_a_relative_one(tmp_path: Path) -> None:
    assert state.root({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "tracker-deployer"
    assert state.root({"XDG_STATE_HOME": "relative/dir"}) == Path(state.SPELLED).expanduser()
    assert state.root({}) == Path("~/.local/state/tracker-deployer").expanduser()


def test_resolve_maps_the_spelled_state_dir_to_xdg(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    spelled = f"{state.SPELLED}/ssh/id_ed25519"
    assert state.resolve(spelled, environ) == tmp_path / "tracker-deployer/ssh/id_ed25519"
    assert state.resolve(spelled, {}) == Path(spelled).expanduser()
    assert state.resolve("/etc/key", environ) == Path("/etc/key")
    # A look-alike prefix is not the state directory.
    assert (
        state.resolve("~/.local/state/tracker-deployer-x/k", environ)
        == Path("~/.local/state/tracker-deployer-x/k").expanduser()
    )


def test_key_pair_is_made_on_first_use_in_the_state_dir_only_once(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    spelled = f"{state.SPELLED}/ssh/id_ed25519"
    private, public, made = state.ensure_key_pair(spelled, spelled + ".pub", environ)
    assert made
    assert private == tmp_path / "tracker-deployer/ssh/id_ed25519"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    assert public.read_text().startswith("ssh-ed25519 ")
    before = private.read_bytes()
    again = state.ensure_key_pair(spelled, spelled + ".pub", environ)
    assert again == (private, public, False)
    assert private.read_bytes() == before


def test_a_lost_public_key_is_derived_from_the_private_one(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    spelled = f"{state.SPELLED}/ssh/id_ed25519"
    _private, public, _ = state.ensure_key_pair(spelled, spelled + ".pub", environ)
    original = public.read_text().split()[:2]
    public.unlink()
    _, _, made = state.ensure_key_pair(spelled, spelled + ".pub", environ)
    assert made
    assert public.read_text().split()[:2] == original


def test_a_missing_key_outside_the_state_dir_is_named_with_how_to_make_it(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path / "state")}
    missing = tmp_path / "keys" / "id_test"
    with pytest.raises(DeployError) as raised:
        state.ensure_key_pair(str(missing), f"{missing}.pub", environ)
    text = str(raised.value)
    assert str(missing) in text
    assert f"ssh-keygen -t ed25519 -N '' -f {missing}" in text
    assert not missing.parent.exists()  # nothing is created outside the state dir


def test_a_passphrase_key_without_its_public_key_is_one_error_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ssh-keygen -y asked for the passphrase on the terminal (or read a stdin nobody
    writes to) and the command ended in a TimeoutExpired traceback after 60 s."""
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    spelled = f"{state.SPELLED}/ssh/id_ed25519"
    private = state.resolve(spelled, environ)
    private.parent.mkdir(parents=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(private)], check=True
    )
    private.with_name("id_ed25519.pub").unlink()
    # ssh-keygen runs in a terminal nobody types at, which is also its stdin unless
    # the deployer says otherwise (ssh-keygen asks a terminal even without stdin).
    terminal, terminal_side = pty.openpty()
    run: Any = subprocess.run

    def in_a_terminal(*args: Any, **kwargs: Any) -> Any:
        def take_the_terminal() -> None:
            os.setsid()
            os.close(os.open(os.ttyname(terminal_side), os.O_RDWR))  # the controlling one

        kwargs.setdefault("stdin", terminal_side)
        return run(*args, **kwargs, preexec_fn=take_the_terminal)

    monkeypatch.setattr(state, "KEY_TIMEOUT_SECONDS", 20)  # bcrypt rounds under load
    monkeypatch.setattr(subprocess, "run", in_a_terminal)
    try:
        with pytest.raises(DeployError, match="has a passphrase") as raised:
            state.ensure_key_pair(spelled, spelled + ".pub", environ)
    finally:
        os.close(terminal)
        os.close(terminal_side)
    assert f"ssh-keygen -y -f {private} > {private}.pub" in (raised.value.hint or "")
    assert not private.with_name("id_ed25519.pub").exists()


def test_ssh_keygen_that_does_not_finish_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hangs(command: list[str], **kwargs: Any) -> Any:
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(subprocess, "run", hangs)
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    spelled = f"{state.SPELLED}/ssh/id_ed25519"
    with pytest.raises(DeployError, match=r"did not finish within 60 s") as raised:
        state.ensure_key_pair(spelled, spelled + ".pub", environ)
    assert "make the key pair" in raised.value.message
    assert "ssh-keygen" in (raised.value.hint or "")


def test_host_record_round_trip_and_forget(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    record = state.HostRecord("lxd", "10.187.33.9", 22, "tracker-sandbox")
    path = state.write_record("sandbox-sqlite", record, environ)
    assert path == tmp_path / "tracker-deployer/hosts/sandbox-sqlite.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert state.read_record("sandbox-sqlite", environ) == record
    known = state.write_known_hosts(
        "sandbox-sqlite", "10.187.33.9", 22, ["ssh-ed25519 AAAA"], environ
    )
    assert known.read_text() == "10.187.33.9 ssh-ed25519 AAAA\n"
    state.forget("sandbox-sqlite", environ)
    assert state.read_record("sandbox-sqlite", environ) is None
    assert not known.exists()


def test_host_records_written_at_once_by_two_commands_all_land_whole(tmp_path: Path) -> None:
    """Each write had one fixed temporary name: two commands writing one record
    (provision and register, say) removed or replaced each other's (FileExistsError,
    FileNotFoundError)."""
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    records = [state.HostRecord("existing", f"10.0.0.{n}", 22, "") for n in range(1, 9)]
    failures: list[BaseException] = []

    def write(record: state.HostRecord) -> None:
        try:
            for _ in range(150):
                state.write_record("prod", record, environ)
        except BaseException as error:  # collected, asserted below
            failures.append(error)

    threads = [threading.Thread(target=write, args=(record,)) for record in records]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert state.read_record("prod", environ) in records
    path = state.record_path("prod", environ)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_a_host_record_that_cannot_be_written_names_the_file(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    path = state.record_path("prod", environ)
    path.mkdir(parents=True)  # in the way: the rename over it fails
    with pytest.raises(DeployError) as raised:
        state.write_record("prod", state.HostRecord("existing", "10.0.0.1", 22, ""), environ)
    assert str(raised.value).startswith(f"cannot write {path}: ")
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_host_record_write_interrupted_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    record = state.HostRecord("existing", "10.0.0.1", 22, "")
    path = state.write_record("prod", record, environ)

    def interrupted(*_args: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the record is written

    monkeypatch.setattr(os, "fchmod", interrupted)
    with pytest.raises(KeyboardInterrupt):
        state.write_record("prod", state.HostRecord("existing", "10.0.0.2", 22, ""), environ)
    monkeypatch.undo()
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert state.read_record("prod", environ) == record


def test_a_broken_host_record_is_a_clear_error(tmp_path: Path) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    path = state.record_path("x", environ)
    path.parent.mkdir(parents=True)
    path.write_text('{"provider": "lxd"}')
    with pytest.raises(DeployError, match=r"is not a host record .* `inv provision --env x`"):
        state.read_record("x", environ)


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe not utf-8",  # UnicodeDecodeError before
        b'{"provider": "lxd", "host": "10.0.0.5", "port": 1e400}',  # OverflowError before
        b"[" * 100000,  # RecursionError before
        b'{"provider": "lxd", "host": "10.0.0.5", "port": 22.9}',  # was taken as 22
        b'{"provider": "lxd", "host": "10.0.0.5", "port": true}',  # was taken as 1
        b'{"provider": "lxd", "host": {"a": 1}, "port": 22}',  # was "{'a': 1}"
        b'{"provider": "lxd", "host": "10.0.0.5,github.com", "port": 22}',
        b'{"provider": "lxd", "host": "10.0.0.5", "port": 0}',
    ],
)
def test_a_damaged_host_record_is_one_clear_error(tmp_path: Path, content: bytes) -> None:
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    path = state.record_path("x", environ)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DeployError, match=r"is not a host record|names no usable host"):
        state.read_record("x", environ)


@pytest.mark.parametrize(
    "content",
    [
        b'{"provider": "lxd", "host": "10.0.0.5,github.com", "port": 22}',
        b'{"provider": "lxd", "host": "10.0.0.5", "port": 0}',
    ],
)
def test_a_host_record_with_no_usable_host_says_how_to_fix_it(
    tmp_path: Path, content: bytes
) -> None:
    """'names no usable host' came without a hint (a review)."""
    environ = {"XDG_STATE_HOME": str(tmp_path)}
    path = state.record_path("x", environ)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(DeployError) as caught:
        state.read_record("x", environ)
    assert str(caught.value).startswith(f"{path} names no usable host: ")
    assert str(caught.value).endswith(
        " — hint: remove it, then `inv provision --env x` or `inv register --env x`"
    )


@pytest.mark.parametrize("host", ["10.0.0.5,github.com", "10.0.0.5 github.com", "", "a\nb", "*"])
def test_no_known_hosts_line_is_written_for_what_is_no_host(tmp_path: Path, host: str) -> None:
    """An LXD instance reports its own address: `10.0.0.5,github.com` would make the
    operator's known_hosts trust the instance's key for github.com."""
    known = tmp_path / "known_hosts"
    known.write_text("github.com ssh-ed25519 REAL\n")
    with pytest.raises(DeployError, match="is not a host address or name"):
        state.merge_known_hosts(known, host, 22, ["ssh-ed25519 INSTANCE"])
    assert known.read_text() == "github.com ssh-ed25519 REAL\n"
    with pytest.raises(DeployError):
        state.known_hosts_text(host, 22, ["ssh-ed25519 INSTANCE"])


def test_known_hosts_text_brackets_non_default_ports() -> None:
    keys = ["ssh-ed25519 AAAA1", "ecdsa-sha2-nistp256 AAAA2"]
    assert state.known_hosts_text("127.0.0.1", 2222, keys) == (
        "[127.0.0.1]:2222 ssh-ed25519 AAAA1\n[127.0.0.1]:2222 ecdsa-sha2-nistp256 AAAA2\n"
    )
    assert state.known_hosts_text("10.0.0.5", 22, keys[:1]) == "10.0.0.5 ssh-ed25519 AAAA1\n"


# --------------------------------------------------------------------------- configure plan


def test_configure_plan_covers_every_piece_for_debian_12() -> None:
    env = parse(sample_data("manual-test-mysql"))
    steps = configure.plan(env, configure.HostOs("debian", "12", "Debian GNU/Linux 12"))
    names = " | ".join(step.name for step in steps)
    for piece in (
        "docker.io",
        "cron",
        "logrotate",
        "util-linux",
        "curl",
        "unattended-upgrades",
        "nftables",
        f"docker-compose {configure.COMPOSE_DEB_VERSION} from trixie",
        "docker log rotation",
        "unattended security upgrades",
        "firewall (nftables): SSH 22, 1212/tcp, 3000/tcp, 7070/tcp, 6969/udp",
    ):
        assert piece in names
    # Every step has a check: a second run that finds everything in place changes nothing.
    assert all(step.check and step.apply for step in steps)


def test_ubuntu_24_04_maps_compose_to_its_own_package() -> None:
    env = parse(sample_data("manual-test-sqlite"))
    steps = configure.plan(env, configure.HostOs("ubuntu", "24.04", "Ubuntu 24.04 LTS"))
    assert "docker-compose-v2" in steps[0].name
    assert "trixie" not in steps[1].apply


def _packages_step(tmp_path: Path, installed: set[str], script: str) -> str:
    """``script`` (a packages step's part) run with a dpkg-query that knows ``installed``;
    its output."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "dpkg-query"
    fake.write_text(
        "#!/bin/sh\n"  # dpkg-query -W -f='${Status}' NAME
        f'case " {" ".join(sorted(installed))} " in *" $3 "*) printf "install ok installed";; '
        "*) exit 1;; esac\n"
    )
    fake.chmod(0o755)
    environ = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=False, env=environ
    )
    return " ".join([str(done.returncode), *done.stdout.split()])


def test_configure_leaves_an_engine_from_dockers_own_packages_in_place(tmp_path: Path) -> None:
    """Debian's docker.io conflicts with docker-ce: on a host whose operator installed
    Docker's own packages, the step's check never passed and its install had apt
    remove the engine (and stop every other stack's containers). docker-ce now stands
    for docker.io, and apt may remove nothing (--no-remove)."""
    packages = configure.PACKAGES["debian 12"]
    others = set(packages) - {"docker.io"}
    wanted = configure.wanted_packages(packages) + 'printf %s "$wanted"'
    assert _packages_step(tmp_path, others | {"docker-ce"}, wanted) == "0"
    assert _packages_step(tmp_path, others, wanted) == "0 docker.io"
    assert _packages_step(tmp_path, {"docker-ce"}, wanted).split()[1:] == sorted(
        others, key=packages.index
    )
    [step, *_] = configure.plan(
        parse(sample_data("manual-test-sqlite")), configure.HostOs("debian", "12", "Debian 12")
    )
    assert _packages_step(tmp_path, others | {"docker-ce"}, step.check) == "0"
    assert _packages_step(tmp_path, others, step.check).startswith("1")
    assert "--no-remove $wanted" in step.apply


def test_compose_version_is_the_one_setup_sh_pins() -> None:
    setup = (REPO_ROOT / "scripts/setup.sh").read_text(encoding="utf-8")
    pinned = re.search(r'^readonly COMPOSE_DEB_VERSION="([^"]+)"', setup, re.MULTILINE)
    assert pinned is not None
    assert pinned.group(1) == configure.COMPOSE_DEB_VERSION


@pytest.mark.parametrize(
    ("output", "supported"),
    [
        ("debian\t12\tDebian GNU/Linux 12 (bookworm)\n", True),
        ("ubuntu\t24.04\tUbuntu 24.04.1 LTS\n", True),
        ("debian\t11\tDebian GNU/Linux 11 (bullseye)\n", False),
        ("centos\t9\tCentOS Stream 9\n", False),
        ("", False),
    ],
)
def test_parse_os_and_supported_systems(output: str, supported: bool) -> None:
    assert (configure.parse_os(output).key in configure.SUPPORTED) is supported


def test_unsupported_os_is_one_line_naming_what_was_found() -> None:
    found = configure.parse_os("centos\t9\tCentOS Stream 9\n")
    with pytest.raises(DeployError) as raised:
        configure.require_supported(found, "203.0.113.7")
    text = str(raised.value)
    assert "\n" not in text
    assert "'CentOS Stream 9'" in text
    assert "Debian 12" in text


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        ("E: Could not get lock /var/lib/dpkg/lock-frontend. It is held by process 42", "locked"),
        ("E: Unable to acquire the dpkg frontend lock", "locked"),
        ("Err:1 http://deb.debian.org bookworm InRelease\n  Temporary failure resolving", "mirror"),
        ("E: Failed to fetch http://x/y.deb  Connection failed", "mirror"),
    ],
)
def test_apt_lock_and_offline_are_named_and_say_a_rerun_resumes(output: str, fragment: str) -> None:
    error = configure.apt_failure("h1", output)
    assert error is not None
    assert fragment in str(error)
    assert "resumes" in str(error)


def test_other_apt_failures_are_not_misreported() -> None:
    assert configure.apt_failure("h1", "E: Unable to locate package nosuch") is None


def test_firewall_allows_ssh_and_exactly_the_published_ports() -> None:
    data = sample_data("manual-test-mysql")
    data["ssh_credentials"]["port"] = 2200
    env = parse(data)
    rules = configure.firewall_rules(env)
    assert "policy drop;" in rules
    assert "tcp dport { 2200 } accept" in rules
    assert "tcp dport { 1212, 3000, 7070 } accept" in rules
    assert "udp dport { 6969 } accept" in rules
    assert "3306" not in rules  # MySQL is never published
    assert "9090" not in rules  # Prometheus listens on the host's loopback only
    assert "1313" not in rules  # the health-check API: on the host's 127.0.0.1
    assert "flush ruleset" not in rules  # Docker's and LXD's tables stay


def test_firewall_lets_in_the_port_the_deployer_connects_to() -> None:
    """A host registered with --port 2222: every task connects there, and the rules
    let in only ssh_credentials.port (22), so the next command was locked out."""
    env = parse(sample_data("manual-test-mysql"))
    assert "tcp dport { 22, 2222 } accept" in configure.firewall_rules(env, [2222])
    host_os = configure.HostOs("debian", "12", "Debian 12")
    [firewall] = [s for s in configure.plan(env, host_os, [2222]) if "firewall" in s.name]
    assert firewall.name.startswith("firewall (nftables): SSH 22, 2222,")
    assert "tcp dport { 22, 2222 } accept" in firewall.apply
    # Loaded before the files are written: a failed load leaves the check failing.
    assert firewall.apply.index("nft -f /dev/stdin") < firewall.apply.index(
        str(configure.FIREWALL_FILE)
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="nft -c needs root (CAP_NET_ADMIN)")
@pytest.mark.parametrize("name", ["manual-test-mysql", "manual-test-sqlite-no-backup"])
def test_firewall_rules_are_accepted_by_nft(name: str, tmp_path: Path) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if not Path(nft).exists():
        pytest.fail("nft is missing: run scripts/setup.sh (it installs nftables)")
    rules = tmp_path / "rules.nft"
    rules.write_text(configure.firewall_rules(parse(sample_data(name))))
    checked = subprocess.run(
        [nft, "-c", "-f", str(rules)], capture_output=True, text=True, check=False, timeout=60
    )
    assert checked.returncode == 0, checked.stderr


def test_content_checks_compare_the_exact_bytes(tmp_path: Path) -> None:
    target = tmp_path / "daemon.json"
    check = configure._has_content(str(target), configure.daemon_json())
    assert subprocess.run(["bash", "-c", check], check=False).returncode == 1
    write = configure._write(str(target), configure.daemon_json())
    assert subprocess.run(["bash", "-c", write], check=False).returncode == 0
    assert json.loads(target.read_text())["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert subprocess.run(["bash", "-c", check], check=False).returncode == 0
    target.write_text(target.read_text() + " ")
    assert subprocess.run(["bash", "-c", check], check=False).returncode == 1


# --------------------------------------------------------------------------- the CLI, no host


def _inv(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    if path is not None:
        environ["PATH"] = path
    inv = Path(sys.executable).with_name("inv")
    return subprocess.run(
        [str(inv), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        env=environ,
        timeout=120,
    )


def _write_env(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "env.json"
    path.write_text(json.dumps(data))
    return path


def test_hetzner_provision_exits_2_with_one_line_and_never_prints_the_token(
    tmp_path: Path,
) -> None:
    data = sample_data("manual-test-sqlite")
    data["provider"] = {
        "provider": "hetzner",
        "api_token": "tok-3nV3r-pr1nt",
        "server_type": "cx22",
        "location": "nbg1",
    }
    result = _inv(tmp_path, "provision", "--env", str(_write_env(tmp_path, data)))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "inv register --env manual-test-sqlite --host" in result.stderr
    assert "tok-3nV3r-pr1nt" not in result.stdout + result.stderr
    assert not (tmp_path / "state/tracker-deployer/hosts").exists()


def test_register_records_the_host_in_the_state_dir_never_in_envs(tmp_path: Path) -> None:
    data = sample_data("manual-test-sqlite")
    data["provider"] = {"provider": "existing"}
    env = _write_env(tmp_path, data)
    before = env.read_bytes()
    result = _inv(
        tmp_path, "register", "--env", str(env), "--host", "203.0.113.7", "--port", "2200"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(
        (tmp_path / "state/tracker-deployer/hosts/manual-test-sqlite.json").read_text()
    )
    assert record == {"host": "203.0.113.7", "instance": "", "port": 2200, "provider": "existing"}
    assert env.read_bytes() == before
    # deploy --dry-run now names the registered host and opens no connection.
    dry = _inv(tmp_path, "deploy", "--env", str(env), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "root@203.0.113.7:2200" not in dry.stdout  # the user is torrust
    assert "torrust@203.0.113.7:2200" in dry.stdout
    assert "[1/6] provision: skipped" in dry.stdout


def test_register_refuses_a_bad_address_and_the_lxd_provider(tmp_path: Path) -> None:
    data = sample_data("manual-test-sqlite")
    data["provider"] = {"provider": "existing"}
    bad = _inv(tmp_path, "register", "--env", str(_write_env(tmp_path, data)), "--host", "a b")
    assert bad.returncode == 1
    assert "--host 'a b'" in bad.stderr
    lxd = _inv(tmp_path, "register", "--env", "manual-test-sqlite", "--host", "203.0.113.7")
    assert lxd.returncode == 1
    assert "records its own address" in lxd.stderr


def test_register_refuses_an_env_whose_config_names_its_host(tmp_path: Path) -> None:
    """With ssh_credentials.host set, target() never reads the record: register said
    "registered B" and every later command went to the config's host."""
    data = sample_data("manual-test-sqlite")
    data["provider"] = {"provider": "existing"}
    data["ssh_credentials"]["host"] = "203.0.113.1"
    result = _inv(
        tmp_path, "register", "--env", str(_write_env(tmp_path, data)), "--host", "203.0.113.7"
    )
    assert result.returncode == 1
    assert "ssh_credentials.host (203.0.113.1)" in result.stderr
    assert "remove ssh_credentials.host" in result.stderr
    assert "registered" not in result.stdout
    assert not (tmp_path / "state/tracker-deployer/hosts").exists()


def test_register_names_the_known_hosts_file_the_key_is_checked_against(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It named the state directory's file, which target() does not read when the
    config sets ssh_credentials.known_hosts_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # as _inv's
    data = sample_data("manual-test-sqlite")
    data["provider"] = {"provider": "existing"}
    data["ssh_credentials"]["known_hosts_path"] = str(tmp_path / "my_known_hosts")
    env = _write_env(tmp_path, data)
    result = _inv(tmp_path, "register", "--env", str(env), "--host", "203.0.113.7")
    assert result.returncode == 0, result.stderr
    assert f"records the key in {tmp_path / 'my_known_hosts'})" in result.stdout
    found = lifecycle.target(parse(data), make_key=False)
    assert found is not None
    assert found.known_hosts_path == str(tmp_path / "my_known_hosts")


def test_existing_provider_without_a_host_says_how_to_register(tmp_path: Path) -> None:
    data = sample_data("manual-test-sqlite")
    data["provider"] = {"provider": "existing"}
    result = _inv(tmp_path, "deploy", "--env", str(_write_env(tmp_path, data)))
    assert result.returncode == 1
    assert "inv register --env manual-test-sqlite --host ADDRESS" in result.stderr
    assert "Traceback" not in result.stderr


def test_lxd_not_installed_names_the_setup_command(tmp_path: Path) -> None:
    # A PATH without lxc/lxd (the inv script runs by its full path).
    result = _inv(tmp_path, "provision", "--env", "manual-test-sqlite", path="/nonexistent")
    assert result.returncode == 1
    assert "LXD is not installed" in result.stderr
    assert "scripts/setup.sh" in result.stderr
    assert not (tmp_path / "state").exists()  # nothing half-created


@pytest.mark.parametrize("delete_backups", [False, True])
def test_destroy_without_lxd_here_refuses_and_keeps_the_host_record(
    tmp_path: Path, delete_backups: bool
) -> None:
    """Before, no lxc on PATH read as "no instance": "not there", the record
    forgotten, "destroyed", and the instance still running."""
    environ = {"XDG_STATE_HOME": str(tmp_path / "state")}
    record = state.HostRecord("lxd", "10.187.33.9", 22, "torrust-profile-sqlite")
    path = state.write_record("manual-test-sqlite", record, environ)
    extra = ["--delete-backups"] if delete_backups else []
    result = _inv(tmp_path, "destroy", "--env", "manual-test-sqlite", *extra, path="/nonexistent")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "LXD is not installed" in result.stderr
    assert "destroyed" not in result.stdout
    assert path.exists()


def test_deploy_dry_run_lists_the_phases_and_creates_nothing(tmp_path: Path) -> None:
    result = _inv(tmp_path, "deploy", "--env", "manual-test-mysql", "--dry-run")
    assert result.returncode == 0, result.stderr
    phases = [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("[")]
    assert phases == [
        "[1/6] provision",
        "[2/6] configure",
        "[3/6] push",
        "[4/6] compose up",
        "[5/6] install-cron",
        "[6/6] health",
    ]
    assert "create LXD instance torrust-profile-mysql" in result.stdout
    assert "no connection is opened" in result.stdout
    assert "torrust/tracker" in result.stdout  # the images the host will need
    assert "gets the config's root and tracker passwords" in result.stdout  # MySQL
    assert not (tmp_path / "state").exists()  # no key, no record


def test_merging_host_keys_into_a_users_known_hosts_keeps_other_hosts(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(
        "10.0.0.5 ssh-ed25519 OLD\nother.example ssh-ed25519 KEEP\n[10.0.0.5]:2222 ssh-rsa KEEP2\n"
    )
    state.merge_known_hosts(known, "10.0.0.5", 22, ["ssh-ed25519 NEW"])
    assert known.read_text() == (
        "other.example ssh-ed25519 KEEP\n[10.0.0.5]:2222 ssh-rsa KEEP2\n10.0.0.5 ssh-ed25519 NEW\n"
    )
    assert stat.S_IMODE(known.stat().st_mode) == 0o600


def test_merging_keeps_other_lines_byte_for_byte_whatever_their_encoding(tmp_path: Path) -> None:
    """A latin-1 comment raised UnicodeDecodeError (a traceback, after provision had
    deleted the instance it had just made); a last line without a newline ran into ours."""
    known = tmp_path / "known_hosts"
    known.write_bytes(b"# caf\xe9\n10.0.0.5 ssh-ed25519 OLD\nother ssh-ed25519 KEEP")
    state.merge_known_hosts(known, "10.0.0.5", 22, ["ssh-ed25519 NEW"])
    assert known.read_bytes() == (b"# caf\xe9\nother ssh-ed25519 KEEP\n10.0.0.5 ssh-ed25519 NEW\n")
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(DeployError, match="cannot read"):
        state.merge_known_hosts(directory, "10.0.0.5", 22, ["ssh-ed25519 NEW"])


def test_merging_host_keys_drops_the_hosts_hashed_lines_too(tmp_path: Path) -> None:
    """HashKnownHosts (Debian's default): the old hashed line of a host re-provisioned
    at the same address stayed, paramiko took its key (the first line that names the
    host) and refused the new host as changed."""
    import paramiko
    from tracker_deployer.remote.ssh import KnownHosts

    old, new = paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()

    def hashed(name: str, key: str = "ssh-ed25519 KEEP") -> str:
        return f"{paramiko.HostKeys.hash_host(name)} {key}\n"

    others = (
        hashed("10.0.0.50")
        + hashed("[10.0.0.5]:2222")
        + "|1|not base64!|x ssh-ed25519 KEEP\n"
        + "[10.0.0.5]:2200 ssh-ed25519 KEEP\n"
    )
    known = tmp_path / "known_hosts"
    known.write_text(hashed("10.0.0.5", f"{old.get_name()} {old.get_base64()}") + others)
    state.merge_known_hosts(known, "10.0.0.5", 22, [f"{new.get_name()} {new.get_base64()}"])
    assert known.read_text() == others + f"10.0.0.5 {new.get_name()} {new.get_base64()}\n"
    keys = paramiko.HostKeys()
    KnownHosts.read(known).add_to(keys)
    found = keys.lookup("10.0.0.5")
    assert found is not None
    assert found[new.get_name()] == new
    # Another port: known_hosts names it [host]:port, hashed as such.
    state.merge_known_hosts(known, "10.0.0.5", 2222, ["ssh-ed25519 NEW"])
    assert "[10.0.0.5]:2222 ssh-ed25519 NEW\n" in known.read_text()
    assert known.read_text().count("KEEP") == 3


def test_sandbox_tasks_are_the_lifecycle_tasks_of_the_sandbox_env(tmp_path: Path) -> None:
    result = _inv(tmp_path, "sandbox.status")
    assert result.returncode == 1
    assert "environment: sandbox-sqlite" in result.stdout
    assert "provider:    lxd (instance tracker-sandbox)" in result.stdout
    assert "inv provision --env sandbox-sqlite" in result.stdout


def test_stack_images_name_the_tracker_first_and_each_image_once() -> None:
    env = parse(sample_data("manual-test-mysql"))
    images = lifecycle.stack_images(env)
    assert images[0] == "torrust/tracker:v3.0.0"
    assert "mysql:8.4" in images
    assert len(images) == len(set(images))


# --------------------------------------------------------------------------- destroy


def _offsite_env_data() -> dict[str, Any]:
    data = sample_data("manual-test-sqlite")
    data["backup"]["offsite"] = {"repository": "/mnt/offsite/restic", "password": "pw"}
    return data


def _offsite_env() -> Any:
    return parse(_offsite_env_data())


def _inventory(*set_ids: str) -> Any:
    from tracker_deployer.remote.backups import BackupSet, Inventory

    return Inventory([BackupSet(set_id, complete=True) for set_id in set_ids], {}, [])


def _listing(*tags: list[str]) -> str:
    snapshots = [
        {"id": f"{n:064x}", "time": "2026-12-04T10:00:00Z", "tags": t}
        for n, t in enumerate(tags, 1)
    ]
    return "SNAPSHOTS " + json.dumps(snapshots) + "\n"


def test_destroy_trusts_no_listing_it_cannot_check() -> None:
    """A snapshot of another env, a bad set id or stray output: no set counts as elsewhere."""
    env = _offsite_env()
    good = lifecycle.elsewhere_from_listing(
        env, 0, _listing([f"env={env.name}", "set=20261204_100000"]), ""
    )
    assert good == lifecycle.Elsewhere(frozenset({"20261204_100000"}))
    for output in (
        _listing(["env=another", "set=20261204_100000"]),
        _listing([f"env={env.name}", "set=../../etc"]),
        _listing([f"env={env.name}", "set=20261204_100000"]) + "rm -rf /\n",
        "",
    ):
        found = lifecycle.elsewhere_from_listing(env, 0, output, "")
        assert found.set_ids == frozenset()
        assert "not what offsite.sh prints" in found.unlisted_because
    wrong = lifecycle.elsewhere_from_listing(env, 21, "", "offsite: error: wrong password\n")
    assert wrong.set_ids == frozenset()
    assert "password is wrong" in wrong.unlisted_because


def test_destroy_refuses_only_for_sets_not_in_the_repository() -> None:
    env = _offsite_env()
    inventory = _inventory("20261204_100000", "20261204_110000")
    elsewhere = lifecycle.Elsewhere(frozenset({"20261204_100000"}))
    with pytest.raises(DeployError, match=r"1 backup set\(s\) \(20261204_110000\) that are not"):
        lifecycle.refuse_with_sets(env, (inventory, elsewhere))
    everything = lifecycle.Elsewhere(frozenset({"20261204_100000", "20261204_110000"}))
    lifecycle.refuse_with_sets(env, (inventory, everything))
    # Without backup.offsite the old message stands.
    plain = parse(sample_data("manual-test-sqlite"))
    with pytest.raises(DeployError, match="exist nowhere else"):
        lifecycle.refuse_with_sets(plain, (inventory, lifecycle.Elsewhere()))


@pytest.mark.parametrize(
    ("provider", "repository", "gone"),
    [
        ({"provider": "lxd", "profile_name": "t"}, "/mnt/offsite/restic", "on the lxd machine"),
        ({"provider": "existing"}, "/opt/torrust/offsite/restic", "under /opt/torrust"),
        # Other spellings of the same directory (Linux reads '//' as '/').
        ({"provider": "existing"}, "//opt/torrust/offsite/restic", "under /opt/torrust"),
        ({"provider": "existing"}, "/opt//./torrust/offsite/", "under /opt/torrust"),
        ({"provider": "existing"}, "/mnt/offsite/restic", ""),
        ({"provider": "lxd", "profile_name": "t"}, "rest:https://backup.example.com/t", ""),
    ],
)
def test_a_repository_that_goes_with_the_host_holds_nothing_elsewhere(
    provider: dict[str, str], repository: str, gone: str
) -> None:
    """Before, destroy counted every set a local-path repository listed as elsewhere,
    then deleted the instance, or ran rm -rf /opt/torrust, with the repository in it."""
    data = _offsite_env_data()
    data["provider"] = provider
    data["backup"]["offsite"]["repository"] = repository
    env = parse(data)
    listing = _listing([f"env={env.name}", "set=20261204_100000"])
    elsewhere = lifecycle._elsewhere(env, lambda: (0, listing, ""))
    inventory = _inventory("20261204_100000")
    if not gone:
        assert elsewhere == lifecycle.Elsewhere(frozenset({"20261204_100000"}))
        lifecycle.refuse_with_sets(env, (inventory, elsewhere))
        return
    assert elsewhere.set_ids == frozenset()
    assert gone in elsewhere.gone_with_host
    said: list[str] = []
    with pytest.raises(DeployError, match="may exist nowhere else") as refused:
        lifecycle.refuse_with_sets(env, (inventory, elsewhere), said.append)
    assert gone in refused.value.message
    assert said == [f"  no set counts as elsewhere: {elsewhere.gone_with_host}"]


class _RunningLxd:
    """A stand-in for providers.lxd.Lxd: our instance, running (exec: the test's)."""

    name = "tracker-sandbox"

    def __init__(self, _env: Any) -> None:
        pass

    def instance(self) -> dict[str, str]:
        return {"status": "Running"}

    def is_ours(self, _instance: Any) -> bool:
        return True


def test_destroy_gives_the_inventory_in_an_instance_time_for_its_host_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The inventory's backup container may take LIST_TIMEOUT_SECONDS before the script
    lists the sets on the host; lxd exec's default 120 s cut that fallback off."""
    from tracker_deployer.providers import lxd
    from tracker_deployer.render import inventory_script

    timeouts: list[int] = []

    class RecordingLxd(_RunningLxd):
        def exec(
            self, _command: str, *_args: str, timeout: int = lxd.LXC_TIMEOUT_SECONDS
        ) -> subprocess.CompletedProcess[bytes]:
            timeouts.append(timeout)
            return subprocess.CompletedProcess([], 0, b"NOW\t1\n", b"")

    monkeypatch.setattr(lxd, "Lxd", RecordingLxd)
    monkeypatch.setattr(lxd, "require_lxd", lambda: None)
    found = lifecycle._sets_through_lxd(parse(sample_data("sandbox-sqlite")))
    assert found is not None
    assert timeouts == [INVENTORY_LIST_TIMEOUT_SECONDS + 60]
    script = inventory_script(verify=False, backup_image="torrust/tracker-backup:test")
    assert f"readonly LIST_TIMEOUT_SECONDS={INVENTORY_LIST_TIMEOUT_SECONDS}\n" in script


def test_destroy_of_an_instance_whose_sets_cannot_be_listed_says_how_to_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broken "lost" instance: the listing fails. It said so without a hint."""
    from tracker_deployer.providers import lxd

    class BrokenLxd(_RunningLxd):
        def exec(self, *_args: Any, **_options: Any) -> subprocess.CompletedProcess[bytes]:
            return subprocess.CompletedProcess([], 125, b"", b"docker: not found\n")

    monkeypatch.setattr(lxd, "Lxd", BrokenLxd)
    monkeypatch.setattr(lxd, "require_lxd", lambda: None)
    with pytest.raises(DeployError) as refused:
        lifecycle._sets_through_lxd(parse(sample_data("sandbox-sqlite")))
    assert refused.value.message == (
        "listing the backup sets in tracker-sandbox failed: docker: not found; nothing was removed"
    )
    assert "pass --delete-backups to delete it with whatever sets it holds" in str(
        refused.value.hint
    )


def test_destroy_of_an_existing_host_removes_every_cron_file_the_deployer_installs() -> None:
    from tracker_deployer.remote.plan import CRON_FILES

    removed = next(
        line
        for line in lifecycle.retire_script(None, remove_stack=True).splitlines()
        if line.startswith("rm -f -- ")
    )
    assert sorted(removed.split()[3:]) == sorted(str(path) for path in CRON_FILES)


def test_restore_from_offsite_refuses_an_env_without_offsite_and_an_unknown_source(
    tmp_path: Path,
) -> None:
    env = str(_write_env(tmp_path, sample_data("manual-test-sqlite")))
    refused = _inv(
        tmp_path, "restore", "--env", env, "--set", "latest", "--yes", "--from", "offsite"
    )
    assert refused.returncode == 1
    assert "has no backup.offsite: nothing to restore from" in refused.stderr
    assert "Traceback" not in refused.stderr
    unknown = _inv(tmp_path, "restore", "--env", env, "--set", "latest", "--from", "s3")
    assert unknown.returncode == 1
    assert "--from 's3' is not offsite" in unknown.stderr


def test_restore_from_offsite_dry_run_says_the_fetch_comes_first(tmp_path: Path) -> None:
    env = str(_write_env(tmp_path, _offsite_env_data()))
    plan = _inv(
        tmp_path, "restore", "--env", env, "--set", "latest", "--dry-run", "--from", "offsite"
    )
    assert plan.returncode == 0, plan.stderr
    first, *rest = plan.stdout.splitlines()
    assert first.startswith("first: fetch set latest from the off-host repository")
    assert rest


# --------------------------------------------------------------------------- what the host says


@pytest.mark.parametrize("output", ["not json", "[1]", "1", '"x"', "null", "[null]", "[" * 100000])
def test_compose_ps_output_docker_never_prints_is_one_error(output: str) -> None:
    """A traceback before (JSONDecodeError, AttributeError, RecursionError)."""
    with pytest.raises(RemoteError, match="not what Docker Compose prints"):
        remote.parse_compose_ps(output)


def test_a_service_the_host_does_not_list_is_not_healthy() -> None:
    """Before, only the listed rows counted: an empty list, or one without the
    tracker, passed the health check of deploy and recover."""
    env = parse(sample_data("manual-test-sqlite"))
    expected = [service.name for service in derive(env).long_running]
    assert "tracker" in expected
    grafana_only = remote.parse_compose_ps('{"Service": "grafana", "State": "running"}')
    assert "tracker (not there)" in remote.unhealthy(grafana_only, env)
    assert remote.unhealthy([], env) == [f"{name} (not there)" for name in expected]
    rows = [{"service": name, "state": "running", "health": "-", "status": ""} for name in expected]
    assert remote.unhealthy(rows, env) == []


def test_status_shows_the_hosts_words_escaped() -> None:
    report: dict[str, Any] = {
        "environment": "tracker-prod",
        "provider": "lxd",
        "host": "10.0.0.5",
        "services": [],
        "deployed": True,
        "last_backup_run": {"result": "success", "started_at": "\x1b]2;owned\x07\x1b[2J"},
        "backup_sets": 1,
        "error": "listing backups failed: \u202eevil\r",
    }
    text = lifecycle.format_status(report)
    assert "last backup: SUCCESS at \\x1b]2;owned\\x07\\x1b[2J" in text
    assert "problem:     listing backups failed: \\u202eevil\\r" in text
    assert all(c.isprintable() or c == "\n" for c in text)


def test_status_of_a_host_it_did_not_reach_says_unknown_not_none() -> None:
    """A host that holds sets and runs its stack, down or unreachable now: status
    said "services: none" and "last backup: none recorded" (a review)."""
    report: dict[str, Any] = {
        "environment": "tracker-prod",
        "provider": "existing",
        "host": "203.0.113.10:22",
        "services": [],
        "last_backup_run": None,
        "backup_sets": None,
        "error": "cannot connect to 203.0.113.10:22 (connection refused)",
    }
    text = lifecycle.format_status(report)
    assert "services:    unknown (the host was not reached)" in text
    assert "last backup: unknown (see the problem below)" in text
    assert "none" not in text
    reached = {**report, "deployed": False, "error": None}
    assert "services:    none (no /opt/torrust/docker-compose.yml: not deployed)" in (
        lifecycle.format_status(reached)
    )
    assert "last backup: none recorded" in lifecycle.format_status(reached)


def test_progress_lines_reach_the_terminal_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    """`say` lines may quote a host (destroy's listing error, say): a tab stays."""
    tasks._say("listing failed: \x1b]2;pwned\x07\tok")
    assert capsys.readouterr().out == "listing failed: \\x1b]2;pwned\\x07\tok\n"


def test_sideload_without_docker_here_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in lxc/lxd (an instance of this project, without the image) and no
    docker on PATH: a traceback (FileNotFoundError) before, in deploy's phase 4."""
    from tracker_deployer.providers.lxd import OWNER_KEY

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    instance = json.dumps({"status": "Running", "config": {OWNER_KEY: "sandbox-sqlite"}})
    (bin_dir / "lxc").write_text(
        "#!/bin/sh\n"
        f"if [ \"$1\" = query ]; then printf '%s\\n' '{instance}'; exit 0; fi\n"
        "exit 1\n"  # exec: the image is not in the instance
    )
    (bin_dir / "lxd").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("lxc", "lxd"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(DeployError, match="cannot run docker") as raised:
        lifecycle.sideload(parse(sample_data("sandbox-sqlite")), lambda _line: None)
    assert "docker info" in (raised.value.hint or "")


def test_deploy_restarts_what_an_earlier_push_left_pending(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The host's record of a restart an earlier deploy never made (see test_plan)
    reaches compose up even though this push changed nothing, and the deploy does
    not say `nothing changed`. Every remote step is a stand-in here."""
    from contextlib import nullcontext

    from tracker_deployer.remote.plan import Plan, Scope
    from tracker_deployer.remote.ssh import Target

    env = parse(sample_data("manual-test-sqlite"))
    found = Target("10.0.0.5", 22, "torrust", "/k")
    nothing = Plan(Scope.PUSH, (), ())
    ups: list[tuple[str, ...]] = []
    monkeypatch.setattr(lifecycle, "target", lambda *_args: found)
    monkeypatch.setattr(lifecycle, "SshHost", lambda _target: nullcontext(object()))
    monkeypatch.setattr(lifecycle, "sideload", lambda *_args: None)
    monkeypatch.setattr(lifecycle, "ensure_images", lambda *_args: None)
    monkeypatch.setattr(
        configure,
        "apply",
        lambda *_args: configure.Configured(configure.HostOs("debian", "12", ""), (), ()),
    )
    monkeypatch.setattr(mysql_passwords, "set_in_server", lambda *_args: None)
    monkeypatch.setattr(remote, "refuse_unfinished_recover", lambda *_args: None)
    monkeypatch.setattr(host_scripts, "end_older_schedules", lambda *_args: None)
    monkeypatch.setattr(remote, "mark_deploying", lambda *_args: None)
    monkeypatch.setattr(remote, "unmark_deploying", lambda *_args: None)
    monkeypatch.setattr(remote, "push", lambda *_args, **_kw: nothing)
    monkeypatch.setattr(remote, "install_cron", lambda *_args: Plan(Scope.CRON, (), ()))
    monkeypatch.setattr(remote, "service_health", lambda *_args: [])
    # caddy: pushed when the config had https, which it dropped since (the stack has
    # no caddy now: `compose restart caddy` would fail every deploy).
    pending: tuple[str, ...] = ("prometheus", "tracker", "caddy")
    monkeypatch.setattr(remote, "pending_restart", lambda *_args: pending)
    monkeypatch.setattr(
        remote, "compose_up", lambda _host, restart, _say, **_kw: ups.append(restart)
    )
    cleared: list[str] = []
    monkeypatch.setattr(remote, "clear_pending_restart", lambda _host: cleared.append("rm"))
    deployed = lifecycle.deploy(env, render(env), lambda _line: None)
    assert ups == [("tracker", "prometheus")]
    assert deployed.restarted == ("tracker", "prometheus")
    assert not deployed.changed_nothing
    assert cleared == []  # the restart clears the record

    # A record that names only a service the stack no longer has is cleared too
    # (it was read again, and filtered, by every deploy).
    pending = ("caddy",)
    ups.clear()
    lifecycle.deploy(env, render(env), lambda _line: None)
    assert ups == [()]
    assert cleared == ["rm"]


@pytest.mark.parametrize(
    ("database", "fails", "password_file_changed", "failed_before", "steps"),
    [
        (
            "mysql",
            None,
            True,
            False,
            [
                "end older",
                "mark",
                "push",
                "images",
                "passwords",
                "unmark",
                "compose up",
                "install-cron",
            ],
        ),
        (
            "mysql",
            "compose up",
            True,
            False,
            ["end older", "mark", "push", "images", "passwords", "unmark", "compose up"],
        ),
        (
            "mysql",
            "images",
            True,
            False,
            ["end older", "mark", "push", "images", "unmark (failed)"],
        ),
        ("mysql", "images", False, False, ["end older", "mark", "push", "images", "unmark"]),
        # a retry of a deploy that failed: its push changes nothing, the files still
        # hold the password the server lacks
        (
            "mysql",
            "images",
            False,
            True,
            ["end older", "mark", "push", "images", "unmark (failed)"],
        ),
        ("mysql", "push", True, False, ["end older", "mark", "push", "unmark (failed)"]),
        ("sqlite3", "images", True, False, ["end older", "push", "images"]),
        # a marker of its MySQL days goes
        (
            "sqlite3",
            None,
            True,
            False,
            ["end older", "push", "images", "unmark", "compose up", "install-cron"],
        ),
    ],
)
def test_deploy_keeps_backup_runs_off_until_the_server_has_the_pushed_passwords(
    monkeypatch: pytest.MonkeyPatch,
    database: str,
    fails: str | None,
    password_file_changed: bool,
    failed_before: bool,
    steps: list[str],
) -> None:
    """A backup run between the push (a new MySQL password in tracker.toml and
    backup.conf) and the password's change in the server restarted the tracker on a
    password the server did not have yet (a review). The marker that makes runs skip
    is written before the push and removed once the server has the passwords; a
    deploy that fails in between, after its push changed such a file (or a push cut
    off), leaves it as "failed": runs refuse until a deploy succeeds. SQLite has no
    such window. Every remote step is a stand-in here (their host side:
    tests/integration/test_remote.py, test_maintenance.py)."""
    from contextlib import nullcontext

    from tracker_deployer.remote.plan import Plan, Scope
    from tracker_deployer.remote.ssh import Target

    env = parse(sample_data("manual-test-mysql" if database == "mysql" else "manual-test-sqlite"))
    pushed = _pushed(password_file_changed)
    done: list[str] = []
    step = _recorded_steps(done, fails)

    monkeypatch.setattr(lifecycle, "target", lambda *_args: Target("10.0.0.5", 22, "t", "/k"))
    monkeypatch.setattr(lifecycle, "SshHost", lambda _target: nullcontext(object()))
    monkeypatch.setattr(lifecycle, "sideload", lambda *_args: None)
    monkeypatch.setattr(lifecycle, "ensure_images", step("images"))
    monkeypatch.setattr(
        configure,
        "apply",
        lambda *_args: configure.Configured(configure.HostOs("debian", "12", ""), (), ()),
    )
    if database == "mysql":
        monkeypatch.setattr(mysql_passwords, "set_in_server", step("passwords"))
    else:
        monkeypatch.setattr(mysql_passwords, "set_in_server", lambda *_args: None)
    monkeypatch.setattr(remote, "refuse_unfinished_recover", lambda *_args: None)
    # Another version's scheduled scripts end before anything changes (host_scripts).
    monkeypatch.setattr(host_scripts, "end_older_schedules", step("end older"))
    monkeypatch.setattr(remote, "mark_deploying", step("mark", failed_before))
    monkeypatch.setattr(remote, "unmark_deploying", step("unmark"))
    monkeypatch.setattr(remote, "push", step("push", pushed))
    monkeypatch.setattr(remote, "pending_restart", lambda *_args: ())
    monkeypatch.setattr(remote, "compose_up", step("compose up"))
    monkeypatch.setattr(remote, "install_cron", step("install-cron", Plan(Scope.CRON, (), ())))
    monkeypatch.setattr(remote, "service_health", lambda *_args: [])
    if fails:
        with pytest.raises(RemoteError):
            lifecycle.deploy(env, render(env), lambda _line: None)
    else:
        lifecycle.deploy(env, render(env), lambda _line: None)
    assert done == steps


@pytest.mark.parametrize(
    ("database", "change", "refused"),
    [
        ("mysql", "UPDATE", True),  # tracker.toml's content would change
        ("mysql", "CREATE", False),  # a first push: what the first deploy sets
        ("mysql", "METADATA", False),  # a mode fixed: its content stays
        ("sqlite3", "UPDATE", False),  # no server holds a password
    ],
)
def test_a_mysql_push_that_would_change_a_password_file_is_refused_before_anything_changes(
    monkeypatch: pytest.MonkeyPatch, database: str, change: str, refused: bool
) -> None:
    """`inv push` of a changed MySQL password left tracker.toml, backup.conf and .env
    holding a password the server lacked: the next backup run restarted the tracker on
    it (a review). Only a deploy sets it in the server and restarts the tracker on it.
    The remote steps are stand-ins (their host side: tests/integration/test_remote.py)."""
    from tracker_deployer import paths
    from tracker_deployer.remote.plan import Change, FileStep, Plan, Scope

    env = parse(sample_data("manual-test-mysql" if database == "mysql" else "manual-test-sqlite"))
    plan = Plan(Scope.PUSH, (), (FileStep(Change[change], paths.TRACKER_CONFIG),))
    applied: list[Any] = []
    monkeypatch.setattr(remote, "plan_on_host", lambda *_args: (plan, ()))
    monkeypatch.setattr(
        remote, "apply_plan", lambda _host, applied_plan, *_a, **_k: applied.append(applied_plan)
    )
    connection: Any = object()
    if refused:
        with pytest.raises(DeployError) as raised:
            lifecycle.push(connection, env, render(env), lambda _line: None)
        assert f"would change {paths.TRACKER_CONFIG}, which hold the MySQL passwords" in str(
            raised.value
        )
        assert "nothing was changed" in str(raised.value)
        assert f"inv deploy --env {env.name}" in (raised.value.hint or "")
        assert applied == []
    else:
        assert lifecycle.push(connection, env, render(env), lambda _line: None) is plan
        assert applied == [plan]


def _pushed(password_file_changed: bool) -> Any:
    """A push's plan that changed tracker.toml (a file a MySQL password reaches) or not."""
    from tracker_deployer import paths
    from tracker_deployer.remote.plan import Change, FileStep, Plan, Scope

    path = paths.TRACKER_CONFIG if password_file_changed else paths.PROMETHEUS_CONFIG
    return Plan(Scope.PUSH, (), (FileStep(Change.UPDATE, path),))


def _recorded_steps(done: list[str], fails: str | None) -> Any:
    """``step(name, result)``: a stand-in for a remote step that records its name in
    ``done`` ("NAME (failed)" when called with failed=True), raises when it is the one
    that ``fails``, else returns ``result``."""

    def step(name: str, result: object = None) -> Any:
        def run(*_args: object, **kw: object) -> object:
            done.append(f"{name} (failed)" if kw.get("failed") else name)
            if name == fails:
                raise RemoteError(f"{name} failed")
            return result

        return run

    return step


def test_an_lxd_env_whose_profile_name_changed_since_provision_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """provision as "a", then profile_name "b": destroy said "instance b: not there",
    forgot the record, and instance "a" ran on with its stack and cron (a review)."""
    from tracker_deployer.providers import lxd

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    data = sample_data("sandbox-sqlite")
    env = parse(data)
    assert isinstance(env.provider, LxdProvider)
    recorded = env.provider.profile_name
    state.write_record(env.name, state.HostRecord("lxd", "10.0.0.5", 22, recorded))
    assert lxd.Lxd(env).name == recorded  # as recorded: fine
    data["provider"]["profile_name"] = "renamed"
    with pytest.raises(DeployError) as refused:
        lxd.Lxd(parse(data))
    assert f"names LXD instance {recorded!r}, but provider.profile_name is 'renamed'" in str(
        refused.value
    )
    assert state.read_record(env.name) is not None  # nothing forgotten
