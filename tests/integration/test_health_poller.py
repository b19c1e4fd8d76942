"""The e2e's downtime poller (tests/e2e/downtime.py) against a real HTTP server on
127.0.0.1 that is stopped, or answers 503, for a known time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.downtime import HealthPoller, Probe, summarize

pytestmark = pytest.mark.integration

INTERVAL = 0.02
# The poller's overestimate: one interval, one request and the threads' scheduling,
# on a loaded CI machine (3 test workers and docker on 2 CPUs; 0.25 s was tight).
# The windows below are long enough that the bounds still tell them apart.
SLACK = 1.0


class _Handler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"status":"Ok"}'
        self.send_response(self.server.status if self.path == "/health_check" else 404)  # type: ignore[attr-defined]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server:
    """A health endpoint on 127.0.0.1 that can be stopped and started on one port."""

    def __init__(self) -> None:
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.status = 200  # type: ignore[attr-defined]
        self.port = server.server_address[1]
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
        self.thread.start()

    def stop(self) -> None:
        assert self.server is not None
        assert self.thread is not None
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        self.server = None

    def answer(self, status: int) -> None:
        assert self.server is not None
        self.server.status = status  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health_check"


@pytest.fixture
def server() -> Iterator[_Server]:
    served = _Server()
    served.start()
    try:
        yield served
    finally:
        if served.server is not None:
            served.stop()


def test_a_server_that_always_answers_has_no_downtime(server: _Server) -> None:
    with HealthPoller(server.url, limit_seconds=30, interval=INTERVAL) as poller:
        time.sleep(1.0)
    seen = poller.result
    assert seen.failed == 0
    assert seen.probes >= 10
    assert seen.answered_first
    assert seen.answered_last
    assert seen.longest_seconds < INTERVAL + SLACK


def test_a_server_stopped_for_a_known_time_gives_that_downtime(server: _Server) -> None:
    with HealthPoller(server.url, limit_seconds=30, interval=INTERVAL) as poller:
        time.sleep(0.3)
        going = time.monotonic()
        server.stop()
        gone = time.monotonic()
        time.sleep(3.0)
        coming = time.monotonic()
        server.start()
        back = time.monotonic()
        time.sleep(0.3)
    seen = poller.result
    # Nothing listened from `gone` to `coming`; something did before `going`, after `back`.
    assert coming - gone <= seen.longest_seconds <= back - going + INTERVAL + SLACK, seen
    assert seen.failed_span_seconds <= seen.longest_seconds
    assert seen.failed_span_seconds >= coming - gone - 2 * INTERVAL - SLACK, seen
    assert seen.failed > 0
    assert seen.answered_first
    assert seen.answered_last


def test_a_server_answering_503_counts_as_down(server: _Server) -> None:
    with HealthPoller(server.url, limit_seconds=30, interval=INTERVAL) as poller:
        time.sleep(0.2)
        server.answer(503)
        unhealthy = time.monotonic()
        time.sleep(2.5)
        healthy = time.monotonic()
        server.answer(200)
        time.sleep(0.2)
    seen = poller.result
    assert healthy - unhealthy <= seen.longest_seconds <= healthy - unhealthy + INTERVAL + SLACK
    assert seen.answered_last


def test_a_server_that_never_comes_back_is_down_until_the_end(server: _Server) -> None:
    with HealthPoller(server.url, limit_seconds=30, interval=INTERVAL) as poller:
        time.sleep(0.2)
        server.stop()
        gone = time.monotonic()
        time.sleep(2.0)
    seen = poller.result
    assert not seen.answered_last
    assert seen.longest_seconds >= time.monotonic() - gone - SLACK - 0.5, seen
    assert "NOT ANSWERING" in seen.describe()


def test_polling_ends_by_itself_at_its_limit(server: _Server) -> None:
    poller = HealthPoller(server.url, limit_seconds=0.3, interval=INTERVAL).start()
    time.sleep(2.5)
    seen = poller.stop()
    assert seen.polled_seconds < 0.3 + SLACK, seen
    assert seen.probes <= 0.3 / INTERVAL + 1


def test_summarize_takes_the_longest_gap_between_answers() -> None:
    probes = [
        Probe(0.0, 0.01, True),
        Probe(0.1, 0.11, True),
        Probe(0.2, 0.21, False),
        Probe(0.3, 0.31, False),
        Probe(0.4, 0.41, True),  # 0.30 s after the last answer
        Probe(0.5, 0.51, False),
        Probe(0.6, 0.61, True),  # 0.20 s
    ]
    seen = summarize(probes, ended=0.7, interval=0.1)
    assert seen.longest_seconds == pytest.approx(0.30)
    assert seen.failed_span_seconds == pytest.approx(0.11)
    assert seen.failed == 3
    assert seen.answered_first
    assert seen.answered_last
    trailing = summarize([*probes, Probe(0.7, 0.71, False)], ended=1.5, interval=0.1)
    assert trailing.longest_seconds == pytest.approx(1.5 - 0.61)
    assert not trailing.answered_last


def test_wait_answering_waits_for_a_server_that_comes_back(server: _Server) -> None:
    with HealthPoller(server.url, limit_seconds=30, interval=INTERVAL) as poller:
        server.stop()
        time.sleep(0.1)
        assert not poller.wait_answering(0.3)
        threading.Timer(0.3, server.start).start()
        waited = time.monotonic()
        assert poller.wait_answering(5)
        assert time.monotonic() - waited >= 0.3 - INTERVAL
    assert poller.result.answered_last
