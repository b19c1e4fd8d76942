"""A real Docker registry on loopback for the publish tests.

Debian's ``docker-registry`` package (distribution 2.8; scripts/setup.sh installs
it without starting its own service): one ``docker-registry serve`` per test, with
its own config file, its storage under the test's tmp_path and a free port on
127.0.0.1. The Docker engine pushes to 127.0.0.0/8 over plain HTTP (loopback is
an insecure registry by default), so no TLS and no login are involved.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration.ports import free_port

REGISTRY_BINARY = "docker-registry"
START_TIMEOUT_SECONDS = 15
STOP_TIMEOUT_SECONDS = 10
HTTP_TIMEOUT_SECONDS = 10
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    )
)

CONFIG = """\
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: false
http:
  addr: 127.0.0.1:{port}
"""


@dataclass
class Registry:
    """A running registry: its address and its HTTP API (``/v2/``)."""

    port: int
    storage: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def get(self, path: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(f"http://{self.address}{path}")
        if accept:
            request.add_header("Accept", accept)
        try:
            # http://127.0.0.1 only: the URL is built from our own address above.
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers.items()), error.read()

    def get_json(self, path: str, accept: str | None = None) -> Any:
        status, _, body = self.get(path, accept)
        assert status == 200, f"GET {path}: {status} {body[:200]!r}"
        return json.loads(body)

    def catalog(self) -> list[str]:
        return list(self.get_json("/v2/_catalog")["repositories"])

    def tags(self, name: str) -> list[str]:
        """The repository's tags, sorted; [] when the registry does not know it."""
        status, _, body = self.get(f"/v2/{name}/tags/list")
        if status == 404:
            return []
        assert status == 200, f"tags of {name}: {status} {body[:200]!r}"
        return sorted(json.loads(body).get("tags") or [])

    def manifest(self, name: str, reference: str) -> tuple[str, dict[str, Any]]:
        """The manifest of ``name:reference`` and its digest (Docker-Content-Digest)."""
        status, headers, body = self.get(f"/v2/{name}/manifests/{reference}", MANIFEST_TYPES)
        assert status == 200, f"manifest {name}:{reference}: {status} {body[:200]!r}"
        digest = {key.lower(): value for key, value in headers.items()}["docker-content-digest"]
        return digest, json.loads(body)

    def blob_json(self, name: str, digest: str) -> Any:
        return self.get_json(f"/v2/{name}/blobs/{digest}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)


def start_registry(directory: Path) -> Registry:
    """Start ``docker-registry serve`` on a free loopback port; wait until /v2/ answers."""
    binary = shutil.which(REGISTRY_BINARY)
    if binary is None:
        raise AssertionError(
            "docker-registry is not installed: run scripts/setup.sh "
            "(apt-get install docker-registry)"
        )
    storage = directory / "storage"
    storage.mkdir(parents=True)
    port = free_port()
    config = directory / "config.yml"
    config.write_text(CONFIG.format(storage=storage, port=port))
    log = directory / "registry.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [binary, "serve", str(config)], stdout=output, stderr=subprocess.STDOUT
        )
    registry = Registry(port, storage, process, log)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"docker-registry exited at once:\n{log.read_text()[-2000:]}")
        try:
            status, _, _ = registry.get("/v2/")
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            return registry
        time.sleep(0.1)
    registry.stop()
    raise AssertionError(
        f"docker-registry did not answer on {registry.address} within "
        f"{START_TIMEOUT_SECONDS} s:\n{log.read_text()[-2000:]}"
    )
