import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def snakemake(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run this checkout's Snakefile with its working directory at ``cwd``."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(bin_dir / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "-d", str(cwd), *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def digits8():
    from augdefense import data

    return data.build({"source": "digits"})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One complete run of presets/tiny.yaml, shared by the tests that read its outputs (read-only:
    a test that edits outputs works on a copy)."""
    import shutil

    workdir = tmp_path_factory.mktemp("tiny_run")
    shutil.copy(REPO / "presets" / "tiny.yaml", workdir / "tiny.yaml")
    result = snakemake("--cores", "2", "--configfile", str(workdir / "tiny.yaml"), cwd=workdir)
    return workdir, result


def job_process(function: str, job, **popen) -> subprocess.Popen:
    """Run one job (a ``runner.JobSpec``) in its own process, as a rule's script does; ``function`` is
    ``module:name``. stdout and stderr are pipes unless the job has a log."""
    import dataclasses
    import json

    code = (
        "import json, sys; from augdefense.runner import JobSpec, function_named, run_rule; "
        "run_rule(JobSpec(**json.loads(sys.argv[1])), function_named(sys.argv[2]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    spec = json.dumps(dataclasses.asdict(job), default=str)
    return subprocess.Popen(
        [sys.executable, "-c", code, spec, function],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )


@pytest.fixture(scope="session")
def paper_dry_run(tmp_path_factory) -> str:
    """`snakemake -n` of config.yaml (2 840 victims: a dozen seconds), shared by the tests that read it."""
    return snakemake("-n", cwd=tmp_path_factory.mktemp("paper_dry_run")).stdout


def kill_after_checkpoint(proc: subprocess.Popen, checkpoint: Path, timeout: float = 300) -> None:
    """SIGKILL a training process once it has written its first checkpoint, a little into the next epoch."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpoint.exists(), "no checkpoint was written"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
