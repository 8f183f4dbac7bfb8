"""The warm worker (augdefense.forkserver): a forked job writes what a job in its own process writes,
takes its script's directory and exit status, limits its thread pools to its threads, dies with its
script and with the worker, a stalled client holds up no job, and the worker ends with its parent."""

import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from augdefense import data, forkserver, kernels
from augdefense.runner import JobSpec
from conftest import REPO, job_process, snakemake

# Without the thread variables Snakemake sets per job: the worker's libraries size their pools to the machine.
ENV = {**{k: v for k, v in os.environ.items() if k not in kernels.THREAD_VARIABLES}, "PYTHONPATH": str(REPO / "src")}
RECIPE = {"epochs": 2, "milestones": [1], "batch_size": 64, "crop_pad": 1, "flip": False}
MODEL = {"arch": "convnet", "width": 8}
RUNTIME = {"device": "cpu", "amp": False}
# A script that hands one job (argv: JobSpec as JSON, function) to the worker and exits with its status
# (99: the worker refused it).
CLIENT = (
    "import json, sys; from augdefense import forkserver; from augdefense.runner import JobSpec, function_named; "
    "status = forkserver.delegate(JobSpec(**json.loads(sys.argv[1])), function_named(sys.argv[2])); "
    "sys.exit(99 if status is None else status)"
)
TRAIN = "augdefense.jobs.train:train_crafting_model"


def wait_for(condition, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def start_worker(folder: Path, parent: int) -> tuple[subprocess.Popen, str]:
    folder.mkdir(exist_ok=True)
    path = str(folder / "w.sock")
    worker = subprocess.Popen(
        [sys.executable, "-m", "augdefense.forkserver", path, "--parent", str(parent)],
        env=ENV,
        cwd="/",  # not the jobs' directory: a job must take its script's
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: os.path.exists(path) or worker.poll() is not None, what="the worker's socket")
    assert worker.poll() is None, worker.stdout.read()
    return worker, path


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    short = Path(f"/tmp/augdefense-test-{os.getpid()}")  # a socket path must be short
    proc, path = start_worker(short, os.getpid())
    yield proc, path
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("forked")
    data.prepare(spec={"source": "digits", "image_size": 12}, out=root / "data.pt")
    return root


def training_job(out: str, log: str | None = None, epochs: int = 2, defense=None, threads: int = 1) -> JobSpec:
    """A crafting-model training job with paths relative to the job's directory."""
    return JobSpec(
        rule="train_crafting_model",
        inputs={"data": "data.pt"},
        outputs={"out": out},
        params={
            "defense_name": "d",
            "defense": defense or {"type": "none"},
            "recipe": {**RECIPE, "epochs": epochs},
            "model": MODEL,
            "runtime": RUNTIME,
            "seed": 0,
            "checkpoint": None,
        },
        threads=threads,
        log=log,
    )


def client(job: JobSpec, socket_path: str, cwd: Path, function: str = TRAIN) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT, json.dumps(dataclasses.asdict(job)), function],
        env={**ENV, forkserver.SOCKET_ENV: socket_path},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_forked_job_writes_the_bytes_of_a_job_in_its_own_process(worker, prepared):
    _, path = worker
    forked = client(training_job("forked.pt", log="forked.log"), path, prepared)
    assert forked.wait(timeout=300) == 0, forked.stderr.read()
    own = job_process(TRAIN, training_job("own.pt", log="own.log"), cwd=prepared)
    assert own.wait(timeout=300) == 0, own.stderr.read()
    assert (prepared / "forked.pt").read_bytes() == (prepared / "own.pt").read_bytes()
    assert "forked from the warm worker" in (prepared / "forked.log").read_text()
    assert "forked from the warm worker" not in (prepared / "own.log").read_text()
    sidecar = json.loads((prepared / "forked.pt.prov.json").read_text())
    assert sidecar["job"]["outputs"] == {"out": "forked.pt"}
    assert sidecar["timings"]["startup"] > 0  # the script's own start-up, carried over


