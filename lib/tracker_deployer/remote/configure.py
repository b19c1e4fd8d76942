"""``inv configure``: make a bare Debian 12 host ready for the stack, idempotently.

Plan, then apply (the shape of ``remote.plan``): :func:`plan` is pure over the
environment and the host's OS (read once by :data:`OS_PROBE`) and returns
:class:`HostStep` s. Each step is a *check* (a shell command that exits 0 when
the host already is as wanted) and an *apply* (a shell command that makes it
so). :func:`apply` runs every check; only a failing one runs its apply and then
the check again. So each step prints ``changed`` or ``unchanged``, a second run
changes nothing, and an interrupted run resumes where it stopped.

What a host gets: Docker engine; Compose v2 from the same source as
``scripts/setup.sh`` (Debian trixie's ``docker-compose`` .deb on Debian 12,
Ubuntu's ``docker-compose-v2`` on 24.04); cron, logrotate, flock (util-linux),
curl; rotation of Docker's container logs (``/etc/docker/daemon.json``);
unattended security upgrades; and an nftables firewall that lets in SSH and
exactly the ports the rendered stack publishes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from tracker_deployer.config.model import Env
from tracker_deployer.errors import RemoteError
from tracker_deployer.remote.ssh import SshHost
from tracker_deployer.say import Say
from tracker_deployer.topology import Port, derive

# The same pin as scripts/setup.sh (tests/unit/test_lifecycle.py holds them equal).
COMPOSE_DEB_VERSION = "2.26.1-4"
COMPOSE_SUITE = "trixie"
APT_CACHE = "/var/cache/tracker-deployer/aptq"
DAEMON_JSON = "/etc/docker/daemon.json"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
FIREWALL_FILE = "/etc/nftables.d/tracker-deployer.nft"
NFTABLES_CONF = "/etc/nftables.conf"
FIREWALL_TABLE = "tracker_deployer"
STEP_TIMEOUT_SECONDS = 900
APT_LOCK_WAIT_SECONDS = 120

OS_PROBE = (
    '. /etc/os-release 2>/dev/null; printf "%s\\t%s\\t%s\\n" "$ID" "$VERSION_ID" "$PRETTY_NAME"'
)


@dataclass(frozen=True, slots=True)
class HostOs:
    id: str
    version: str
    pretty: str

    @property
    def key(self) -> str:
        return f"{self.id} {self.version}"


# Package names per supported OS. Only Debian 12 is tested here; Ubuntu 24.04
# is mapped (docs/user-guide/deploy.md) for hosts we cannot reach from CI.
_BOTH = (
    "cron",
    "logrotate",
    "util-linux",
    "curl",
    "ca-certificates",
    "unattended-upgrades",
    "nftables",
)
PACKAGES: dict[str, tuple[str, ...]] = {
    "debian 12": ("docker.io", *_BOTH),
    # Ubuntu packages Compose v2; on Debian 12 it comes from trixie (COMPOSE_* above).
    "ubuntu 24.04": ("docker.io", "docker-compose-v2", *_BOTH),
}
SUPPORTED = tuple(PACKAGES)


def parse_os(output: str) -> HostOs:
    parts = [*output.strip().split("\t"), "", "", ""][:3]
    return HostOs(parts[0].strip().lower(), parts[1].strip(), parts[2].strip())


@dataclass(frozen=True, slots=True)
class HostStep:
    name: str
    check: str  # exit 0: already as wanted
    apply: str  # makes it so (as root)
    uses_apt: bool = False


# --------------------------------------------------------------------------- pure parts


def daemon_json() -> str:
    """Docker's own log rotation for every container (the stack sets it per service too)."""
    return (
        json.dumps(
            {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "3"}},
            indent=2,
        )
        + "\n"
    )


def auto_upgrades() -> str:
    """Daily list updates and unattended-upgrades (Debian's default origins: security)."""
    return 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'


