"""The SLURM path: the tiny preset through `--profile profiles/slurm` on a real one-node SLURM cluster.

The cluster (tests/slurm_cluster.py) runs on this machine: munged, slurmctld and slurmd started by
hand, four fake GPUs, the node in two partitions named like the profile's (`cpu` for the CPU rules,
`gpu` for the GPU rules), so the profile is used as shipped. Only settings that belong to this test
cluster are given on the command line: `squeue` for job status (no slurmdbd here, so `sacct` never
sees a job end and Snakemake would wait forever), a 3 s first status check, and keeping the plugin's
per-job logs. The test installs the Debian packages if needed (root, apt-get, with a timeout) and
skips, saying why, where that or the daemons fail.

It runs only when asked for, since it installs packages and takes about 3 minutes:
    pytest -m slurm tests/test_slurm.py     (or name the file, or set AUGDEFENSE_TEST_SLURM=1)
A plain `pytest` of the whole suite skips it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO
from slurm_cluster import RUN_CONF_LINK, ClusterUnavailable, SlurmCluster

pytestmark = pytest.mark.slurm

PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
# The rules that declare **GPU_JOB today (workflow/rules/common.smk); the run itself says which jobs asked
# for a GPU (gpu=1 among the resources Snakemake printed), and these must be among them.
GPU_RULES = {
    "train_victim",
    "train_feature_model",
    "train_crafting_model",
    "pretrain_extractor",
    "craft_poison",
    "sanitize",
}
TARGET = "results/metrics.csv"  # what is compared; the report rules after it are CPU rules like collect_metrics
RUN_TIMEOUT = 600  # seconds for one Snakemake run, then SIGTERM ...
TERM_GRACE = 60  # ... and SIGKILL this much later: after SIGTERM Snakemake waits for running jobs
KEY = ["attack", "defense", "seed"]
# One seed of the tiny preset's grid: every rule and every attack x defense cell (7 victims, 13 SLURM
# jobs), in about half the time of its two seeds. On 2 cores a tiny job takes 10-15 s under SLURM (two
# nested Snakemake starts before the rule's command) against ~8 s locally, and the plugin sees a job
# end only at its status checks, 3, 16, 39, 72 s after the last one that saw a job end (the interval
# grows by 10 s each time nothing ended). The workflow's critical path is 6 jobs long.
OVERRIDES = ["--config", "seeds=1"]
SLURM_ARGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "3",
    "--slurm-keep-successful-logs",
]


def _asked_for(config) -> bool:
    if os.environ.get("AUGDEFENSE_TEST_SLURM") == "1":
        return True
    if "slurm" in (config.getoption("markexpr", "") or ""):
        return True
    return any("test_slurm" in str(arg) for arg in config.args)


def _session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # fields: state ppid pgrp session ...
            pids.append(int(stat.parent.name))
    return pids


def run_snakemake(
    args: list[str],
    cwd: Path,
    env: dict,
    log: Path,
    timeout: float = RUN_TIMEOUT,
    term_grace: float = TERM_GRACE,
    stop_when=None,
) -> tuple[int | None, str, int]:
    """Run this checkout's Snakefile in its own session, output to ``log``.

    Returns (exit code, how it ended: "exited" | "SIGTERM" | "SIGKILL", its pid). After ``timeout`` s
    (or once ``stop_when()`` is true) it gets SIGTERM; Snakemake then stops scheduling but waits for
    the jobs it has running (for ever, if its status command never reports them ended), so
    ``term_grace`` s later its whole session gets SIGKILL. SLURM jobs it submitted outlive a SIGKILL:
    SlurmCluster.cancel_all()/stop() cancels them.
    """
    bin_dir = Path(sys.executable).parent
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
    cmd = [str(bin_dir / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "-d", str(cwd), *args]
    deadline = time.monotonic() + timeout
    with open(log, "w") as out:
        out.write(" ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() < deadline and not (stop_when is not None and stop_when()):
            try:
                return proc.wait(timeout=min(0.5, max(0.0, deadline - time.monotonic()))), "exited", proc.pid
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is not None:
            return proc.returncode, "exited", proc.pid
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=term_grace), "SIGTERM", proc.pid
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session (pgid = its pid): Snakemake and its children
            return proc.wait(), "SIGKILL", proc.pid


def _tiny_workdir(workdir: Path) -> Path:
    workdir.mkdir(parents=True)
    shutil.copy(REPO / "presets" / "tiny.yaml", workdir / "tiny.yaml")
    return workdir


def _run_tiny(workdir: Path, extra: list[str], env: dict) -> tuple[Path, str, float]:
    _tiny_workdir(workdir)
    log = workdir / "snakemake.out"
    start = time.monotonic()
    rc, how, _ = run_snakemake(
        [TARGET, *OVERRIDES, "--configfile", str(workdir / "tiny.yaml"), *extra], workdir, env, log
    )
    seconds = time.monotonic() - start
    output = log.read_text(errors="replace")
    if (rc, how) != (0, "exited"):
        raise AssertionError(
            f"snakemake {' '.join(extra)}: {how}, exit code {rc}, after {seconds:.0f} s:\n{output[-6000:]}"
        )
    return workdir, output, seconds


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    if not _asked_for(request.config):
        pytest.skip(
            "SLURM test: run it with `pytest -m slurm tests/test_slurm.py` (or AUGDEFENSE_TEST_SLURM=1); "
            "it installs slurmctld/slurmd/munge with apt-get if missing and starts a local cluster"
        )
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("SLURM test: snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    if os.geteuid() != 0:
        pytest.skip("SLURM test: needs root (to install the Debian packages and run slurmctld/slurmd)")
    root = tmp_path_factory.mktemp("slurm") / "cluster"
    # Memory is not enforced without cgroups: declare enough for the profile's 16 GB GPU-job requests.
    partitions = (PROFILE["default-resources"]["slurm_partition"], PROFILE["default-resources"]["gpu_job_partition"])
    c = SlurmCluster(root, partitions=partitions, gpus=4, memory_mb=64000)
    try:
        c.start()
    except ClusterUnavailable as e:
        # CI asks for it where it can run (root, apt-get): there a cluster that does not start fails.
        if os.environ.get("AUGDEFENSE_REQUIRE_SLURM") == "1":
            pytest.fail(f"SLURM test: the local SLURM cluster did not start: {e}")
        pytest.skip(f"SLURM test: cannot run a local SLURM cluster here: {e}")
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The SLURM run and, alongside it on one core, a local run of the same config (it uses the CPU
    while the SLURM run waits for status checks). {"slurm"|"local": (workdir, output, seconds)}."""
    slurm_extra = ["--profile", str(REPO / "profiles" / "slurm"), *SLURM_ARGS]
    local_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    results: dict[str, object] = {}

    def local():
        try:
            results["local"] = _run_tiny(tmp_path_factory.mktemp("local_run") / "w", ["--cores", "1"], local_env)
        except BaseException as e:  # raised again by the test that needs it
            results["local"] = e

    thread = threading.Thread(target=local, daemon=True)
    thread.start()
    try:
        results["slurm"] = _run_tiny(tmp_path_factory.mktemp("slurm_run") / "w", slurm_extra, cluster.env())
    except BaseException as e:
        results["slurm"] = e
    thread.join(RUN_TIMEOUT + TERM_GRACE + 30)
    return results


