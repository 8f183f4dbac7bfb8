"""One GPU per concurrent local job, tested with fake device counts and real processes; the SLURM
profile's GPU resources; the start-up warning when GPU jobs would run without --resources gpu=N."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from augdefense import gpu
from conftest import REPO, snakemake

HOLD = """
import sys, time
from augdefense import gpu
slot = gpu.acquire(device_count={count}, lock_dir=sys.argv[1], poll_seconds=0.05, jobs_per_device={per})
print(slot.device, flush=True)
time.sleep(float(sys.argv[2]))
"""


def _spawn(lock_dir, count, hold_seconds, per=1, scheduler=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for var in (*gpu.SCHEDULER_VARS, "CUDA_VISIBLE_DEVICES"):
        env.pop(var, None)
    env.update(scheduler or {})
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


def test_cpu_when_no_gpu(tmp_path):
    assert gpu.acquire(device_count=0, lock_dir=tmp_path).device == "cpu"
    assert gpu.acquire("cpu", device_count=4, lock_dir=tmp_path).device == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        gpu.acquire("cuda", device_count=0, lock_dir=tmp_path)


@pytest.mark.parametrize("var", gpu.SCHEDULER_VARS)
def test_inside_a_multi_gpu_allocation_jobs_lock_among_its_devices(tmp_path, var):
    """`salloc --gpus=4` (or an sbatch/PBS/LSF script) running `snakemake --resources gpu=4`: the
    scheduler variable is set, four devices are visible, and four concurrent jobs take all four."""
    procs = [_spawn(tmp_path, 4, 3, scheduler={var: "42"}) for _ in range(4)]
    devices = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.wait(timeout=30)
    assert sorted(devices) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_a_scheduler_job_with_one_visible_device_steps_aside(tmp_path):
    """The SLURM executor's one-GPU jobs: SLURM gave the job its GPU, so no lock; concurrent jobs of
    one allocation with one device all use it (Snakemake's --resources gpu=N caps how many)."""
    procs = [_spawn(tmp_path, 1, 2, scheduler={"SLURM_JOB_ID": "42"}) for _ in range(3)]
    devices = [p.stdout.readline().strip() for p in procs]
    for p in procs:
        p.wait(timeout=30)
    assert devices == ["cuda:0"] * 3
    assert list(tmp_path.iterdir()) == []  # no lock taken


def test_locks_of_two_allocations_on_one_node_are_apart(tmp_path, monkeypatch):
    """A scheduler may number each allocation's devices from 0: two allocations must not wait on
    each other's cuda:0."""
    monkeypatch.delenv("AUGDEFENSE_GPU_LOCK_DIR", raising=False)
    for var in gpu.SCHEDULER_VARS:
        monkeypatch.delenv(var, raising=False)
    plain = gpu.default_lock_dir()
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    first = gpu.default_lock_dir()
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert len({plain, first, gpu.default_lock_dir()}) == 3


def test_the_acquired_device_becomes_the_current_one(tmp_path, monkeypatch):
    chosen = []
    monkeypatch.setattr(gpu, "_cuda_count", lambda: 2)
    monkeypatch.setattr(gpu, "_use", chosen.append)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpu.acquire(lock_dir=tmp_path) as first, gpu.acquire(lock_dir=tmp_path) as second:
        assert chosen == [first.device, second.device] == ["cuda:0", "cuda:1"]
    gpu.acquire(device_count=2, lock_dir=tmp_path).release()  # a fake count selects nothing
    assert len(chosen) == 2


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


# -- the SLURM profile: GPU resources for every rule that asks for a GPU, and for no other ------------


@pytest.mark.workflow
def test_every_gpu_rule_gets_the_profiles_gpu_resources_and_no_cpu_rule_does(tmp_path):
    """The profile as Snakemake reads it (`--profile profiles/slurm`, the local executor in place of the
    plugin), dry-run over the tiny preset, which schedules every rule: each job that asks for a GPU gets
    the profile's GPU partition and memory, each other job the CPU partition."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    defaults, per_rule = profile["default-resources"], profile.get("set-resources") or {}
    assert defaults["gpu_job_partition"] != defaults["slurm_partition"]
    (tmp_path / "tiny.yaml").write_text((REPO / "presets" / "tiny.yaml").read_text())
    out = snakemake(
        "-n",
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--executor",
        "local",
        "--configfile",
        str(tmp_path / "tiny.yaml"),
        cwd=tmp_path,
    ).stdout
    jobs = [
        (rule, dict(item.split("=", 1) for item in resources.split(", ")))
        for rule, resources in re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)\n", out, re.M)
    ]
    rules = snakemake("--list-rules", "--configfile", str(tmp_path / "tiny.yaml"), cwd=tmp_path).stdout.split()
    assert {rule for rule, _ in jobs} == set(rules)  # every rule is checked
    gpu_rules = {rule for rule, resources in jobs if resources.get("gpu") == "1"}
    assert {"train_victim", "train_feature_model", "train_crafting_model", "pretrain_extractor"} <= gpu_rules
    assert {"craft_poison", "sanitize"} <= gpu_rules and "prepare_data" not in gpu_rules
    for rule, resources in jobs:
        if rule in gpu_rules:
            wanted = {"slurm_partition": defaults["gpu_job_partition"], "mem_mb": defaults["gpu_job_mem_mb"]}
        else:
            wanted = {"slurm_partition": defaults["slurm_partition"], "mem_mb": defaults["mem_mb"]}
        wanted.update({k: v for k, v in per_rule.get(rule, {}).items() if k in wanted})
        assert {k: resources[k] for k in wanted} == {k: str(v) for k, v in wanted.items()}, rule
        assert (resources.get("gpu") == "1") == (rule in gpu_rules)
    # One declaration: the profile names no GPU rule's partition or memory itself.
    assert not any({"slurm_partition", "mem_mb"} & set(per_rule.get(rule, {})) for rule in gpu_rules)


# -- the start-up warning: GPU jobs on a GPU machine without --resources gpu=N ------------------------


def test_the_warning_names_the_fix_and_only_fires_when_it_applies():
    message = gpu.unlimited_gpu_jobs_message("auto", gpu_jobs=12, gpu_limit=False, gpus=4, cores=16)
    assert "--resources gpu=4" in message and "12 GPU job(s)" in message and "16 GPU jobs at once" in message
    assert gpu.unlimited_gpu_jobs_message("auto", gpu_jobs=12, gpu_limit=True, gpus=4, cores=16) is None
    assert gpu.unlimited_gpu_jobs_message("cpu", gpu_jobs=12, gpu_limit=False, gpus=4, cores=16) is None
    assert gpu.unlimited_gpu_jobs_message("auto", gpu_jobs=12, gpu_limit=False, gpus=0, cores=16) is None
    assert gpu.unlimited_gpu_jobs_message("auto", gpu_jobs=0, gpu_limit=False, gpus=4, cores=16) is None


FAKE_NVIDIA_SMI = """#!/bin/sh
for i in $(seq 0 {last}); do echo "GPU $i: Fake GPU (UUID: GPU-$i)"; done
"""


def _fake_nvidia_smi(folder, gpus):
    folder.mkdir(exist_ok=True)
    (folder / "nvidia-smi").write_text(FAKE_NVIDIA_SMI.format(last=gpus - 1))
    (folder / "nvidia-smi").chmod(0o755)
    return folder


def test_visible_gpus_follow_nvidia_smi_and_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_fake_nvidia_smi(tmp_path, 4)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu.visible_nvidia_gpus() == 4
    for visible, count in (("1,3", 2), ("", 0), ("-1", 0), ("0,7,1", 1), ("GPU-2", 1)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        assert gpu.visible_nvidia_gpus() == count, visible
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert gpu.visible_nvidia_gpus() == 0


@pytest.mark.workflow
def test_a_local_run_with_gpu_jobs_and_no_gpu_resource_says_so_at_start(tmp_path, monkeypatch):
    """On a machine with GPUs (a stand-in nvidia-smi lists two), a run that will start GPU jobs without
    --resources gpu=N prints the warning before its first job; with --resources gpu=2 it does not."""
    (tmp_path / "tiny.yaml").write_text((REPO / "presets" / "tiny.yaml").read_text())
    monkeypatch.setenv("PATH", f"{_fake_nvidia_smi(tmp_path / 'bin', 2)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # One cheap GPU job (a patch poison), runtime.device auto: it runs on the CPU, torch sees no CUDA here.
    target = "results/poisons/patch10/none/0.pt"
    args = [target, "--cores", "1", "--configfile", str(tmp_path / "tiny.yaml")]
    args += ["--config", "warm_worker=False", "runtime={device: auto}"]
    without = snakemake(*args, cwd=tmp_path)
    assert "no --resources gpu=N was given" in without.stderr and "--resources gpu=2" in without.stderr
    assert without.stderr.index("no --resources gpu=N") < without.stderr.index("rule craft_poison")
    (tmp_path / target).unlink()
    limited = snakemake(*args, "--resources", "gpu=2", cwd=tmp_path)
    assert "no --resources gpu=N" not in limited.stderr and "rule craft_poison" in limited.stderr