def published_ports(env: Env) -> tuple[Port, ...]:
    """Every port the rendered stack publishes on a non-loopback address."""
    found: dict[tuple[int, str], Port] = {}
    for service in derive(env).services:
        for port in service.ports:
            if port.host_ip and (port.host_ip.startswith("127.") or port.host_ip == "::1"):
                continue
            found.setdefault((port.host, port.protocol), port)
    return tuple(sorted(found.values(), key=lambda p: (p.protocol, p.host)))


def _port_set(ports: Sequence[int]) -> str:
    return "{ " + ", ".join(str(p) for p in sorted(set(ports))) + " }"


def ssh_ports(env: Env, connected: Sequence[int] = ()) -> list[int]:
    """The SSH ports the firewall lets in: ssh_credentials.port and the ports of this
    deployer's connection (the one it dials: a host registered with --port N; the
    one sshd sees, which a port forward in front of the host makes another):
    dropping either would lock every later command out."""
    return sorted({env.ssh.port, *connected})


def sshd_port(host: SshHost) -> int | None:
    """The port sshd took this session on, as the host sees it (the last field of
    SSH_CONNECTION; the firewall filters that one); None when it does not say."""
    result = host.run('printf %s "${SSH_CONNECTION:-}"', root=False, timeout=60)
    fields = result.stdout.split()
    if not result.ok or len(fields) != 4 or not (fields[3].isascii() and fields[3].isdigit()):
        return None
    port = int(fields[3])
    return port if 0 < port < 65536 else None


def firewall_rules(env: Env, connected: Sequence[int] = ()) -> str:
    """The nftables table: SSH, the stack's published ports, nothing else from outside.

    Only this table is replaced (never ``flush ruleset``), so Docker's and LXD's
    own tables stay. The input chain drops what is not allowed; the forward
    chain drops traffic Docker would DNAT to a port the stack does not publish.
    """
    ports = published_ports(env)
    tcp = [p.host for p in ports if p.protocol == "tcp"]
    udp = [p.host for p in ports if p.protocol == "udp"]
    lines = [
        "#!/usr/sbin/nft -f",
        f"# Managed by tracker-deployer for environment {env.name}; `inv configure` rewrites it.",
        "# Lets in SSH and exactly the ports the rendered stack publishes.",
        f"table inet {FIREWALL_TABLE}",
        f"delete table inet {FIREWALL_TABLE}",
        f"table inet {FIREWALL_TABLE} {{",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        "    ct state established,related accept",
        "    ct state invalid drop",
        '    iifname "lo" accept',
        '    iifname "docker0" accept',
        '    iifname "br-*" accept',
        "    meta l4proto { icmp, ipv6-icmp } accept",
        '    udp sport 67 udp dport 68 accept comment "DHCP replies (the host\'s own address)"',
        f'    tcp dport {_port_set(ssh_ports(env, connected))} accept comment "SSH"',
    ]
    if tcp:
        lines.append(f'    tcp dport {_port_set(tcp)} accept comment "the stack, tcp"')
    if udp:
        lines.append(f'    udp dport {_port_set(udp)} accept comment "the stack, udp"')
    lines += [
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter - 1; policy accept;",
    ]
    for protocol, allowed in (("tcp", tcp), ("udp", udp)):
        if allowed:
            lines.append(
                f"    ct status dnat meta l4proto {protocol} "
                f"ct original proto-dst != {_port_set(allowed)} drop"
            )
        else:
            lines.append(f"    ct status dnat meta l4proto {protocol} drop")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def nftables_conf() -> str:
    return (
        "#!/usr/sbin/nft -f\n"
        "# tracker-deployer: load the host firewall at boot. Only its own table is\n"
        "# replaced, never `flush ruleset` (that would remove Docker's rules).\n"
        f'include "{FIREWALL_FILE}"\n'
    )


def _q(text: str) -> str:
    return shlex.quote(text)


def _has_content(path: str, content: str) -> str:
    digest = hashlib.sha256(content.encode()).hexdigest()
    return f'[ "$(sha256sum < {_q(path)} 2>/dev/null | cut -d" " -f1)" = {digest} ]'