def test_a_failing_forked_job_returns_its_status_and_logs_its_error(worker, prepared):
    _, path = worker
    bad = client(training_job("bad.pt", log="bad.log", defense={"type": "spectral_signatures"}), path, prepared)
    assert bad.wait(timeout=300) == 2
    assert "error:" in (prepared / "bad.log").read_text()
    assert not (prepared / "bad.pt").exists()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_killing_the_script_kills_its_job(worker, prepared):
    proc, path = worker
    script = client(training_job("killed.pt", log="killed.log", epochs=500), path, prepared)
    wait_for(lambda: _children(proc.pid), what="the forked job")
    (child,) = _children(proc.pid)
    log = prepared / "killed.log"
    wait_for(lambda: log.exists() and "forked from" in log.read_text(), what="the job to start")
    script.kill()
    script.wait(timeout=30)
    wait_for(lambda: not Path(f"/proc/{child}").exists(), timeout=30, what="the job to be killed")
    assert not (prepared / "killed.pt").exists()


def test_a_job_the_worker_cannot_run_runs_in_its_own_process(monkeypatch, worker, tmp_path):
    request = {"executable": sys.executable, "function": TRAIN}
    fingerprint = forkserver.sources_fingerprint()
    assert forkserver._refusal(request, fingerprint) is None
    assert "interpreter" in forkserver._refusal({**request, "executable": "/opt/conda/bin/python"}, fingerprint)
    assert "not a job function" in forkserver._refusal({**request, "function": "os:system"}, fingerprint)
    stale = {**fingerprint, "runner.py": [0, 0]}
    assert "sources changed" in forkserver._refusal(request, stale)
    pinned = {**request, "cpu_isa": "avx2"}
    assert forkserver._refusal(pinned, fingerprint, "avx2") is None
    assert "cpu_isa native is not the worker's avx2" in forkserver._refusal(
        {**request, "cpu_isa": "native"}, fingerprint, "avx2"
    )
    job = training_job("x.pt")
    monkeypatch.delenv(forkserver.SOCKET_ENV, raising=False)
    assert forkserver.delegate(job, print) is None  # no worker
    monkeypatch.setenv(forkserver.SOCKET_ENV, str(tmp_path / "gone.sock"))
    assert forkserver.delegate(job, print) is None  # a worker that has ended
    # Through the worker: a function outside the package is refused, and the script gets None.
    _, path = worker
    refused = client(job, path, tmp_path, function="os:getcwd")
    assert refused.wait(timeout=60) == 99


def test_a_forked_jobs_thread_pools_follow_its_threads(worker, prepared):
    """The worker loaded numpy, scipy, scikit-learn and torch with pools of every core; a forked job
    with threads: 1 runs with every BLAS and OpenMP pool, and torch's, at 1 (its sidecar says), and
    with the allocator settings of a job's process (kernels.hold_freed_memory), set in the child."""
    if os.cpu_count() < 2:
        pytest.skip("one core: every pool has one thread anyway")
    _, path = worker
    job = client(training_job("threads.pt", log="threads.log", epochs=1, threads=1), path, prepared)
    assert job.wait(timeout=300) == 0, job.stderr.read()
    assert "forked from the warm worker" in (prepared / "threads.log").read_text()
    found = json.loads((prepared / "threads.pt.prov.json").read_text())["environment"]["kernels"]
    assert {pool["user_api"] for pool in found["pools"]} == {"blas", "openmp"}
    assert [pool["num_threads"] for pool in found["pools"]] == [1] * len(found["pools"])
    assert found["torch_threads"] == 1
    assert found["heap_held"] is sys.platform.startswith("linux")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_killing_the_worker_kills_its_jobs(prepared):
    """A SIGKILLed (or OOM-killed) worker takes its children with it: none is left writing outputs
    while its script reports failure."""
    folder = Path(f"/tmp/augdefense-test-killed-{os.getpid()}")
    proc, path = start_worker(folder, os.getpid())
    try:
        script = client(training_job("orphan.pt", log="orphan.log", epochs=500), path, prepared)
        wait_for(lambda: _children(proc.pid), what="the forked job")
        (child,) = _children(proc.pid)
        log = prepared / "orphan.log"
        wait_for(lambda: log.exists() and "forked from" in log.read_text(), what="the job to start")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        wait_for(lambda: not _alive(child), timeout=30, what="the job to die with the worker")
        assert script.wait(timeout=30) == 1
        assert "the warm worker ended before the job did" in script.stderr.read()
        assert not (prepared / "orphan.pt").exists()
    finally:
        proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("parent", ["alive", "gone"])