def _result(runs, name):
    value = runs.get(name)
    if value is None:
        raise AssertionError(f"the {name} run did not finish")
    if isinstance(value, BaseException):
        raise value
    return value


@pytest.fixture(scope="module")
def slurm_run(runs):
    return _result(runs, "slurm")


@pytest.fixture(scope="module")
def local_run(runs):
    return _result(runs, "local")


def submitted_jobs(output: str) -> dict[str, tuple[str, Path]]:
    """{SLURM job id: (rule, plugin log)} from the plugin's 'has been submitted' lines."""
    jobs = {}
    for m in re.finditer(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.\n", output):
        log = Path(m.group(2))
        rule = next(p[len("rule_") :] for p in log.parts if p.startswith("rule_"))
        jobs[m.group(1)] = (rule, log)
    return jobs


def show_job(cluster: SlurmCluster, job_id: str) -> dict[str, str]:
    text = cluster.run("scontrol", "show", "job", "-d", job_id).stdout
    return dict(re.findall(r"(\w[\w/:]*)=(\S*)", text))


def test_every_job_ran_as_a_completed_slurm_job(cluster, slurm_run):
    workdir, output, seconds = slurm_run
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    jobs = submitted_jobs(output)
    rules = [rule for rule, _ in jobs.values()]
    assert {
        "prepare_data",
        "craft_poison",
        "train_feature_model",
        "sanitize",
        "train_victim",
        "collect_metrics",
    } <= set(rules)
    assert rules.count("train_victim") == len(pd.read_csv(workdir / TARGET))
    # SLURM's own record: every job of this run, found by the plugin's run ID (the SLURM job name).
    listed = cluster.run("squeue", "--states=all", "--noheader", f"--name={run_id}", "--format=%i|%T").stdout
    states = dict(line.split("|") for line in listed.split())
    assert set(states) == set(jobs), (states, jobs)
    assert set(states.values()) == {"COMPLETED"}
    for job_id, (rule, log) in jobs.items():
        info = show_job(cluster, job_id)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info
        assert info["Partition"] in cluster.partitions and info["NodeList"] == cluster.node
        assert info["Comment"].startswith(f"rule_{rule}") and info["WorkDir"] == str(workdir)
        assert log.is_file() and f"--allowed-rules {rule}" in log.read_text(errors="replace")
    print(f"\nSLURM run: {len(jobs)} SLURM jobs in {seconds:.0f} s")


def test_gpu_rules_requested_and_got_one_gpu(cluster, slurm_run):
    _, output, _ = slurm_run
    jobs = submitted_jobs(output)
    resolved = resolved_jobs(output)
    asked = {rule for rule, resources, _ in resolved.values() if resources.get("gpu") == "1"}
    assert GPU_RULES <= asked <= {rule for rule, _ in jobs.values()}
    for job_id, (rule, _) in jobs.items():
        info = show_job(cluster, job_id)
        if rule in asked:
            assert info.get("TresPerJob") == "gres:gpu:1", (rule, info)  # sbatch --gpus=1
            assert info.get("JOB_GRES") == f"gpu:{cluster.gpu_type}:1", (rule, info)  # allocated, and it ran
        else:
            assert "gpu" not in info.get("TresPerJob", "") + info.get("JOB_GRES", ""), (rule, info)


def resolved_jobs(output: str) -> dict[str, tuple[str, dict[str, str], int]]:
    """{SLURM job id: (rule, resources, threads)} as Snakemake printed them when it submitted the job."""
    slurm_ids = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output))
    jobs = {}
    for rule, body in re.findall(r"^rule (\w+):\n((?:    .*\n)+)", output, re.M):
        fields = dict(re.findall(r"^    (\w+): (.*)$", body, re.M))
        if fields.get("jobid") in slurm_ids:
            resources = dict(item.split("=", 1) for item in fields["resources"].split(", "))
            jobs[slurm_ids[fields["jobid"]]] = (rule, resources, int(fields.get("threads", 1)))
    return jobs