def _write(path: str, content: str, mode: str = "0644") -> str:
    encoded = base64.b64encode(content.encode()).decode()
    temporary = f"{path}.tracker-deployer.tmp"
    return (
        f"mkdir -p -- {_q(path.rsplit('/', 1)[0])} && "
        f"printf %s {encoded} | base64 -d > {_q(temporary)} && "
        f"chmod {mode} {_q(temporary)} && mv -f -- {_q(temporary)} {_q(path)}"
    )


SYSTEMD = "[ -d /run/systemd/system ]"
# apt_update [OPTION...]: `apt-get update`, waiting up to APT_LOCK_WAIT_SECONDS for
# the package lists' lock (DPkg::Lock::Timeout covers only dpkg's locks: a fresh
# host's apt-daily holds the lists' lock, and update failed at once).
APT_UPDATE = (
    "apt_update() { local waited=0 out; "
    'while ! out="$(apt-get $apt_opts "$@" update -qq 2>&1)"; do '
    'case "$out" in *"Could not get lock"*) ;; *) printf \'%s\\n\' "$out" >&2; return 100;; esac; '
    f'if [ "$waited" -ge {APT_LOCK_WAIT_SECONDS} ]; then printf \'%s\\n\' "$out" >&2; return 100; fi; '
    "sleep 2; waited=$((waited + 2)); done; "
    '[ -z "$out" ] || printf \'%s\\n\' "$out"; }; '
)
APT = (
    # LC_ALL=C: apt's messages in English, which apt_update and apt_failure read.
    "export DEBIAN_FRONTEND=noninteractive LC_ALL=C; "
    f"apt_opts='-o DPkg::Lock::Timeout={APT_LOCK_WAIT_SECONDS} -o Dpkg::Options::=--force-confold'; "
    + APT_UPDATE
    # An interrupted earlier run left dpkg half-way: finish that first (resume).
    + "dpkg --configure -a; "
)


# A package the operator installed from Docker's own repository stands for
# Debian's: docker.io conflicts with docker-ce, and apt would remove the engine
# (and stop every container of other stacks on the host) to install it.
ALTERNATIVES = {"docker.io": "docker-ce", "docker-compose-v2": "docker-compose-plugin"}
_INSTALLED = "dpkg-query -W -f='${Status}' \"$1\" 2>/dev/null | grep -q 'install ok installed'"


def wanted_packages(packages: Sequence[str]) -> str:
    """Shell that sets ``wanted`` to the packages of ``packages`` not installed, each
    counted as installed when its alternative (:data:`ALTERNATIVES`) is."""
    lines = [f"installed() {{ {_INSTALLED}; }}", "wanted=''"]
    for package in packages:
        alternative = ALTERNATIVES.get(package)
        have = f"installed {_q(package)}"
        if alternative is not None:
            have += f" || installed {_q(alternative)}"
        lines.append(f'{have} || wanted="$wanted {package}"')
    return "; ".join(lines) + "; "


def _packages_installed(packages: Sequence[str]) -> str:
    return wanted_packages(packages) + '[ -z "$wanted" ]'


def _compose_from_trixie() -> str:
    """Compose v2 on Debian 12: trixie's .deb, without adding trixie to the sources."""
    deb = f"docker-compose_{COMPOSE_DEB_VERSION}_$(dpkg --print-architecture).deb"
    options = (
        f"-o Dir::Etc::SourceList={APT_CACHE}/sources.list -o Dir::Etc::SourceParts=/nonexistent "
        f"-o Dir::State::Lists={APT_CACHE}/lists -o Dir::Cache={APT_CACHE}/cache"
    )
    return (
        APT
        + "set -o errexit; "
        + "mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources "
        "2>/dev/null || true); "
        + '[ -n "$mirror" ] || mirror=$(awk \'$1=="deb"{for(i=2;i<=NF;i++) '
        "if($i ~ /^https?:/){print $i; exit}}' /etc/apt/sources.list 2>/dev/null || true); "
        + '[ -n "$mirror" ] || mirror=http://deb.debian.org/debian; '
        + f"mkdir -p {APT_CACHE}/lists/partial {APT_CACHE}/cache/archives/partial; "
        + "printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s "
        + f'{COMPOSE_SUITE} main\\n\' "$mirror" > {APT_CACHE}/sources.list; '
        + f"apt_update {options}; "
        + f"(cd {APT_CACHE} && apt-get $apt_opts {options} download "
        f"docker-compose={COMPOSE_DEB_VERSION}); "
        + f"apt-get $apt_opts install -y -qq --no-install-recommends --no-remove {APT_CACHE}/{deb}"
    )


