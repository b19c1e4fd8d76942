"""Run one command and measure its wall time and memory.

Memory is measured two ways, and the larger figure counts:

- the peak **sum** of the resident set sizes (RSS) of the whole process tree,
  sampled every `interval` seconds by walking `/proc/PID/task/*/children`
  from the command's process (a tree, not just a process group, so pipelines
  and subshells are included). Shared pages (libc, ...) count once per process,
  so the sum errs on the high side. A process living shorter than one
  interval can be missed; the second figure covers that:
- the largest peak RSS of any single process of the tree: the highest
  `VmHWM` (the kernel's high-water mark of the process's RSS, exact however
  short the peak was) of every process seen by the sampler. This is what GNU
  time's `%M` reports for one process. (`wait4`'s `ru_maxrss` cannot be used:
  the kernel carries the forking Python process's RSS over into the child's
  figure at `exec`.)

Wall time runs from just before `fork` to the return of `waitpid`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured command."""

    seconds: float
    tree_rss_bytes: int
    process_rss_bytes: int
    stdout: str
    # with run_measured(open_line=...): when that line appeared on stdout
    open_seconds: float | None = None
    # with run_measured(gate=...): when the go line was written to stdin
    go_seconds: float | None = None

    @property
    def peak_rss_bytes(self) -> int:
        """The larger of the sampled tree sum and the largest single process."""
        return max(self.tree_rss_bytes, self.process_rss_bytes)


class CommandFailedError(RuntimeError):
    """A measured command exited non-zero."""

    def __init__(self, argv: Sequence[str], code: int, stderr: str) -> None:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        super().__init__(f"{' '.join(argv)} exited {code}:\n{tail}")
        self.code = code


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            text = (task / "children").read_text()
        except OSError:
            continue
        found.extend(int(child) for child in text.split())
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in bytes; zeros once it is gone."""
    rss = hwm = 0
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return rss, hwm
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return rss, hwm


def tree_memory(root: int) -> tuple[int, int]:
    """(summed RSS, largest VmHWM) in bytes of `root` and all its descendants now."""
    total = highest = 0
    pending = [root]
    seen: set[int] = set()
    while pending:
        pid = pending.pop()
        if pid in seen:
            continue
        seen.add(pid)
        rss, hwm = _memory(pid)
        total += rss
        highest = max(highest, hwm)
        pending.extend(_children(pid))
    return total, highest


class _TreeSampler(threading.Thread):
    def __init__(self, root: int, interval: float) -> None:
        super().__init__(name=f"rss-sampler-{root}", daemon=True)
        self._root = root
        self._interval = interval
        self._stop_event = threading.Event()
        self.tree_peak = 0
        self.process_peak = 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            total, highest = tree_memory(self._root)
            self.tree_peak = max(self.tree_peak, total)
            self.process_peak = max(self.process_peak, highest)
            self._stop_event.wait(self._interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    interval: float = 0.01,
    open_line: str | None = None,
    gate: tuple[str, str] | None = None,
) -> Sample:
    """Run `argv` in its own session; raise CommandFailedError on a non-zero exit.

    With `open_line`, stdout is read as it comes and the time of the first line
    equal to it is kept (`backup.sh snapshot`'s "snapshot-open": the window).
    With `gate=(ready, go)`, stdin is a pipe: once the line `ready` appears on
    stdout, the line `go` is written to it and the time of that write is kept
    (`backup.sh snapshot --gate`: the maintenance script stops the tracker in
    between, so the window runs from the write to the open line)."""
    lines: list[str] = []
    opened: list[float] = []
    went: list[float] = []
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if gate is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
        assert process.stdout is not None
        stream = process.stdout

        def read_stdout() -> None:
            for raw in stream:
                line = raw.decode(errors="replace")
                if open_line is not None and not opened and line.rstrip("\n") == open_line:
                    opened.append(time.perf_counter() - started)
                if gate is not None and not went and line.rstrip("\n") == gate[0]:
                    assert process.stdin is not None
                    went.append(time.perf_counter() - started)
                    process.stdin.write(f"{gate[1]}\n".encode())
                    process.stdin.close()
                lines.append(line)

        reader = threading.Thread(target=read_stdout, daemon=True)
        reader.start()
        sampler = _TreeSampler(process.pid, interval)
        sampler.start()
        _, status = os.waitpid(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
        reader.join(timeout=60)
        stream.close()
        if process.stdin is not None and not process.stdin.closed:
            process.stdin.close()
        err.seek(0)
        stdout = "".join(lines)
        stderr = err.read().decode(errors="replace")
    if process.returncode != 0:
        raise CommandFailedError(argv, process.returncode, stderr)
    return Sample(
        seconds=seconds,
        tree_rss_bytes=sampler.tree_peak,
        process_rss_bytes=sampler.process_peak,
        stdout=stdout,
        open_seconds=opened[0] if opened else None,
        go_seconds=went[0] if went else None,
    )


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    return float(statistics.median(values))
