"""One GPU per concurrent local job, tested with fake device counts and real processes."""

import os
import signal
import subprocess
import sys
import time

from augdefense import gpu

HOLD = """
import sys, time
from augdefense import gpu
slot = gpu.acquire(device_count={count}, lock_dir=sys.argv[1], poll_seconds=0.05, jobs_per_device={per})
print(slot.device, flush=True)
time.sleep(float(sys.argv[2]))
"""


def _spawn(lock_dir, count, hold_seconds, per=1):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("SLURM_JOB_ID", None)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.Popen(
        [sys.executable, "-c", HOLD.format(count=count, per=per), str(lock_dir), str(hold_seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_concurrent_jobs_get_distinct_devices(tmp_path):
    procs = [_spawn(tmp_path, 4, 3) for _ in range(4)]
    devices = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.wait(timeout=30)
    assert sorted(devices) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_a_third_job_waits_for_a_free_slot(tmp_path):
    holders = [_spawn(tmp_path, 2, 2) for _ in range(2)]
    assert sorted(p.stdout.readline().strip() for p in holders) == ["cuda:0", "cuda:1"]
    start = time.monotonic()
    slot = gpu.acquire(device_count=2, lock_dir=tmp_path, poll_seconds=0.05, timeout_seconds=30)
    assert time.monotonic() - start > 0.5  # it had to wait for a holder to finish
    assert slot.device in ("cuda:0", "cuda:1")
    slot.release()
    for p in holders:
        p.wait(timeout=30)


def test_killed_job_releases_its_slot(tmp_path):
    holder = _spawn(tmp_path, 1, 60)
    assert holder.stdout.readline().strip() == "cuda:0"
    try:
        gpu.acquire(device_count=1, lock_dir=tmp_path, poll_seconds=0.05, timeout_seconds=0.3)
        raise AssertionError("the slot should be taken")
    except TimeoutError:
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with gpu.acquire(device_count=1, lock_dir=tmp_path, timeout_seconds=5) as slot:
        assert slot.device == "cuda:0"


def test_cpu_when_no_gpu_and_scheduler_steps_aside(tmp_path, monkeypatch):
    assert gpu.acquire(device_count=0, lock_dir=tmp_path).device == "cpu"
    assert gpu.acquire("cpu", device_count=4, lock_dir=tmp_path).device == "cpu"
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    slot = gpu.acquire(device_count=1, lock_dir=tmp_path)
    assert slot.device == "cuda:0" and slot.lock_file is None


def test_jobs_per_device_share_a_gpu_spread_over_devices_first(tmp_path):
    """runtime.jobs_per_gpu = 2 on two devices: four concurrent jobs, two on each device; a fifth waits."""
    procs = [_spawn(tmp_path, 2, 3, per=2) for _ in range(4)]
    devices = [p.stdout.readline().strip() for p in procs]
    assert sorted(devices) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    try:
        gpu.acquire(device_count=2, lock_dir=tmp_path, poll_seconds=0.05, timeout_seconds=0.3, jobs_per_device=2)
        raise AssertionError("every slot should be taken")
    except TimeoutError:
        pass
    for p in procs:
        p.wait(timeout=30)
    first = _spawn(tmp_path, 2, 1, per=2)
    second = _spawn(tmp_path, 2, 1, per=2)
    # Jobs fill each device's first slot before any second one.
    assert sorted([first.stdout.readline().strip(), second.stdout.readline().strip()]) == ["cuda:0", "cuda:1"]
    first.wait(timeout=30)
    second.wait(timeout=30)