def plan(env: Env, host_os: HostOs, connected: Sequence[int] = ()) -> tuple[HostStep, ...]:
    """The steps that make ``host_os`` ready for ``env``'s stack (pure)."""
    packages = PACKAGES[host_os.key]
    # --no-remove: a package that conflicts with one installed (the operator's) stops
    # apt instead of removing it.
    install = (
        APT
        + "set -o errexit; apt_update; "
        + wanted_packages(packages)
        + 'if [ -n "$wanted" ]; then '
        + "apt-get $apt_opts install -y -qq --no-install-recommends --no-remove $wanted; fi"
    )
    compose_ok = "docker compose version --short 2>/dev/null | grep -Eq '^v?2[.]'"
    # Ubuntu 24.04: docker-compose-v2 is in the package list, so `install` brings it.
    compose_apply = _compose_from_trixie() if host_os.key == "debian 12" else install
    restart_docker = f"if {SYSTEMD}; then systemctl restart docker; fi"
    # With systemd: Docker running, both enabled (an operator's `systemctl stop cron`
    # is theirs to undo; cron starts again at boot). Without: both running.
    services_ok = (
        "docker info >/dev/null 2>&1 && "
        f"if {SYSTEMD}; then systemctl is-enabled --quiet docker && systemctl is-enabled --quiet cron; "
        "else pgrep -x cron >/dev/null; fi"
    )
    services_apply = (
        f"if {SYSTEMD}; then systemctl enable --now docker cron; else "
        # No systemd (a bare container): start the daemons by hand, as setup.sh does.
        "pgrep -x dockerd >/dev/null || (nohup dockerd >/var/log/dockerd.log 2>&1 &); "
        "pgrep -x cron >/dev/null || cron; fi; "
        "for _ in $(seq 60); do docker info >/dev/null 2>&1 && exit 0; sleep 1; done; "
        "echo 'dockerd did not come up within 60 s' >&2; exit 1"
    )
    rules = firewall_rules(env, connected)
    firewall_ok = (
        f"{_has_content(FIREWALL_FILE, rules)} && {_has_content(NFTABLES_CONF, nftables_conf())} "
        f"&& nft list table inet {FIREWALL_TABLE} >/dev/null 2>&1 "
        f"&& {{ ! {SYSTEMD} || systemctl is-enabled --quiet nftables; }}"
    )
    # Loaded first, the files written after: a load that fails leaves the old files,
    # so the next run's check (which compares the files) fails and loads again.
    firewall_apply = (
        f"set -o errexit; nft -c -f /dev/stdin <<'RULES'\n{rules}RULES\n"
        f"nft -f /dev/stdin <<'RULES'\n{rules}RULES\n"
        f"{_write(FIREWALL_FILE, rules)}; {_write(NFTABLES_CONF, nftables_conf(), '0755')}; "
        # Enabled, never (re)started here: its unit loads nftables.conf at boot.
        f"if {SYSTEMD}; then systemctl enable --quiet nftables; fi"
    )
    return (
        HostStep("packages: " + ", ".join(packages), _packages_installed(packages), install, True),
        HostStep(
            f"compose v2 (docker-compose {COMPOSE_DEB_VERSION} from {COMPOSE_SUITE})"
            if host_os.key == "debian 12"
            else "compose v2 (docker-compose-v2)",
            compose_ok,
            compose_apply,
            True,
        ),
        HostStep(
            f"docker log rotation ({DAEMON_JSON})",
            _has_content(DAEMON_JSON, daemon_json()),
            f"{_write(DAEMON_JSON, daemon_json())}; {restart_docker}",
        ),
        HostStep("services: docker running, docker and cron enabled", services_ok, services_apply),
        HostStep(
            f"unattended security upgrades ({AUTO_UPGRADES})",
            _has_content(AUTO_UPGRADES, auto_upgrades()),
            _write(AUTO_UPGRADES, auto_upgrades()),
        ),
        HostStep(
            "firewall (nftables): SSH "
            + ", ".join(str(port) for port in ssh_ports(env, connected))
            + "".join(f", {p.host}/{p.protocol}" for p in published_ports(env)),
            firewall_ok,
            firewall_apply,
        ),
    )


