"""One owner per fact: every copy outside its owner is checked against it here.

Owners: paths.py (host and container paths), ports.py (the services' ports),
topology.DotEnv (the .env variable names), compose.py (the compose command
line), exit_codes.py (the host scripts' exit codes), config.model
BACKUP_IMAGE_VERSION (the backup image version), remote.ssh (the SSH liveness bound).
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import yaml
from tracker_deployer import compose, exit_codes, paths, ports
from tracker_deployer.config.model import (
    BACKUP_IMAGE_REPOSITORY,
    BACKUP_IMAGE_VERSION,
    DEFAULT_IMAGES,
)
from tracker_deployer.errors import ConfigError
from tracker_deployer.image import build_args, default_tag
from tracker_deployer.remote import deploy, ssh
from tracker_deployer.remote.backups import restore_script, verify_script
from tracker_deployer.render import render
from tracker_deployer.render.tree import dotenv_values
from tracker_deployer.topology import DotEnv, derive

from tests.helpers import REPO_ROOT, parse, sample_data

BACKUP_CONTEXT = REPO_ROOT / "docker" / "backup"
LIB = REPO_ROOT / "lib" / "tracker_deployer"


def _full_env_data() -> dict[str, Any]:
    """MySQL with prometheus, grafana, https and backups: every service there is."""
    data = sample_data("manual-test-mysql")
    data["https"] = {"admin_email": "admin@example.com"}
    data["tracker"]["http_api"].update({"domain": "api.example.com", "use_tls_proxy": True})
    return data


def _backup_sh_sources() -> str:
    """The backup image's shell sources (backup.sh, and any file it is split into)."""
    files = sorted([*BACKUP_CONTEXT.glob("*.sh"), *BACKUP_CONTEXT.glob("lib/*.sh")])
    return "\n".join(path.read_text() for path in files)


# --------------------------------------------------------------------------- paths


def test_backup_image_defaults_are_the_container_paths_of_paths_py() -> None:
    sources = _backup_sh_sources()
    config = re.search(r'DEFAULT_CONFIG_FILE="([^"]+)"', sources)
    root = re.search(r'DEFAULT_BACKUP_ROOT="([^"]+)"', sources)
    assert config is not None
    assert root is not None
    assert config.group(1) == str(paths.BACKUP_CONF_IN_BACKUP)
    assert root.group(1) == str(paths.BACKUP_ROOT_IN_BACKUP)


def test_the_backup_service_mounts_its_config_and_sets_where_the_image_looks() -> None:
    backup = derive(parse(_full_env_data())).service("backup")
    mounts = {mount.target: mount for mount in backup.volumes}
    assert mounts[str(paths.BACKUP_ETC_IN_BACKUP)].read_only
    assert paths.BACKUP_CONF_IN_BACKUP.parent == paths.BACKUP_ETC_IN_BACKUP
    assert mounts[str(paths.BACKUP_ETC_IN_BACKUP)].source == "./storage/backup-etc"
    assert not mounts[str(paths.BACKUP_ROOT_IN_BACKUP)].read_only
    assert mounts[str(paths.BACKUP_ROOT_IN_BACKUP)].source == "./storage/backup"
    # Every host file the backup reads is mounted where in_backup_container says.
    for host_path in (paths.COMPOSE_FILE, paths.DOTENV_FILE, paths.TRACKER_CONFIG):
        seen = paths.in_backup_container(host_path)
        assert any(
            seen.is_relative_to(target)
            and (paths.DEPLOY_DIR / mount.source.removeprefix("./")) / seen.relative_to(target)
            == host_path
            for target, mount in mounts.items()
        ), host_path


def test_mount_targets_are_the_container_paths_of_paths_py() -> None:
    owned = {
        str(value)
        for name, value in vars(paths).items()
        if name.endswith(("_IN_CONTAINER", "_IN_BACKUP"))
    } | {str(paths.in_backup_container(p)) for p in (paths.COMPOSE_FILE, paths.DOTENV_FILE)}
    topology = derive(parse(_full_env_data()))
    targets = {mount.target for service in topology.services for mount in service.volumes}
    assert targets <= owned, targets - owned
    sources = {m.source for s in topology.services for m in s.volumes if m.source.startswith(".")}
    host = {paths.on_host_relative(p) for p in vars(paths).values() if _under_deploy_dir(p)}
    assert sources <= host, sources - host


