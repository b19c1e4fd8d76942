"""The compose topology, derived from an :class:`Env` as plain data.

Which services exist, which networks they join, what they publish, mount and
depend on is decided here, in Python, so the compose template only prints it
(no ``if mysql`` chains in templates). The rules:

* tracker always; mysql with the MySQL driver; prometheus/grafana when
  configured; caddy with ``https``; backup with ``backup``.
* ``database_network``: tracker, mysql and backup, only with MySQL.
* ``metrics_network``: tracker and prometheus. ``visualization_network``:
  prometheus and grafana. ``proxy_network``: caddy and every proxied service.
  ``backup_metrics_network``: prometheus and node-exporter only.
* node-exporter with backup and prometheus: only its textfile collector, the
  root-owned textfile directory mounted read-only, no host port.
* The backup service: ``profiles: [backup]`` (never started by ``up``),
  ``restart: "no"``, joins the database network and depends on
  ``mysql: service_healthy`` only with MySQL; with SQLite it has no network at
  all (``network_mode: none``).
* The offsite service (with ``backup.offsite``): the backup image running
  ``offsite.sh``, profile ``backup``, the sets mounted read-only, restic's
  settings from an ``env_file``; the host's network (the repository is
  wherever the host can reach it) but its own process table, and the hostname
  ``<host>-<machine id>-offsite`` (from ``$TRACKER_OFFSITE_HOSTNAME``, which the
  host scripts set; see offsite.hostname_export): restic 0.14 judges a lock of the same hostname by signalling its PID,
  which the private PID namespace confines to the container; a lock of any
  other host counts as live until it is 30 minutes old. A local-path
  repository is mounted at its own path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tracker_deployer import monitoring, paths, ports
from tracker_deployer.config.model import Endpoint, Env
from tracker_deployer.offsite import DEFAULT_HOSTNAME as OFFSITE_DEFAULT_HOSTNAME
from tracker_deployer.offsite import HOSTNAME_VARIABLE as OFFSITE_HOSTNAME_VARIABLE
from tracker_deployer.offsite import SERVICE as OFFSITE_SERVICE

APP_UID = 1000
APP_GID = 1000


@dataclass(frozen=True, slots=True)
class Port:
    host: int
    container: int
    protocol: str = "tcp"
    host_ip: str | None = None

    def __str__(self) -> str:
        ip = f"[{self.host_ip}]" if self.host_ip and ":" in self.host_ip else self.host_ip
        prefix = f"{ip}:" if ip else ""
        suffix = "/udp" if self.protocol == "udp" else ""
        return f"{prefix}{self.host}:{self.container}{suffix}"


@dataclass(frozen=True, slots=True)
class Dependency:
    service: str
    condition: str  # service_started | service_healthy


@dataclass(frozen=True, slots=True)
class Mount:
    source: str  # relative to the compose directory, or a named volume
    target: str
    read_only: bool = False

    def __str__(self) -> str:
        return f"{self.source}:{self.target}{':ro' if self.read_only else ''}"


@dataclass(frozen=True, slots=True)
class Healthcheck:
    test: tuple[str, ...]
    interval: str = "5s"
    timeout: str = "5s"
    retries: int = 30
    start_period: str = "10s"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    image: str
    restart: str = "unless-stopped"
    init: bool = False
    user: str | None = None
    group_add: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()  # (name, variable in .env)
    ports: tuple[Port, ...] = ()
    volumes: tuple[Mount, ...] = ()
    networks: tuple[str, ...] = ()
    network_mode: str | None = None
    depends_on: tuple[Dependency, ...] = ()
    healthcheck: Healthcheck | None = None
    profiles: tuple[str, ...] = ()
    long_running: bool = True
    entrypoint: tuple[str, ...] = ()
    env_file: tuple[str, ...] = ()
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class Topology:
    services: tuple[Service, ...]
    networks: tuple[str, ...]
    volumes: tuple[str, ...]

    def service(self, name: str) -> Service:
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)

    @property
    def service_names(self) -> tuple[str, ...]:
        return tuple(service.name for service in self.services)

    @property
    def long_running(self) -> tuple[Service, ...]:
        """The services ``compose up`` starts and keeps running (:attr:`Service.long_running`)."""
        return tuple(service for service in self.services if service.long_running)


@dataclass(slots=True)
class _Builder:
    services: list[Service] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def network(self, name: str) -> str:
        if name not in self.networks:
            self.networks.append(name)
        return name


DATABASE_NETWORK = "database_network"
METRICS_NETWORK = "metrics_network"
VISUALIZATION_NETWORK = "visualization_network"
PROXY_NETWORK = "proxy_network"
BACKUP_METRICS_NETWORK = "backup_metrics_network"
NOBODY = "65534:65534"


class DotEnv:
    """Variables of the stack's .env: render/tree.py writes them, the services read them."""

    USER_ID = "USER_ID"
    DATABASE_DRIVER = "TORRUST_TRACKER_DATABASE_DRIVER"
    CONFIG_TOML_PATH = "TORRUST_TRACKER_CONFIG_TOML_PATH"
    MYSQL_ROOT_PASSWORD = "MYSQL_ROOT_PASSWORD"  # noqa: S105 - a name, not a password
    MYSQL_DATABASE = "MYSQL_DATABASE"
    MYSQL_USER = "MYSQL_USER"
    MYSQL_PASSWORD = "MYSQL_PASSWORD"  # noqa: S105 - a name, not a password
    GRAFANA_ADMIN_USER = "GF_SECURITY_ADMIN_USER"
    GRAFANA_ADMIN_PASSWORD = "GF_SECURITY_ADMIN_PASSWORD"  # noqa: S105 - a name


