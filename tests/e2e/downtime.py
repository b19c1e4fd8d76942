"""The tracker's downtime measured from outside: poll a health URL at a short fixed
interval in a background thread and report the longest span without an answer.

A probe is one HTTP GET with a short timeout; it counts as an answer only when it
returns 200. The downtime is the longest time between two answers (the last one
before an outage and the first one after it), so it bounds the real outage from
above by at most one interval plus one request's time; the span from the first
to the last failed probe bounds it from below. Polling is bounded: it ends when
the caller stops it or, at the latest, after ``limit_seconds``.

Used by the e2e (tests/e2e/test_deploy_and_backup.py) against the tracker's
published HTTP tracker port; tested against a local HTTP server on 127.0.0.1
that is stopped for a known time (tests/integration/test_health_poller.py).
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
from dataclasses import dataclass
from types import TracebackType

from tracker_deployer.config import Env

INTERVAL_SECONDS = 0.05
PROBE_TIMEOUT_SECONDS = 1.0
# The HTTP tracker's own health route (the real tracker's and the stand-in's).
HTTP_TRACKER_HEALTH_PATH = "/health_check"


def http_tracker_health_url(env: Env, host: str) -> str:
    """The health URL of the first HTTP tracker ``env`` publishes on ``host``."""
    published = [e for e in env.tracker.http_trackers if e.published]
    assert published, f"{env.name} publishes no HTTP tracker port to poll from outside"
    return f"http://{host}:{published[0].bind_address.port}{HTTP_TRACKER_HEALTH_PATH}"


@dataclass(frozen=True, slots=True)
class Probe:
    sent: float  # time.monotonic() before the request
    done: float  # time.monotonic() after the answer or the failure
    answered: bool  # HTTP 200 within the timeout


@dataclass(frozen=True, slots=True)
class Downtime:
    """What the poller saw."""

    longest_seconds: (
        float  # longest span between two answers (to the end if it never answered again)
    )
    failed_span_seconds: float  # first to last failed probe of that outage (a lower bound)
    probes: int
    failed: int
    answered_first: bool  # the first probe answered (else the measure says little)
    answered_last: bool  # the tracker answered again before polling ended
    polled_seconds: float
    interval_seconds: float

    def describe(self) -> str:
        end = "" if self.answered_last else "; NOT ANSWERING when polling ended"
        return (
            f"{self.longest_seconds:.2f} s without an answer (failed probes over "
            f"{self.failed_span_seconds:.2f} s; {self.failed}/{self.probes} probes failed, "
            f"every {self.interval_seconds * 1000:.0f} ms for {self.polled_seconds:.1f} s{end})"
        )


def summarize(probes: list[Probe], ended: float, interval: float) -> Downtime:
    """The longest span without an answer in ``probes`` (in order), polling having
    ended at ``ended``. Pure: the poller's and the tests' arithmetic."""
    assert probes, "no probe was made"
    longest = 0.0
    failed_span = 0.0
    last_answer = probes[0].sent  # before the first probe nothing is known
    first_failure: Probe | None = None
    last_failure: Probe | None = None
    for probe in probes:
        if probe.answered:
            gap = probe.done - last_answer
            if gap > longest:
                longest = gap
                failed_span = (
                    last_failure.done - first_failure.sent
                    if first_failure is not None and last_failure is not None
                    else 0.0
                )
            last_answer = probe.done
            first_failure = last_failure = None
        else:
            first_failure = first_failure or probe
            last_failure = probe
    if first_failure is not None and last_failure is not None:  # still down at the end
        gap = ended - last_answer
        if gap > longest:
            longest = gap
            failed_span = last_failure.done - first_failure.sent
    return Downtime(
        longest_seconds=longest,
        failed_span_seconds=failed_span,
        probes=len(probes),
        failed=sum(not probe.answered for probe in probes),
        answered_first=probes[0].answered,
        answered_last=probes[-1].answered,
        polled_seconds=ended - probes[0].sent,
        interval_seconds=interval,
    )


def probe_once(url: str, timeout: float) -> bool:
    """One GET of ``url``: True on HTTP 200 within ``timeout`` seconds."""
    parts = urllib.parse.urlsplit(url)
    assert parts.scheme == "http", url
    assert parts.hostname, url
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


class HealthPoller:
    """Poll ``url`` every ``interval`` seconds from ``start()`` until ``stop()`` (or at
    most ``limit_seconds``); ``stop()`` returns the :class:`Downtime` seen.

    Use it as a context manager around the run to measure::

        with HealthPoller(url, limit_seconds=300) as poller:
            run_the_backup()
        print(poller.result.describe())
    """

    def __init__(
        self,
        url: str,
        *,
        limit_seconds: float,
        interval: float = INTERVAL_SECONDS,
        timeout: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url
        self.limit_seconds = limit_seconds
        self.interval = interval
        self.timeout = timeout
        self._probes: list[Probe] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="health-poller", daemon=True)
        self._ended = 0.0
        self._result: Downtime | None = None

    def _poll(self) -> None:
        deadline = time.monotonic() + self.limit_seconds
        while not self._stopping.is_set():
            sent = time.monotonic()
            if sent >= deadline:
                break
            answered = probe_once(self.url, self.timeout)
            self._probes.append(Probe(sent, time.monotonic(), answered))
            # A fixed interval between probe starts (no drift while it answers fast).
            self._stopping.wait(max(0.0, sent + self.interval - time.monotonic()))
        self._ended = time.monotonic()

    def start(self) -> HealthPoller:
        self._thread.start()
        return self

    def wait_answering(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` seconds) for a probe sent from now on to be
        answered: a started container may not listen yet. True if one was."""
        since = time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline and self._thread.is_alive():
            if any(probe.answered and probe.sent >= since for probe in self._probes[-5:]):
                return True
            time.sleep(self.interval)
        return any(probe.answered and probe.sent >= since for probe in self._probes[-5:])

    def stop(self) -> Downtime:
        if self._result is None:
            self._stopping.set()
            self._thread.join(self.timeout + self.interval + 5)
            assert not self._thread.is_alive(), f"the poller of {self.url} did not stop"
            self._result = summarize(self._probes, self._ended, self.interval)
        return self._result

    @property
    def result(self) -> Downtime:
        assert self._result is not None, "the poller has not been stopped"
        return self._result

    def __enter__(self) -> HealthPoller:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