def test_a_child_whose_worker_died_before_it_asked_to_die_with_it_ends(parent):
    """The race PR_SET_PDEATHSIG leaves open: a worker that died between the fork and the prctl."""
    code = "import os, sys; from augdefense import forkserver; forkserver._die_with(int(sys.argv[1])); sys.exit(0)"
    worker = os.getpid() if parent == "alive" else 1  # 1: not this child's parent, as if it had been re-parented
    done = subprocess.run([sys.executable, "-c", code, str(worker)], env=ENV)
    assert done.returncode == (0 if parent == "alive" else 1)


def test_a_stalled_client_holds_up_no_other_job(worker, prepared):
    """A client that connects, sends its descriptors and part of its request, then stalls: another
    job is taken and finishes meanwhile, and the stalled one is still waiting, unanswered."""
    _, path = worker
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.connect(path)
    try:
        socket.send_fds(stalled, [b"j"], [0, 1, 2])
        stalled.sendall(struct.pack("!I", 1000) + b'{"job": ')
        quick = client(training_job("after_stall.pt", log="after_stall.log", epochs=1), path, prepared)
        assert quick.wait(timeout=300) == 0, quick.stderr.read()
        assert "forked from the warm worker" in (prepared / "after_stall.log").read_text()
        readable, _, _ = select.select([stalled], [], [], 0)
        assert not readable  # neither refused nor closed: it held nobody up
    finally:
        stalled.close()


@pytest.mark.parametrize("parent_ends", ["while it serves", "while it imports"])
def test_the_worker_ends_with_the_process_that_started_it(parent_ends):
    parent = subprocess.Popen(["sleep", "600"])
    folder = Path(f"/tmp/augdefense-test-parent-{os.getpid()}")
    folder.mkdir()
    try:
        if parent_ends == "while it serves":
            proc, _ = start_worker(folder, parent.pid)
        else:
            proc = subprocess.Popen(
                [sys.executable, "-m", "augdefense.forkserver", str(folder / "w.sock"), "--parent", str(parent.pid)],
                env=ENV,
            )
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert proc.wait(timeout=60) == 0
        assert not folder.exists()  # the socket and its folder are removed
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_snakemake_jobs_fork_from_the_worker_and_write_the_same_bytes(tmp_path):
    """One cell through Snakemake with and without the warm worker: the same poison and run record."""
    config = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())
    config["attacks"] = {"patch100": config["attacks"]["patch100"]}
    config["experiments"] = {"table1": {"attacks": ["patch100"], "defenses": ["none"]}}
    config["seeds"] = 1
    target = "results/runs/patch100/none/0.json"
    records = {}
    for warm in (True, False):
        folder = tmp_path / f"warm_{warm}"
        folder.mkdir()
        (folder / "c.yaml").write_text(yaml.safe_dump({**config, "warm_worker": warm}))
        snakemake("--cores", "2", target, "--configfile", str(folder / "c.yaml"), cwd=folder)
        log = (folder / "logs/train_victim/patch100/none/0.log").read_text()
        assert ("forked from the warm worker" in log) is warm
        assert (folder / "logs/warm_worker.log").exists() is warm
        record = json.loads((folder / target).read_text())
        record.pop("train_seconds")
        records[warm] = record, (folder / "results/poisons/patch100/none/0.pt").read_bytes()
    assert records[True] == records[False]