def _from_dotenv(*variables: str) -> tuple[tuple[str, str], ...]:
    """Container variables named as their .env variable."""
    return tuple((variable, variable) for variable in variables)


_host = paths.on_host_relative


def tracker_ports(env: Env) -> tuple[Port, ...]:
    """Host ports of the tracker: every socket not behind the proxy, on the IP of its
    ``bind_address`` (a loopback one on the host's loopback)."""
    tracker = env.tracker
    sockets: list[tuple[Endpoint, str]] = [
        *((e, "udp") for e in tracker.udp_trackers),
        *((e, "tcp") for e in (*tracker.http_trackers, tracker.http_api.endpoint)),
        (tracker.health_check_api, "tcp"),
    ]
    return tuple(
        Port(e.bind_address.port, e.bind_address.port, protocol, e.bind_address.host_ip)
        for e, protocol in sockets
        if e.on_host
    )


def proxied_upstreams(env: Env) -> tuple[tuple[str, str], ...]:
    """(domain, upstream) pairs for Caddy, in a stable order."""
    tracker = env.tracker
    pairs: list[tuple[str, str]] = []
    for endpoint in (*tracker.http_trackers, tracker.http_api.endpoint, tracker.health_check_api):
        if endpoint.use_tls_proxy and endpoint.domain:
            pairs.append((endpoint.domain, f"tracker:{endpoint.bind_address.port}"))
    if env.grafana and env.grafana.use_tls_proxy and env.grafana.domain:
        pairs.append((env.grafana.domain, f"grafana:{ports.GRAFANA}"))
    return tuple(pairs)


def health_check_url(env: Env) -> str:
    port = env.tracker.health_check_api.bind_address.port
    return f"http://localhost:{port}/health_check"