def slurm_time(minutes: int) -> str:
    days, rest = divmod(int(minutes), 24 * 60)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


def test_profile_resources_reach_sbatch(cluster, slurm_run):
    _, output, _ = slurm_run
    profile = PROFILE
    jobs = resolved_jobs(output)
    assert set(jobs) == set(submitted_jobs(output))
    defaults = profile["default-resources"]
    for job_id, (rule, resources, threads) in jobs.items():
        # The profile's values for the rule: a GPU rule's gpu_job_* defaults, set-resources, else default-resources ...
        gpu = {"slurm_partition": defaults["gpu_job_partition"], "mem_mb": defaults["gpu_job_mem_mb"]}
        wanted = {
            **defaults,
            **(gpu if resources.get("gpu") == "1" else {}),
            **(profile.get("set-resources") or {}).get(rule, {}),
        }
        for key in ("mem_mb", "slurm_partition"):
            assert str(resources[key]) == str(wanted[key]), (rule, key, resources)
        # ... as SLURM recorded the request (runtime may come from the rule itself); CPUs = threads.
        info = show_job(cluster, job_id)
        assert info["MinMemoryNode"] == f"{resources['mem_mb']}M", (rule, info)
        assert info["TimeLimit"] == slurm_time(resources["runtime"]), (rule, resources, info)
        assert info["Partition"] == resources["slurm_partition"] and info["CPUs/Task"] == str(threads), (rule, info)


