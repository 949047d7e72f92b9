"""The seconds of this process spent on the work the pipeline exists to do: training (every
trial's included), and measuring a model (test-split quality, latency, inference energy).

Everything else a command does (starting Python, imports, reading params and data, the MLflow
store, exports, plots) is the pipeline's own cost. With ``PIPELINE_WORK_LOG`` set to a file, each
command appends one JSON line to it at exit: its arguments, its wall time since the process
started and its work seconds; ``benchmarks/repro_share.py`` sums them over a whole ``dvc repro``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "PIPELINE_WORK_LOG"
STARTED_ENV = "PIPELINE_WORK_STARTED"

_seconds = 0.0
_depth = 0  # nested blocks count once


@contextmanager
def counted() -> Iterator[None]:
    """Count the enclosed block's wall time as work."""
    global _seconds, _depth
    _depth += 1
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            _seconds += time.perf_counter() - t0


def seconds() -> float:
    return _seconds


def process_started() -> float:
    """When this process started, in seconds of ``CLOCK_BOOTTIME`` (Linux: the kernel's start time
    of the process, to 10 ms; psutil's ``create_time`` is whole seconds off, as boot time is)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5), starttime


def log_at_exit(code: int) -> None:
    """Append this command's line to ``$PIPELINE_WORK_LOG`` where it is set."""
    path = os.environ.get(ENV)
    if not path:
        return
    # The command's own process, where a warm server ran it in another one.
    started = float(os.environ.get(STARTED_ENV) or process_started())
    wall = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    line = {"argv": sys.argv[1:], "exit": code, "wall_s": wall, "work_s": _seconds}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
