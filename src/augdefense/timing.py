"""Where a job's time goes: named phases of this process, recorded in the job's sidecar
(``timings``) and its log, and summed per rule by ``make bench``; and its memory (``memory``:
resident memory when the data started loading, and the peaks).

``startup`` is the time from the process's start to the runner (interpreter, Snakemake's script
preamble, the script's imports); ``imports`` is the time spent importing modules while the job ran
(torch, mostly: the jobs import it lazily); the job functions mark ``load``, ``model``, ``train``,
``craft``, ``evaluate``, ``filter`` and ``write`` around their steps, each net of the imports inside
it; the runner adds ``verify_inputs`` and ``job`` (the whole function call).
"""

from __future__ import annotations

import builtins
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

# The phases that are the work itself; everything else a job spends is overhead.
WORK = ("train", "craft", "evaluate", "filter")

_phases: dict[str, float] = {}
_memory: dict[str, float] = {}


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall time, less the imports inside it, to phase ``name``."""
    start, imported = time.perf_counter(), _phases.get("imports", 0.0)
    try:
        yield
    finally:
        imports = _phases.get("imports", 0.0) - imported
        _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - start - imports


@contextmanager
def imports_timed() -> Iterator[None]:
    """Count the time of every outermost import of a module not yet loaded as ``imports``.
    (``python -X importtime`` reports per module, to stderr; this sums them in the process.)"""
    original, depth = builtins.__import__, 0

    def timed(name, globals=None, locals=None, fromlist=(), level=0):
        nonlocal depth
        if depth or (level == 0 and name in sys.modules):
            return original(name, globals, locals, fromlist, level)
        depth += 1
        start = time.perf_counter()
        try:
            return original(name, globals, locals, fromlist, level)
        finally:
            depth -= 1
            _phases["imports"] = _phases.get("imports", 0.0) + time.perf_counter() - start

    builtins.__import__ = timed
    try:
        yield
    finally:
        builtins.__import__ = original


def record(name: str, seconds: float | None) -> None:
    if seconds is not None:
        _phases[name] = _phases.get(name, 0.0) + seconds


def recorded() -> dict[str, float]:
    """This process's phases so far, rounded to milliseconds."""
    return {name: round(seconds, 3) for name, seconds in _phases.items()}


def reset() -> None:
    _phases.clear()
    _memory.clear()


def _status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (``VmRSS``: resident now; ``VmHWM``: its peak), MiB;
    None where it cannot be read. (``getrusage``'s peak would carry over the peak of the process
    that started this one: Linux keeps it across exec.)"""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def mark_memory(name: str) -> None:
    """Record the resident memory at a point of the job as ``<name>_rss_mb``."""
    rss = _status_mb("VmRSS")
    if rss is not None:
        _memory[f"{name}_rss_mb"] = round(rss, 1)


def memory() -> dict[str, float]:
    """The marks so far and the process's peak resident memory (``peak_rss_mb``), MiB. DataLoader
    workers are processes of their own, each holding a few decoded batches; they are not counted."""
    peak = _status_mb("VmHWM")
    return {**_memory, **({"peak_rss_mb": round(peak, 1)} if peak is not None else {})}


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc; None where it cannot be read)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in clock ticks
    return max(0.0, uptime - started)
