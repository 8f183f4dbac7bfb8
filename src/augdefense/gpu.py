"""One GPU per concurrent local job.

Snakemake never sets CUDA_VISIBLE_DEVICES for local jobs, so with ``--resources gpu=4`` four
jobs would all start on cuda:0. Each job instead takes an exclusive ``flock`` on one lock file
per device and uses the first free one; the kernel drops the lock when the process ends, killed
or not, so a crashed job never holds a slot. Under SLURM (or any scheduler that sets
CUDA_VISIBLE_DEVICES for the job) locking steps aside and the job uses its first visible device.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SCHEDULER_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
# Devices this process trained or evaluated on (each slot records itself; provenance reports them).
DEVICES_USED: list[str] = []


@dataclass
class DeviceSlot:
    device: str
    lock_file: Path | None = None
    _fd: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        DEVICES_USED.append(self.device)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DeviceSlot:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def default_lock_dir() -> Path:
    return Path(
        os.environ.get("AUGDEFENSE_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / f"augdefense-gpu-locks-{os.getuid()}")
    )


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def acquire(
    preference: str = "auto",
    device_count: int | None = None,
    lock_dir: str | Path | None = None,
    poll_seconds: float = 2.0,
    timeout_seconds: float | None = None,
    jobs_per_device: int = 1,
) -> DeviceSlot:
    """Return a slot on a free GPU (or the CPU when none exists or ``preference == 'cpu'``). Each
    device has ``jobs_per_device`` slots (``runtime.jobs_per_gpu``); jobs fill every device's first
    slot before any second one.

    ``device_count`` overrides the CUDA device count (tests use fake counts).
    """
    if preference == "cpu":
        return DeviceSlot("cpu")
    count = _cuda_count() if device_count is None else device_count
    if count == 0:
        if preference == "cuda":
            raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible")
        return DeviceSlot("cpu")
    if any(var in os.environ for var in SCHEDULER_VARS):
        return DeviceSlot("cuda:0")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    names = [v.strip() for v in visible.split(",") if v.strip()][:count] if visible else []
    names += [str(i) for i in range(len(names), count)]
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    slots = [(index, name, k) for k in range(jobs_per_device) for index, name in enumerate(names)]
    while True:
        for index, name, k in slots:
            path = lock_dir / f"gpu-{name}.{k}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return DeviceSlot(f"cuda:{index}", path, fd)
        if timeout_seconds is not None and time.monotonic() - start > timeout_seconds:
            raise TimeoutError(f"no free GPU slot among {len(slots)} in {lock_dir} after {timeout_seconds} s")
        time.sleep(poll_seconds)
