"""The container constant C of the downtime model.

In a deployment the maintenance window is: `docker compose stop tracker`, the
backup container's snapshot, `docker compose start tracker`. Besides the
snapshot itself, the window pays for stopping and starting a container and
for starting (and removing) the one-off backup container. The benchmark
measures those three with the plain docker CLI on a tiny container:

    C = median(docker stop) + median(docker start) + median(docker run --rm IMAGE true)

The probe container runs `sleep infinity` under `--init`, so it stops at once
on SIGTERM; a real tracker's graceful shutdown and `docker compose`'s own
start-up add to this, so C is a lower bound. C is the same for all three
methods (each needs the stop, the start and one container in the window).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from trackerbench.measure import median


@dataclass(frozen=True, slots=True)
class ContainerConstant:
    """C and its parts (seconds); all zero when docker was not used."""

    seconds: float
    stop_seconds: float
    start_seconds: float
    run_seconds: float
    image: str
    note: str


def _timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=120)
    return time.perf_counter() - started


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
    return ContainerConstant(0.0, 0.0, 0.0, 0.0, image, f"not measured: {reason}; C = 0")


def measure(image: str, repeat: int, log: Callable[[str], None]) -> ContainerConstant:
    """Measure C with a probe container of `image`."""
    reason = _docker_usable(image)
    if reason:
        log(f"container constant: {reason}; using C = 0")
        return not_measured(image, reason)
    name = f"tdbench-probe-{os.getpid()}"
    stops: list[float] = []
    starts: list[float] = []
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
            runs.append(_timed(["docker", "run", "--rm", image, "true"]))
    finally:
        subprocess.run(["docker", "rm", "--force", name], check=False, capture_output=True)
    constant = ContainerConstant(
        seconds=median(stops) + median(starts) + median(runs),
        stop_seconds=median(stops),
        start_seconds=median(starts),
        run_seconds=median(runs),
        image=image,
        note="docker stop + docker start + docker run --rm (medians)",
    )
    log(
        f"container constant: C = {constant.seconds:.2f} s (stop {constant.stop_seconds:.2f}"
        f" + start {constant.start_seconds:.2f} + run {constant.run_seconds:.2f})"
    )
    return constant
