"""The deployed stack's own Prometheus, queried from inside the target host.

The e2e environments run it with the Debian-built stand-ins
``tracker-deployer-test/prometheus:e2e`` and ``tracker-deployer-test/node-exporter:e2e``
(tracker_deployer.sandbox names them; test-doubles/images builds them) in place of
the official prom/prometheus and prom/node-exporter images, which cannot be pulled
here. The query goes over SSH to curl on the host, to the address the stack
publishes Prometheus on (the host's loopback, read from the topology), so the test
opens nothing the stack does not already publish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tracker_deployer import monitoring
from tracker_deployer.config import Env
from tracker_deployer.topology import derive

from tests.e2e.remote_host import RemoteHost

WAIT_SECONDS = 60  # scrapes and rule evaluations run every second in the e2e envs
POLL_SECONDS = 1
QUERY_TIMEOUT_SECONDS = 5


def metric(role: str) -> str:
    """A backup metric's full name (monitoring.METRICS owns them), scoped to its job."""
    return f'{monitoring.METRICS[role]}{{job="{monitoring.SCRAPE_JOB}"}}'


def sample_value(sample: dict[str, Any]) -> float:
    """The value of one instant-vector sample (``"value": [time, "text"]``)."""
    return float(sample["value"][1])


class StackPrometheus:
    """PromQL against the Prometheus of the stack deployed for ``env`` on ``host``."""

    def __init__(self, host: RemoteHost, env: Env) -> None:
        [port] = derive(env).service("prometheus").ports
        assert port.host_ip == "127.0.0.1", f"Prometheus is published on {port}"
        self.host = host
        self.url = f"http://{port.host_ip}:{port.host}/api/v1/query"

    def query(self, promql: str) -> list[dict[str, Any]] | None:
        """The query's result vector, or None while Prometheus does not answer."""
        # The query goes in on stdin (`@-`): no quoting for the remote shell.
        result = self.host.run(
            f"curl --silent --show-error --max-time {QUERY_TIMEOUT_SECONDS} --get "
            f"--data-urlencode query@- {self.url}",
            stdin=promql.encode(),
            timeout=QUERY_TIMEOUT_SECONDS + 30,
        )
        if result.returncode != 0:
            return None
        body: dict[str, Any] = json.loads(result.stdout)
        assert body["status"] == "success", body
        assert body["data"]["resultType"] == "vector", body
        vector: list[dict[str, Any]] = body["data"]["result"]
        return vector

    def wait_for(
        self,
        promql: str,
        what: str,
        accept: Callable[[list[dict[str, Any]]], bool] = bool,
    ) -> list[dict[str, Any]]:
        """Poll (bounded) until ``promql`` returns a vector that ``accept`` takes
        (by default: any non-empty one)."""
        deadline = time.monotonic() + WAIT_SECONDS
        last: list[dict[str, Any]] | None = None
        while time.monotonic() < deadline:
            last = self.query(promql)
            if last is not None and accept(last):
                return last
            time.sleep(POLL_SECONDS)
        seen = "no answer" if last is None else json.dumps(last)
        raise AssertionError(
            f"{what}: `{promql}` on the stack's Prometheus ({self.url}) did not give what "
            f"the test waits for within {WAIT_SECONDS} s; last: {seen}"
        )