def derive(env: Env) -> Topology:
    """Every service, network and volume of the stack for ``env``."""
    build = _Builder()
    mysql = env.uses_mysql
    proxied = proxied_upstreams(env)
    tracker_proxied = any(upstream.startswith("tracker:") for _, upstream in proxied)
    grafana_proxied = any(upstream.startswith("grafana:") for _, upstream in proxied)

    tracker_networks: list[str] = []
    if mysql:
        tracker_networks.append(build.network(DATABASE_NETWORK))
    if env.prometheus:
        tracker_networks.append(build.network(METRICS_NETWORK))
    if tracker_proxied:
        tracker_networks.append(build.network(PROXY_NETWORK))
    build.services.append(
        Service(
            name="tracker",
            image=env.images.tracker,
            init=True,
            environment=(
                *_from_dotenv(DotEnv.USER_ID, DotEnv.DATABASE_DRIVER),
                # The tracker image's entry script refuses to start without it.
                ("TORRUST_TRACKER_CONFIG_OVERRIDE_CORE__DATABASE__DRIVER", DotEnv.DATABASE_DRIVER),
                *_from_dotenv(DotEnv.CONFIG_TOML_PATH),
            ),
            ports=tracker_ports(env),
            volumes=(
                Mount(_host(paths.TRACKER_LIB_DIR), paths.TRACKER_LIB_IN_CONTAINER),
                Mount(_host(paths.TRACKER_LOG_DIR), paths.TRACKER_LOG_IN_CONTAINER),
                # Read-only: the deployer owns the config. The tracker image's entry
                # script chowns/chmods /etc/torrust (ignored on a read-only mount);
                # on a writable one every deploy would "fix" the owner back and
                # restart the tracker.
                Mount(_host(paths.TRACKER_ETC_DIR), paths.TRACKER_ETC_IN_CONTAINER, read_only=True),
            ),
            networks=tuple(tracker_networks),
            depends_on=(Dependency("mysql", "service_healthy"),) if mysql else (),
            healthcheck=Healthcheck(("CMD", "/usr/bin/http_health_check", health_check_url(env))),
        )
    )

    if mysql:
        build.volumes.append("mysql_data")
        build.services.append(
            Service(
                name="mysql",
                image=env.images.mysql,
                environment=_from_dotenv(
                    DotEnv.MYSQL_ROOT_PASSWORD,
                    DotEnv.MYSQL_DATABASE,
                    DotEnv.MYSQL_USER,
                    DotEnv.MYSQL_PASSWORD,
                ),
                volumes=(Mount("mysql_data", paths.MYSQL_DATA_IN_CONTAINER),),
                networks=(DATABASE_NETWORK,),
                healthcheck=Healthcheck(
                    ("CMD", "mysqladmin", "ping", "-h", "127.0.0.1", "--silent"),
                    start_period="30s",
                ),
            )
        )

    if env.prometheus:
        prometheus_networks = [build.network(METRICS_NETWORK), build.network(VISUALIZATION_NETWORK)]
        if monitoring.monitors_backups(env):
            prometheus_networks.append(build.network(BACKUP_METRICS_NETWORK))
        build.services.append(
            Service(
                name="prometheus",
                image=env.images.prometheus,
                # prometheus.yml holds the API token: 0640 root:1000, read via group 1000.
                group_add=(str(APP_GID),),
                ports=(Port(ports.PROMETHEUS, ports.PROMETHEUS, host_ip=ports.PROMETHEUS_HOST_IP),),
                volumes=(
                    Mount(
                        _host(paths.PROMETHEUS_ETC_DIR),
                        str(paths.PROMETHEUS_CONFIG_IN_CONTAINER),
                        read_only=True,
                    ),
                ),
                networks=tuple(prometheus_networks),
                depends_on=(Dependency("tracker", "service_started"),),
            )
        )

    if monitoring.monitors_backups(env):
        textfile = paths.METRICS_TEXTFILE_IN_CONTAINER
        build.services.append(
            Service(
                name=monitoring.NODE_EXPORTER_SERVICE,
                image=env.images.node_exporter,
                user=NOBODY,
                command=(
                    "--collector.disable-defaults",
                    "--collector.textfile",
                    f"--collector.textfile.directory={textfile}",
                    f"--web.listen-address=:{monitoring.NODE_EXPORTER_PORT}",
                ),
                volumes=(Mount(_host(paths.METRICS_TEXTFILE_DIR), str(textfile), read_only=True),),
                networks=(BACKUP_METRICS_NETWORK,),
            )
        )

    if env.grafana:
        build.volumes.append("grafana_data")
        grafana_networks = [build.network(VISUALIZATION_NETWORK)]
        if grafana_proxied:
            grafana_networks.append(build.network(PROXY_NETWORK))
        build.services.append(
            Service(
                name="grafana",
                image=env.images.grafana,
                environment=_from_dotenv(DotEnv.GRAFANA_ADMIN_USER, DotEnv.GRAFANA_ADMIN_PASSWORD),
                ports=() if grafana_proxied else (Port(ports.GRAFANA, ports.GRAFANA),),
                volumes=(
                    Mount("grafana_data", paths.GRAFANA_DATA_IN_CONTAINER),
                    Mount(
                        _host(paths.GRAFANA_PROVISIONING),
                        paths.GRAFANA_PROVISIONING_IN_CONTAINER,
                        read_only=True,
                    ),
                ),
                networks=tuple(grafana_networks),
                depends_on=(Dependency("prometheus", "service_started"),),
            )
        )

    if env.https:
        build.volumes += ["caddy_data", "caddy_config"]
        upstream_services = sorted({upstream.split(":")[0] for _, upstream in proxied})
        build.services.append(
            Service(
                name="caddy",
                image=env.images.caddy,
                ports=(
                    Port(ports.CADDY_HTTP, ports.CADDY_HTTP),
                    Port(ports.CADDY_HTTPS, ports.CADDY_HTTPS),
                    Port(ports.CADDY_HTTPS, ports.CADDY_HTTPS, "udp"),
                ),
                volumes=(
                    Mount(_host(paths.CADDYFILE), paths.CADDYFILE_IN_CONTAINER, read_only=True),
                    Mount("caddy_data", paths.CADDY_DATA_IN_CONTAINER),
                    Mount("caddy_config", paths.CADDY_CONFIG_IN_CONTAINER),
                ),
                networks=(build.network(PROXY_NETWORK),),
                depends_on=tuple(Dependency(name, "service_started") for name in upstream_services),
            )
        )

    if env.backup:
        build.services.append(
            Service(
                name="backup",
                image=env.images.backup,
                restart="no",
                init=True,
                user=f"{APP_UID}:{APP_GID}",
                volumes=(
                    Mount(
                        _host(paths.BACKUP_ETC_DIR), str(paths.BACKUP_ETC_IN_BACKUP), read_only=True
                    ),
                    Mount(_host(paths.STORAGE_DIR), str(paths.STORAGE_IN_BACKUP), read_only=True),
                    Mount(_host(paths.BACKUP_DIR), str(paths.BACKUP_ROOT_IN_BACKUP)),
                    *(
                        Mount(_host(path), str(paths.in_backup_container(path)), read_only=True)
                        for path in (paths.COMPOSE_FILE, paths.DOTENV_FILE)
                    ),
                ),
                networks=(DATABASE_NETWORK,) if mysql else (),
                network_mode=None if mysql else "none",
                depends_on=(Dependency("mysql", "service_healthy"),) if mysql else (),
                profiles=("backup",),
                long_running=False,
            )
        )
        if env.backup.offsite:
            build.services.append(offsite_service(env))

    order = [
        DATABASE_NETWORK,
        METRICS_NETWORK,
        VISUALIZATION_NETWORK,
        PROXY_NETWORK,
        BACKUP_METRICS_NETWORK,
    ]
    networks = tuple(name for name in order if name in build.networks)
    return Topology(tuple(build.services), networks, tuple(build.volumes))


