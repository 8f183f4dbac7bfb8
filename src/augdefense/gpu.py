"""One GPU per concurrent local job.

Snakemake never sets CUDA_VISIBLE_DEVICES for local jobs, so with ``--resources gpu=4`` four
jobs would all start on cuda:0. Each job instead takes an exclusive ``flock`` on one lock file
per device and uses the first free one; the kernel drops the lock when the process ends, killed
or not, so a crashed job never holds a slot.

Locking steps aside only where a scheduler gave the job exactly one device (SLURM, PBS or LSF
set CUDA_VISIBLE_DEVICES to the job's own GPU: the SLURM executor's one-GPU jobs). Inside a
multi-GPU allocation (``salloc --gpus=4`` or an sbatch script running ``snakemake --resources
gpu=4``) the jobs lock among the visible devices like on a workstation, in a lock folder of their
own allocation: a scheduler that renumbers each allocation's devices from 0 would otherwise make
two allocations on one node wait on each other's locks.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
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


def scheduler_job() -> str | None:
    """The batch scheduler's job ID this process runs in (SLURM, PBS, LSF), or None."""
    return next((f"{var}={os.environ[var]}" for var in SCHEDULER_VARS if os.environ.get(var)), None)


def default_lock_dir() -> Path:
    explicit = os.environ.get("AUGDEFENSE_GPU_LOCK_DIR")
    if explicit:
        return Path(explicit)
    job = scheduler_job()
    suffix = "" if job is None else "-" + re.sub(r"[^A-Za-z0-9_.-]", "_", job)
    return Path(tempfile.gettempdir()) / f"augdefense-gpu-locks-{os.getuid()}{suffix}"


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _use(device: str) -> None:
    """Make ``device`` this process's current CUDA device, so that kernels, caches and libraries
    that ask for "the" device (cuDNN, NCCL, ``torch.cuda.*`` without an index) use it, not cuda:0."""
    import torch

    torch.cuda.set_device(torch.device(device))


def _lock_names(count: int) -> list[str]:
    """A lock name per visible device: the CUDA_VISIBLE_DEVICES entry (index or UUID) it stands for."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    names = [v.strip() for v in visible.split(",") if v.strip()][:count] if visible else []
    names += [str(i) for i in range(len(names), count)]
    return [re.sub(r"[^A-Za-z0-9_.-]", "_", name) for name in names]


def acquire(
    preference: str = "auto",
    device_count: int | None = None,
    lock_dir: str | Path | None = None,
    poll_seconds: float = 2.0,
    timeout_seconds: float | None = None,
    jobs_per_device: int = 1,
) -> DeviceSlot:
    """Return a slot on a free GPU (or the CPU when none exists or ``preference == 'cpu'``), made
    the process's current CUDA device. Each device has ``jobs_per_device`` slots
    (``runtime.jobs_per_gpu``); jobs fill every device's first slot before any second one.

    ``device_count`` overrides the CUDA device count (tests use fake counts; no device is selected then).
    """
    if preference == "cpu":
        return DeviceSlot("cpu")
    count = _cuda_count() if device_count is None else device_count
    if count == 0:
        if preference == "cuda":
            raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible")
        return DeviceSlot("cpu")
    if count == 1 and scheduler_job() is not None:
        slot = DeviceSlot("cuda:0")
    else:
        slot = _lock_a_slot(count, lock_dir, poll_seconds, timeout_seconds, jobs_per_device)
    if device_count is None:
        _use(slot.device)
    return slot


def _lock_a_slot(count, lock_dir, poll_seconds, timeout_seconds, jobs_per_device) -> DeviceSlot:
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    names = _lock_names(count)
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


# -- the workflow's start-up check (torch-free: it runs in Snakemake's own process) ----------------


def visible_nvidia_gpus() -> int:
    """NVIDIA GPUs this process may use: ``nvidia-smi -L``'s list, narrowed by CUDA_VISIBLE_DEVICES;
    0 where nvidia-smi is missing or fails (no driver)."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return 0
    if listed.returncode != 0:
        return 0
    gpus = len([line for line in listed.stdout.splitlines() if line.startswith("GPU ")])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    # CUDA stops at the first invalid entry (-1 hides every device); UUIDs (GPU-..., MIG-...) count.
    valid = 0
    for entry in entries:
        if entry.startswith("-") or (entry.isdigit() and int(entry) >= gpus):
            break
        valid += 1
    return min(valid, gpus)


def unlimited_gpu_jobs_message(device: str, gpu_jobs: int, gpu_limit: bool, gpus: int, cores: int) -> str | None:
    """The warning for a local run that would start GPU jobs on a machine with GPUs without
    ``--resources gpu=N``: Snakemake then ignores the rules' ``gpu=1`` and starts as many GPU jobs
    as the cores allow; each loads its data, then waits for a GPU lock. None when nothing is wrong."""
    if device == "cpu" or gpu_jobs == 0 or gpu_limit or gpus == 0:
        return None
    return (
        f"augdefense: {gpus} GPU(s) visible and {gpu_jobs} GPU job(s) to run, but no --resources gpu=N was given: "
        f"Snakemake ignores the rules' gpu=1 then and may start up to {cores} GPU jobs at once, each loading its "
        f"data and then waiting for a free GPU. Run with --resources gpu={gpus} (GPUs x runtime.jobs_per_gpu), "
        "or runtime.device: cpu to train on the CPU."
    )