def _under_deploy_dir(value: object) -> bool:
    return isinstance(value, type(paths.DEPLOY_DIR)) and value.is_relative_to(paths.DEPLOY_DIR)


@pytest.mark.parametrize("template", ["operations/verify.sh.j2", "operations/restore.sh.j2"])
def test_operation_templates_hard_code_no_container_path(template: str) -> None:
    text = (REPO_ROOT / "templates" / template).read_text()
    for literal in ("/backups", "/etc/backup", "/data/storage", "/data/compose"):
        assert literal not in text, literal


# --------------------------------------------------------------------------- ports


def _tracker_on(data: dict[str, Any], port: int, protocol: str) -> dict[str, Any]:
    key = "udp_trackers" if protocol == "udp" else "http_trackers"
    data["tracker"][key].append({"bind_address": f"0.0.0.0:{port}"})
    return data


@pytest.mark.parametrize(
    ("port", "protocol", "owner"),
    [
        (ports.PROMETHEUS, "tcp", "prometheus"),
        (ports.GRAFANA, "tcp", "grafana"),
        (ports.CADDY_HTTP, "tcp", "caddy"),
        (ports.CADDY_HTTPS, "tcp", "caddy"),
        (ports.CADDY_HTTPS, "udp", "caddy"),
    ],
)
def test_the_config_reserves_the_ports_topology_publishes(
    port: int, protocol: str, owner: str
) -> None:
    """config/load.py repeats these ports; a tracker there is refused with the owner's port."""
    published = {
        (p.host, p.protocol)
        for service in derive(parse(_full_env_data())).services
        if service.name == owner
        for p in service.ports
    }
    assert (port, protocol) in published
    with pytest.raises(ConfigError, match=rf"port {port}/{protocol} is also published by {owner}"):
        parse(_tracker_on(_full_env_data(), port, protocol))


def test_the_config_takes_only_the_mysql_port_of_ports_py() -> None:
    data = sample_data("manual-test-mysql")
    assert parse(data).database.port == ports.MYSQL  # type: ignore[union-attr]
    data["tracker"]["core"]["database"]["port"] = ports.MYSQL + 1
    with pytest.raises(ConfigError, match=f"use {ports.MYSQL}"):
        parse(data)


def test_grafana_reaches_prometheus_on_its_port() -> None:
    tree = render(parse(_full_env_data()))
    datasource = tree.text(paths.GRAFANA_PROVISIONING / "datasources/prometheus.yml")
    assert f'url: "http://prometheus:{ports.PROMETHEUS}"' in datasource


def test_every_dashboard_panel_queries_the_provisioned_datasource() -> None:
    """The datasource's uid is written in its file and in every panel: they must agree
    (a panel with another uid shows "datasource not found")."""
    tree = render(parse(_full_env_data()))
    datasource = yaml.safe_load(
        tree.text(paths.GRAFANA_PROVISIONING / "datasources/prometheus.yml")
    )
    [uid] = [source["uid"] for source in datasource["datasources"]]
    dashboards = [f for f in tree.files if f.path.suffix == ".json" and "grafana" in str(f.path)]
    assert len(dashboards) == 2
    for dashboard in dashboards:
        panels = json.loads(dashboard.content)["panels"]
        assert panels
        for panel in panels:
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, dashboard.path


def test_grafana_loads_the_dashboards_from_where_they_are_mounted() -> None:
    env = parse(_full_env_data())
    tree = render(env)
    provider = yaml.safe_load(tree.text(paths.GRAFANA_PROVISIONING / "dashboards/torrust.yml"))
    [path] = [p["options"]["path"] for p in provider["providers"]]
    [grafana] = [s for s in derive(env).services if s.name == "grafana"]
    [mount] = [m for m in grafana.volumes if str(m.source).endswith("grafana/provisioning")]
    dashboards = paths.GRAFANA_PROVISIONING / "dashboards/torrust"
    assert path == f"{mount.target}/{dashboards.relative_to(paths.GRAFANA_PROVISIONING)}"
    assert any(f.path.parent == dashboards for f in tree.files)