def describe(env: Env) -> list[str]:
    """The plan for --dry-run: every step, as it will be checked."""
    return [f"  ensure    {step.name}" for step in plan(env, HostOs("debian", "12", "Debian 12"))]


# --------------------------------------------------------------------------- apply


def apt_failure(host: str, output: str) -> RemoteError | None:
    """A clear error for the two apt failures an operator can fix, else None."""
    text = output.lower()
    if "could not get lock" in text or "unable to acquire the dpkg frontend lock" in text:
        return RemoteError(
            f"apt is locked on {host}: another apt or dpkg (often unattended-upgrades) holds "
            f"its lock for more than {APT_LOCK_WAIT_SECONDS} s",
            "wait until it finishes, then run `inv configure` again: it resumes where it stopped",
        )
    offline = (
        "temporary failure resolving",
        "could not resolve",
        "failed to fetch",
        "unable to connect",
        "network is unreachable",
        "connection timed out",
        "connection failed",
    )
    if any(marker in text for marker in offline):
        return RemoteError(
            f"apt on {host} cannot reach its package mirror (offline, or DNS fails)",
            "fix the host's network or /etc/apt/sources.list, then run `inv configure` again: "
            "it resumes where it stopped",
        )
    return None


@dataclass(frozen=True, slots=True)
class Configured:
    host_os: HostOs
    changed: tuple[str, ...]
    unchanged: tuple[str, ...]


def require_supported(found: HostOs, host: str) -> HostOs:
    """``found`` when configure knows it; else one line naming what was found."""
    if found.key not in SUPPORTED:
        shown = found.pretty or found.key.strip() or "no /etc/os-release"
        raise RemoteError(
            f"unsupported OS on {host}: found {shown!r} "
            f"(ID={found.id or '?'} VERSION_ID={found.version or '?'}); "
            "inv configure supports Debian 12 (tested) and Ubuntu 24.04 (mapped, untested)"
        )
    return found


def probe_os(host: SshHost) -> HostOs:
    result = host.run(OS_PROBE, root=False)
    return require_supported(parse_os(result.stdout), host.target.host)


def apply(host: SshHost, env: Env, say: Say) -> Configured:
    """Run every step's check; apply only where it fails; print changed/unchanged."""
    host_os = probe_os(host)
    say(f"  host OS: {host_os.pretty or host_os.key}")
    changed: list[str] = []
    unchanged: list[str] = []
    seen_by_sshd = sshd_port(host)
    connected = [host.target.port, *([seen_by_sshd] if seen_by_sshd else [])]
    for step in plan(env, host_os, connected):
        if host.run(step.check, timeout=STEP_TIMEOUT_SECONDS).ok:
            say(f"  unchanged {step.name}")
            unchanged.append(step.name)
            continue
        result = host.run(step.apply, timeout=STEP_TIMEOUT_SECONDS)
        output = result.stdout + result.stderr
        if not result.ok:
            if step.uses_apt:
                known = apt_failure(host.target.host, output)
                if known is not None:
                    raise known
            lines = output.strip().splitlines()
            raise RemoteError(
                f"configure step '{step.name}' failed on {host.target.host}: "
                f"{lines[-1] if lines else f'exit {result.exit_code}'}",
                "fix what it names, then run `inv configure` again: it resumes where it stopped",
            )
        if not host.run(step.check, timeout=STEP_TIMEOUT_SECONDS).ok:
            raise RemoteError(
                f"configure step '{step.name}' ran on {host.target.host} but its check still fails",
                "run `inv configure` again; if it repeats, look at the host by hand",
            )
        say(f"  changed   {step.name}")
        changed.append(step.name)
    return Configured(host_os, tuple(changed), tuple(unchanged))
