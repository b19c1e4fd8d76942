"""The container constant C of the downtime model.

In a deployment the tracker is down for: `docker stop` of its container, the
backup container's snapshot from "go" until "snapshot-open", `docker start` of
its container. The backup container itself is started, and prepares the
snapshot (`backup.sh snapshot --gate`), before the tracker is stopped, so its
start is not part of the downtime; what is left of it is the round trip of the
"go" line into the running container and of the open line out of it, through
the client's attach stream. The benchmark measures those with the plain docker
CLI on a tiny container:

    C = median(docker stop) + median(docker start) + median(gate round trip)

The probe container runs `sleep infinity` under `--init`, so it stops at once
on SIGTERM; a real tracker's graceful shutdown, its ports and networks add to
this, so C is a lower bound. C is the same for all three methods. The start of
a one-off container (`docker run --rm IMAGE true`, what the maintenance script
paid inside the window before issue 15) is measured and reported beside it,
outside C.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from trackerbench.measure import median

# The probe's stand-in for `backup.sh snapshot --gate`: ready, one line in, one out.
_GATE_PROBE = "echo ready; read -r line; echo open"


@dataclass(frozen=True, slots=True)
class ContainerConstant:
    """C and its parts (seconds); all zero when docker was not used."""

    seconds: float
    stop_seconds: float
    start_seconds: float
    gate_seconds: float  # "go" in, the open line out, through a running container's attach
    run_seconds: float  # a one-off container's start and removal: outside C since issue 15
    image: str
    note: str


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


def _gate_round_trip(image: str) -> float:
    """From writing a line into a ready `docker run -i` container until its answer."""
    process = subprocess.Popen(
        ["docker", "run", "-i", "--rm", "--init", image, "sh", "-c", _GATE_PROBE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the gate probe container did not print 'ready'")
        started = time.perf_counter()
        process.stdin.write("go\n")
        process.stdin.flush()
        answer = process.stdout.readline().strip()
        seconds = time.perf_counter() - started
        if answer != "open":
            raise RuntimeError(f"the gate probe container answered {answer!r}")
        return seconds
    finally:
        process.stdin.close()
        process.wait(timeout=120)


def _docker_usable(image: str) -> str:
    """An empty string when docker can run `image`, else the reason it cannot."""
    if shutil.which("docker") is None:
        return "docker is not installed"
    try:
        subprocess.run(["docker", "info"], check=True, capture_output=True, timeout=30)
    except (subprocess.SubprocessError, OSError):
        return "docker daemon not reachable"
    try:
        subprocess.run(
            ["docker", "image", "inspect", image], check=True, capture_output=True, timeout=30
        )
    except (subprocess.SubprocessError, OSError):
        return f"image {image} not present (pull it or pass --probe-image)"
    return ""


def not_measured(image: str, reason: str) -> ContainerConstant:
    """C = 0, with the reason recorded."""
    return ContainerConstant(0.0, 0.0, 0.0, 0.0, 0.0, image, f"not measured: {reason}; C = 0")


def measure(image: str, repeat: int, log: Callable[[str], None]) -> ContainerConstant:
    """Measure C with a probe container of `image`."""
    reason = _docker_usable(image)
    if reason:
        log(f"container constant: {reason}; using C = 0")
        return not_measured(image, reason)
    name = f"tdbench-probe-{os.getpid()}"
    stops: list[float] = []
    starts: list[float] = []
    gates: list[float] = []
    runs: list[float] = []
    subprocess.run(
        ["docker", "run", "-d", "--init", "--name", name, image, "sleep", "infinity"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        for _ in range(repeat):
            stops.append(_timed(["docker", "stop", "--time", "10", name]))
            starts.append(_timed(["docker", "start", name]))
            gates.append(_gate_round_trip(image))
            runs.append(_timed(["docker", "run", "--rm", image, "true"]))
    finally:
        subprocess.run(["docker", "rm", "--force", name], check=False, capture_output=True)
    constant = ContainerConstant(
        seconds=median(stops) + median(starts) + median(gates),
        stop_seconds=median(stops),
        start_seconds=median(starts),
        gate_seconds=median(gates),
        run_seconds=median(runs),
        image=image,
        note=(
            "docker stop + docker start + the go/open round trip (medians); a one-off"
            f" container's run, {median(runs):.3f} s, is outside the window"
        ),
    )
    log(
        f"container constant: C = {constant.seconds:.2f} s (stop {constant.stop_seconds:.2f}"
        f" + start {constant.start_seconds:.2f} + go/open {constant.gate_seconds * 1000:.1f} ms);"
        f" outside it: a one-off container's run {constant.run_seconds:.2f}"
    )
    return constant