# --------------------------------------------------------------------------- env var names


@pytest.mark.parametrize("name", ["manual-test-mysql", "manual-test-sqlite"])
def test_every_variable_a_service_reads_is_in_the_dotenv_and_no_other(name: str) -> None:
    env = parse(sample_data(name))
    read = {variable for s in derive(env).services for _, variable in s.environment}
    written = [variable for variable, _ in dotenv_values(env)]
    assert len(written) == len(set(written))
    assert read == set(written)
    assert read <= {value for key, value in vars(DotEnv).items() if key.isupper()}


# --------------------------------------------------------------------------- compose command


def test_the_compose_command_line_is_built_only_in_compose_py() -> None:
    shape = re.compile(r"docker compose\s+(\\\n\s*)?--project-directory")
    places = [*LIB.rglob("*.py"), *(REPO_ROOT / "templates").rglob("*.j2")]
    found = [
        str(path.relative_to(REPO_ROOT))
        for path in places
        if path.name != "compose.py" and shape.search(path.read_text())
    ]
    assert found == []


def test_host_scripts_and_ssh_commands_use_the_same_compose_command() -> None:
    env = parse(sample_data("manual-test-mysql"))
    array = "readonly -a COMPOSE=(" + " ".join(f"'{word}'" for word in compose.argv()) + ")\n"
    tree = render(env)
    assert array in tree.text(paths.MAINTENANCE_SCRIPT)
    assert array in tree.text(paths.VERIFY_SCRIPT)
    assert array in restore_script(env, "20261127_030000", "all", verify_first=True)
    assert array in verify_script(env, "20261127_030000", drill=True)
    assert compose.command() == deploy.COMPOSE
    assert compose.argv()[-1] == str(paths.COMPOSE_FILE)


# --------------------------------------------------------------------------- exit codes


def test_templates_take_every_exit_code_from_exit_codes_py() -> None:
    assignment = re.compile(r"^readonly EXIT_\w+=(\S+)$", re.MULTILINE)
    literal_exit = re.compile(r"\bexit (6[4-9]|7[0-8])\b")
    for template in (REPO_ROOT / "templates").rglob("*.sh.j2"):
        text = template.read_text()
        for value in assignment.findall(text):
            assert value.startswith("{{ exit_codes."), f"{template.name}: EXIT_...={value}"
        assert not literal_exit.search(text), template.name


def test_rendered_scripts_carry_the_owners_exit_codes() -> None:
    env = parse(sample_data("manual-test-mysql"))
    tree = render(env)
    maintenance = tree.text(paths.MAINTENANCE_SCRIPT)
    assert f"readonly EXIT_LOCKED={exit_codes.LOCK_BUSY}\n" in maintenance
    assert f"readonly EXIT_USAGE={exit_codes.USAGE}\n" in maintenance
    drill = tree.text(paths.DRILL_SCRIPT)
    assert f"readonly EXIT_LOCKED={exit_codes.LOCK_BUSY}\n" in drill
    assert f"readonly EXIT_NO_SET={exit_codes.NO_SET}\n" in drill
    restore = restore_script(env, "20261127_030000", "all", verify_first=True)
    assert f"readonly EXIT_NOT_VERIFIED={exit_codes.NOT_VERIFIED}\n" in restore
    assert f"flock -E {exit_codes.LOCK_BUSY} " in deploy.under_backup_lock("true")
    assert f"readonly BACKUP_SH_LOCKED={exit_codes.BACKUP_SH_LOCKED}\n" in restore


def test_backup_sh_gives_up_on_its_lock_with_the_code_the_scripts_expect() -> None:
    sources = _backup_sh_sources()
    assert f"readonly EXIT_LOCKED={exit_codes.BACKUP_SH_LOCKED}\n" in sources
    assert re.search(r'die "\$\{EXIT_LOCKED\}" "another backup.sh run holds', sources)


# --------------------------------------------------------------------------- image version


