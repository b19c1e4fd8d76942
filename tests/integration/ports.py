"""Loopback ports for servers a test starts later (sshd, rclone, moto, a registry,
the ports a test stack publishes).

A port the kernel hands out for ``bind(0)`` is from its ephemeral range, where every
other test's ``bind(0)`` and ``connect()`` draw theirs: between the choice and the
server's bind (or while a stopped tracker has let its published ports go), another
xdist worker's server took one in CI. These come from below that range, from a block
of this worker's own, each checked free for TCP and UDP when it is chosen.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from pathlib import Path

PER_WORKER = 1000
WORKERS = 8  # gw0 to gw7: their blocks stay below the ephemeral range
# From a place of this process's own in the block: two sessions with one worker
# name (an e2e run beside the tests, both "gw0") do not walk it in step.
_picked = itertools.count(random.randrange(PER_WORKER))


def _first_port() -> int:
    """The first port of this worker's block: below the ephemeral range, 1000 a worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    assert index < WORKERS, f"test ports have blocks for {WORKERS} xdist workers, not {worker}"
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    base = min(20000, low - WORKERS * PER_WORKER)
    assert base > 1024, f"the ephemeral range starts too low ({low}) for test ports below it"
    return base + PER_WORKER * index


def _is_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port of this worker's block, free on 127.0.0.1 (TCP and UDP) now; never the
    same twice within 1000 choices."""
    first = _first_port()
    for _ in range(PER_WORKER):  # bounded: one turn of the block
        port = first + next(_picked) % PER_WORKER
        if _is_free(port):
            return port
    raise AssertionError(f"no free port in {first}-{first + PER_WORKER - 1} on 127.0.0.1")