def test_metrics_have_the_rows_of_a_local_run(slurm_run, local_run):
    slurm = pd.read_csv(slurm_run[0] / TARGET).sort_values(KEY).reset_index(drop=True)
    local = pd.read_csv(local_run[0] / TARGET).sort_values(KEY).reset_index(drop=True)
    print(f"\nlocal run {local_run[2]:.0f} s, SLURM run {slurm_run[2]:.0f} s, {len(local)} rows")
    assert len(slurm) == len(local) > 0
    assert slurm[KEY].equals(local[KEY])
    # On the CPU the same seed gives the same numbers (README), wherever the job ran.
    assert (slurm.device == "cpu").all()
    for column in ("target_class", "victim_class", "n_poisons", "n_removed"):
        assert slurm[column].fillna(-1).equals(local[column].fillna(-1)), column
    for column in ("clean_acc", "poison_success"):
        assert (slurm[column] - local[column]).abs().max() < 1e-6, column


def test_a_run_that_ignores_sigterm_is_killed_and_its_jobs_cancelled(cluster, runs, tmp_path):
    # After the main runs (`runs`). SIGTERM as soon as the first job (prepare_data, 10+ s) is submitted:
    # Snakemake waits for it, so 2 s later the harness SIGKILLs the session; the SLURM job outlives
    # Snakemake until scancel.
    workdir = _tiny_workdir(tmp_path / "w")
    log = workdir / "snakemake.out"
    rc, how, pid = run_snakemake(
        [
            TARGET,
            *OVERRIDES,
            "--configfile",
            str(workdir / "tiny.yaml"),
            "--profile",
            str(REPO / "profiles" / "slurm"),
            *SLURM_ARGS,
        ],
        workdir,
        cluster.env(),
        log,
        timeout=120,
        term_grace=2,
        stop_when=lambda: "has been submitted with SLURM jobid" in log.read_text(errors="replace"),
    )
    output = log.read_text(errors="replace")
    assert how == "SIGKILL" and rc == -signal.SIGKILL, output[-3000:]
    assert "Will exit after finishing currently running jobs" in output
    assert _session_pids(pid) == []
    jobs = submitted_jobs(output)
    assert jobs, output[-3000:]
    cluster.cancel_all()
    for job_id in jobs:
        assert show_job(cluster, job_id)["JobState"] in ("COMPLETED", "CANCELLED")


def test_stopping_the_cluster_ends_every_process_it_started(cluster):
    pids = {name: int((cluster.root / f"{name}.pid").read_text()) for name in ("slurmctld", "slurmd")}
    assert cluster.leftover_pids(), "the running cluster's processes carry its marker"
    cluster.stop()
    assert cluster.leftover_pids() == []
    for name, pid in pids.items():
        cmdline = Path(f"/proc/{pid}/cmdline")
        assert not cmdline.exists() or str(cluster.conf) not in cmdline.read_bytes().decode(errors="replace"), name
    assert not (RUN_CONF_LINK.is_symlink() and Path(os.readlink(RUN_CONF_LINK)) == cluster.conf.parent)