def test_every_env_pins_the_backup_image_version_of_the_owner() -> None:
    for path in sorted((REPO_ROOT / "envs").glob("*.json")):
        image = json.loads(path.read_text()).get("images", {}).get("backup")
        if image is not None and image.startswith(BACKUP_IMAGE_REPOSITORY + ":"):
            assert image == default_tag(), path.name


def test_the_schema_default_backup_image_is_the_owners() -> None:
    schema = json.loads(paths.SCHEMA_FILE.read_text())
    defaults = [value for value in _walk_defaults(schema) if BACKUP_IMAGE_REPOSITORY in str(value)]
    assert defaults == [default_tag()]


def test_the_guide_shows_the_owners_image_defaults_and_versions() -> None:
    """configuration.md's table of images (hand-written) gives DEFAULT_IMAGES, and no
    doc names a backup image of another version than the owner's major (it named a
    1.x default, which this deployer cannot drive)."""
    guide = (REPO_ROOT / "docs/user-guide/configuration.md").read_text()
    table = guide[guide.index("| `tracker` | string |") : guide.index("The defaults are `DEF")]
    shown = dict(re.findall(r'^\| `(\w+)` \| string \| `"([^"]+)"`', table, re.MULTILINE))
    assert shown == DEFAULT_IMAGES
    major = BACKUP_IMAGE_VERSION.partition(".")[0]
    for doc in sorted((REPO_ROOT / "docs").rglob("*.md")):
        versions = re.findall(r"tracker-backup:v?([0-9]+)\.[0-9]+\.[0-9]+", doc.read_text())
        assert set(versions) <= {major}, doc.name


def _walk_defaults(node: object) -> list[object]:
    if isinstance(node, dict):
        found = [node["default"]] if "default" in node else []
        return found + [d for value in node.values() for d in _walk_defaults(value)]
    if isinstance(node, list):
        return [d for value in node for d in _walk_defaults(value)]
    return []


def test_the_image_version_is_a_build_argument_of_the_owner() -> None:
    """The Dockerfile, backup.sh and the bats tests hold no version: the build gets it."""
    dockerfile = (BACKUP_CONTEXT / "Dockerfile").read_text()
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile
    assert "ARG VERSION\n" in dockerfile  # required: no default that could drift
    assert not re.search(r'version="\d|VERSION=\d', dockerfile), "a literal image version"
    assert build_args()["VERSION"] == BACKUP_IMAGE_VERSION
    for path in [*BACKUP_CONTEXT.glob("*.sh"), *(BACKUP_CONTEXT / "tests").glob("*.bats")]:
        assert "tool_version=1" not in path.read_text(), path.name
    assert not re.search(r'TOOL_VERSION="\d', _backup_sh_sources())


