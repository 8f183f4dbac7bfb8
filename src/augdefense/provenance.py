"""Provenance: a sidecar record per job output, the output manifest, and the reviewer archive.

Every job writes ``<output>.prov.json`` beside each of its outputs (``augdefense.runner``): the
rule, its wildcards, each input with its sha256, the params it ran with (its config slices), the
code version (git commit and whether the tree was dirty, package version), the environment
(Python, torch, torchvision, CUDA and GPU when present, the device used, the package modules run),
the seed, the start and end time, and the function call (so it can be replayed).
``results/provenance/manifest.tsv`` holds the sha256 of every output; ``check_manifest`` (``python
-m augdefense check-manifest``) exits non-zero naming each file that no longer matches.
"""

from __future__ import annotations

import datetime as dt
import platform
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

from augdefense import __version__
from augdefense.errors import ArtifactError
from augdefense.io import atomic_path, sha256, write_json

SIDECAR_SUFFIX = ".prov.json"
MANIFEST_HEADER = "path\tsha256\tbytes"


def sidecar_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}{SIDECAR_SUFFIX}")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def code_version() -> dict:
    """The git commit of the checkout the package runs from, whether it has uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    version = {"package": __version__, "source": str(root), "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return version
    if commit.returncode == 0:
        version["git_commit"] = commit.stdout.strip()
        version["git_dirty"] = bool(status.stdout.strip())
    return version


def environment() -> dict:
    # The package's modules this process ran (a test checks each rule's code inputs cover them), and
    # the devices it trained or evaluated on (a job that never asked for one used none).
    modules = sorted(m for m in sys.modules if m == "augdefense" or m.startswith("augdefense."))
    gpu = sys.modules.get("augdefense.gpu")
    env = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "devices_used": sorted(set(gpu.DEVICES_USED)) if gpu else [],
        "modules": modules,
    }
    if "torch" in sys.modules:
        from importlib.metadata import version

        import torch

        # The installed version, without importing torchvision (a job that does not use it should not pay for it).
        env.update(
            torch=torch.__version__,
            torchvision=version("torchvision"),
            cuda=torch.version.cuda,
            cuda_available=torch.cuda.is_available(),
        )
        gpus = sorted({d for d in env["devices_used"] if d.startswith("cuda")})
        if gpus:
            env["gpu_names"] = {d: torch.cuda.get_device_name(torch.device(d)) for d in gpus}
    return env


def write_sidecars(
    *,
    job: dict,
    function: str,
    inputs: dict[str, str],
    outputs: list[str],
    started: str,
    timings: dict | None = None,
    memory: dict | None = None,
) -> None:
    """Write one record per output of a finished job: what it read (by sha256, code included),
    wrote, ran with and on, where its time and memory went (``augdefense.timing``), and the job itself
    (``python -m augdefense replay <sidecar>`` runs it again)."""
    record = {
        "rule": job["rule"],
        "wildcards": job["wildcards"],
        "seed": job["params"].get("seed"),
        "inputs": inputs,
        "outputs": {str(p): sha256(p) for p in outputs},
        "params": job["params"],
        "code": code_version(),
        "environment": environment(),
        "started": started,
        "finished": now(),
        "timings": timings or {},
        "memory": memory or {},
        "function": function,
        "job": job,
    }
    for output in outputs:
        write_json(sidecar_path(output), record)


def write_config(*, config: dict, out: str | Path) -> None:
    """The resolved config (defaults filled in), for reviewers."""
    write_json(out, config)


def write_manifest(*, files: list[str | Path], out: str | Path) -> None:
    """Hash every file and, where one exists, its provenance sidecar."""
    listed = {str(f) for f in files}
    listed |= {str(sidecar_path(f)) for f in list(listed) if sidecar_path(f).is_file()}
    lines = [MANIFEST_HEADER]
    for file in sorted(listed):
        path = Path(file)
        if not path.is_file():
            raise ArtifactError(f"{file}: listed for the manifest but missing")
        lines.append(f"{file}\t{sha256(path)}\t{path.stat().st_size}")
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def check_manifest(manifest: str | Path, root: str | Path = ".") -> list[str]:
    """Return one line per file that is missing or whose sha256 differs from the manifest's."""
    rows = Path(manifest).read_text().splitlines()
    if not rows or rows[0] != MANIFEST_HEADER:
        raise ArtifactError(f"{manifest}: not a manifest (first line should be '{MANIFEST_HEADER}')")
    problems = []
    for row in rows[1:]:
        path, digest, _ = row.split("\t")
        file = Path(root) / path
        if not file.is_file():
            problems.append(f"{path}: missing")
        elif sha256(file) != digest:
            problems.append(f"{path}: sha256 differs from the manifest (file changed after the run)")
    return problems


def archive(out: str | Path, members: list[str | Path], frozen_packages: str) -> Path:
    """Bundle ``members`` (files or folders) and the frozen package list into a .tar.gz."""
    out = Path(out)
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for member in members:
                if Path(member).exists():
                    tar.add(str(member), filter=lambda info: None if info.name.endswith(".tar.gz") else info)
            packages = Path(tmp).with_suffix(".packages.txt")
            try:
                packages.write_text(frozen_packages)
                tar.add(str(packages), arcname="environment/pip-freeze.txt")
            finally:
                packages.unlink(missing_ok=True)
    return out


ARCHIVE_MEMBERS = ["results", "logs", "benchmarks", ".snakemake/metadata"]


def archive_results(out: str | Path | None = None) -> Path:
    """``make archive``: results (with every sidecar, the manifest and the resolved config), logs,
    benchmarks, Snakemake's metadata and ``pip freeze``, as results/archive-<UTC time>.tar.gz."""
    manifest = Path("results/provenance/manifest.tsv")
    if not manifest.exists():
        raise ArtifactError(f"{manifest}: missing; run the workflow to completion before archiving")
    problems = check_manifest(manifest)
    if problems:
        raise ArtifactError("outputs changed since the run, refusing to archive them: " + "; ".join(problems))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    path = archive(out or f"results/archive-{stamp}.tar.gz", ARCHIVE_MEMBERS, frozen)
    print(f"archive: {path}")
    return path