def offsite_service(env: Env) -> Service:
    """The service that copies sets to the restic repository (see the module doc)."""
    assert env.backup is not None
    assert env.backup.offsite is not None
    offsite = env.backup.offsite
    etc = paths.BACKUP_CONF.parent.relative_to(paths.DEPLOY_DIR)
    backups = paths.BACKUP_DIR.relative_to(paths.DEPLOY_DIR)
    env_file = paths.OFFSITE_ENV_FILE.relative_to(paths.DEPLOY_DIR)
    volumes = [
        Mount(f"./{etc}", str(paths.BACKUP_ETC_IN_BACKUP), read_only=True),
        Mount(f"./{backups}", str(paths.BACKUP_ROOT_IN_BACKUP), read_only=True),
    ]
    if offsite.kind == "local":
        volumes.append(Mount(offsite.repository, offsite.repository))
    return Service(
        name=OFFSITE_SERVICE,
        image=env.images.backup,
        restart="no",
        init=True,
        user=f"{APP_UID}:{APP_GID}",
        entrypoint=(str(paths.OFFSITE_SCRIPT_IN_BACKUP),),
        env_file=(f"./{env_file}",),
        volumes=tuple(volumes),
        network_mode="host",
        hostname=f"${{{OFFSITE_HOSTNAME_VARIABLE}:-{OFFSITE_DEFAULT_HOSTNAME}}}",
        profiles=("backup",),
        long_running=False,
    )