def test_the_shell_reader_of_the_image_version_prints_the_owners() -> None:
    """scripts/backup-image-version.sh: the workflow's and the host bats' version."""
    result = subprocess.run(
        [str(REPO_ROOT / "scripts" / "backup-image-version.sh")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert result.stdout == f"{BACKUP_IMAGE_VERSION}\n"


def test_the_image_workflow_builds_with_the_owners_version() -> None:
    workflow = (REPO_ROOT / ".github" / "workflows" / "backup-container.yaml").read_text()
    builds = workflow.count("uses: docker/build-push-action@")
    assert builds == 2  # the test job's and the publish job's
    assert workflow.count("build-args: VERSION=${{ steps.version.outputs.version }}") == builds
    assert workflow.count('version="$(bash scripts/backup-image-version.sh)"') == builds


def test_the_image_build_sets_the_user_compose_runs_the_backup_as() -> None:
    dockerfile = (BACKUP_CONTEXT / "Dockerfile").read_text()
    backup = derive(parse(sample_data("manual-test-sqlite"))).service("backup")
    uid, gid = (backup.user or "").split(":")
    assert f"ARG BACKUP_UID={uid}" in dockerfile
    assert f"ARG BACKUP_GID={gid}" in dockerfile
    assert (build_args()["BACKUP_UID"], build_args()["BACKUP_GID"]) == (uid, gid)


def test_the_troubleshooting_guide_gives_the_ssh_alive_bound_of_the_owner() -> None:
    """The SSH liveness bound is ssh.py's (ALIVE_INTERVAL_SECONDS, ALIVE_COUNT)."""
    guide = (REPO_ROOT / "docs/user-guide/troubleshooting.md").read_text()
    row = next(line for line in guide.splitlines() if "stopped answering over SSH" in line)
    interval, count = ssh.ALIVE_INTERVAL_SECONDS, ssh.ALIVE_COUNT
    assert f"for {interval * count:g} s: the connection" in row
    assert f"asked every {interval:g} s, given up after {interval * count:g} s" in row
    assert f"`ServerAliveInterval {interval:g}`, `ServerAliveCountMax {count}`" in row


# --------------------------------------------------------------------------- monitoring guide


def test_the_monitoring_guide_gives_the_owners_metrics_alerts_and_thresholds() -> None:
    """monitoring.md (hand-written) lists monitoring.METRICS and the alerts of the rules
    rendered with every option (backup.offsite adds the off-host ones), and quotes the
    thresholds those rules are rendered with: monitoring.py's."""
    from tracker_deployer import monitoring
    from tracker_deployer.config.model import DEFAULT_OFFSITE_CHECK_SCHEDULE, CronSchedule

    guide = (REPO_ROOT / "docs/user-guide/monitoring.md").read_text()
    text = " ".join(guide.split())  # the prose breaks its lines anywhere
    unit = {"d": 86400, "h": 3600, "min": 60, "s": 1}
    duration = r"\d+ (?:d|h|min|s)\b(?: \d+ (?:d|h|min|s)\b)*"  # as the guide writes one

    def section(heading: str) -> str:
        start = guide.index(f"\n## {heading}\n")
        end = guide.find("\n## ", start + 1)
        return guide[start : end if end != -1 else None]

    def spoken(seconds: int) -> str:
        """Seconds as the guide writes them: 1 h 30 min."""
        parts: list[str] = []
        for name, size in unit.items():
            if seconds >= size:
                parts.append(f"{seconds // size} {name}")
                seconds %= size
        return " ".join(parts)

    def heard(words: str) -> int:
        """The guide's duration (36 h 30 min, 10 d 12 h 30 min) in seconds."""
        assert re.fullmatch(duration, words), f"monitoring.md: {words!r} is no duration"
        return sum(int(n) * unit[u] for n, u in re.findall(r"(\d+) (\w+)", words))

    def literal_seconds(literal: str) -> int:
        """A Prometheus duration literal (15m, 1h30m) in seconds."""
        pieces = re.findall(r"(\d+)([dhms])", literal)
        assert "".join(n + u for n, u in pieces) == literal, f"not a duration: {literal}"
        return sum(int(n) * unit[u if u != "m" else "min"] for n, u in pieces)

    # The metric table: every metric monitoring.py owns, and no other.
    rows = [line for line in section("The metrics").splitlines() if line.startswith("| `")]
    listed = {n for row in rows for n in re.findall(r"`(tracker_backup_\w+)`", row.split(" | ")[0])}
    owned = set(monitoring.METRICS.values())
    assert listed == owned, (
        f"monitoring.md's metric table drifted from monitoring.METRICS: only in the guide "
        f"{sorted(listed - owned)}, only in METRICS {sorted(owned - listed)}"
    )
    named = set(re.findall(r"\btracker_backup_\w+", guide))
    assert named <= owned, f"monitoring.md names metrics not in METRICS: {sorted(named - owned)}"

    # The alert tables: the rules rendered with every option.
    env = parse(json.loads((REPO_ROOT / "tests/data/valid/every-option.json").read_text()))
    groups = yaml.safe_load(render(env).text(paths.PROMETHEUS_RULES))["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    alerts = section("The alerts")
    tabled = set(re.findall(r"^\| `([A-Z]\w+)`", alerts, re.MULTILINE))
    assert tabled == set(rules), (
        f"monitoring.md's alert tables drifted from the rendered rules: only in the guide "
        f"{sorted(tabled - set(rules))}, only in the rules {sorted(set(rules) - tabled)}"
    )

    def row(alert: str) -> str:
        return next(line for line in alerts.splitlines() if line.startswith(f"| `{alert}`"))

    # The fixed thresholds: the rules take them from AlertSettings; the guide quotes them.
    settings = monitoring.alert_settings(env)
    unavailable = settings.metrics_unavailable_for
    assert rules["BackupMetricsUnavailable"]["for"] == unavailable
    quoted = f"` | for {spoken(literal_seconds(unavailable))}, "
    assert quoted in row("BackupMetricsUnavailable"), (
        f"monitoring.md: BackupMetricsUnavailable should say {quoted!r} (metrics_unavailable_for {unavailable})"
    )
    down = settings.tracker_down_for
    assert rules["TrackerDown"]["for"] == down
    for quoted in (
        f"` | for {spoken(literal_seconds(down))}, ",
        f"more than {spoken(literal_seconds(down))}:",
    ):
        assert quoted in row("TrackerDown"), (
            f"monitoring.md: TrackerDown should say {quoted!r} (tracker_down_for {down})"
        )
    ahead = settings.set_ahead_tolerance_seconds
    assert rules["BackupSetAheadOfClock"]["expr"].endswith(f" < -{ahead}")
    quoted = f"named more than {spoken(ahead)} after the host's clock"
    assert quoted in row("BackupSetAheadOfClock"), (
        f"monitoring.md: BackupSetAheadOfClock should say {quoted!r} (set_ahead_tolerance_seconds {ahead})"
    )

    # The missing thresholds, period x MISSING_FACTOR + MISSING_MARGIN_SECONDS, and the
    # guide's worked examples of them.
    formula = f"period \N{MULTIPLICATION SIGN} {monitoring.MISSING_FACTOR:g} + {spoken(monitoring.MISSING_MARGIN_SECONDS)}"
    stated = re.findall(rf"period \N{{MULTIPLICATION SIGN}} ([0-9.]+) \+ ({duration})", alerts)
    assert len(stated) == 4, f"monitoring.md should state {formula!r} for the 4 missing alerts"
    for factor, margin in stated:
        assert (float(factor), heard(margin)) == (
            monitoring.MISSING_FACTOR,
            monitoring.MISSING_MARGIN_SECONDS,
        ), f"monitoring.md says period x {factor} + {margin}; monitoring.py: {formula!r}"

    def missing_after(expression: str) -> int:
        return monitoring.missing_after_seconds(CronSchedule.parse(expression))

    examples = re.findall(rf"`([^`]+)` gives [^`]*?alert after ({duration})\)", text)
    weekly = re.findall(rf"\(default weekly: ({duration})\)", row("BackupOffsiteCheckMissing"))
    examples += [(DEFAULT_OFFSITE_CHECK_SCHEDULE, after) for after in weekly]
    uploads = re.findall(rf"uploads are missing after ({duration})\)", text)
    assert env.backup is not None
    examples += [(str(env.backup.schedule), after) for after in uploads]
    assert len(examples) == 4, "monitoring.md's worked examples of the missing thresholds moved"
    for expression, after in examples:
        assert heard(after) == missing_after(expression), (
            f"monitoring.md: {expression} should be missing after "
            f"{spoken(missing_after(expression))}, not {after}"
        )
    scrape = f"at least every {monitoring.MAX_SCRAPE_SECONDS} s"
    assert scrape in text, f"monitoring.md should say {scrape!r} (MAX_SCRAPE_SECONDS)"


def test_the_maintenance_script_states_the_host_scripts_version_where_the_guide_says() -> None:
    """remote.host_scripts tells another version's scripts by this line (grep -x):
    the rendered script holds it whole, as its third line, and deploy.md names it and
    the older scripts' lock as paths.py and render.tree have them."""
    from tracker_deployer.render.tree import HOST_SCRIPTS_VERSION, host_scripts_line

    tree = render(parse(sample_data("manual-test-mysql")))
    lines = tree.text(paths.MAINTENANCE_SCRIPT).splitlines()
    assert (
        lines[2]
        == host_scripts_line()
        == f"# tracker-deployer host scripts: {HOST_SCRIPTS_VERSION}"
    )
    guide = (REPO_ROOT / "docs/user-guide/deploy.md").read_text()
    assert "in its third line,\n`# tracker-deployer host scripts: N`" in guide
    assert f"holding their lock, `{paths.OLDER_BACKUP_LOCK}` before version 2" in guide
