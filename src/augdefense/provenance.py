"""Provenance: a sidecar record per job output, the output manifest, and the reviewer archive.

Every job writes ``<output>.prov.json`` beside each of its outputs (``augdefense.runner``): the
rule, its wildcards, each input with its sha256, the params it ran with (its config slices), the
code version (git commit and whether the tree was dirty, package version), the environment
(Python, torch, torchvision, CUDA and GPU when present, the device used, the package modules run,
the CPU kernels' instruction set and thread pools: ``augdefense.kernels``),
the seed, the start and end time, and the function call (so it can be replayed).
``results/provenance/manifest.tsv`` holds the sha256 of every output; ``check_manifest`` (``python
-m augdefense check-manifest``) exits non-zero naming each file that no longer matches.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

from augdefense import __version__, kernels
from augdefense.errors import ArtifactError
from augdefense.io import atomic_path, sha256, write_json

SIDECAR_SUFFIX = ".prov.json"
MANIFEST_HEADER = "path\tsha256\tbytes\tnote"
_OLD_MANIFEST_HEADER = "path\tsha256\tbytes"  # before archives could leave a file out
NOT_ARCHIVED = "not archived"


def sidecar_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}{SIDECAR_SUFFIX}")


def recorded_digest(outputs: dict[str, str], artifact: str | Path) -> str | None:
    """The sha256 a job recorded for ``artifact`` among its ``outputs`` (its sidecar's), None where it
    names no such file. The job named its outputs from its own working directory, so a reader that
    names the file otherwise (an absolute path, another directory, a link above it) finds the
    record whose path is the tail of its own; an absolute record must be the same file."""
    artifact = str(artifact)
    if artifact in outputs:
        return outputs[artifact]
    here = Path(os.path.abspath(artifact))
    for name, digest in outputs.items():
        recorded = Path(os.path.normpath(name))
        if recorded.is_absolute():
            if recorded.resolve() == here.resolve():
                return digest
        elif here.parts[-len(recorded.parts) :] == recorded.parts:
            return digest
    return None


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
        "kernels": kernels.report(),
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
    unverified_inputs: list[str] | None = None,
    timings: dict | None = None,
    memory: dict | None = None,
) -> None:
    """Write one record per output of a finished job: what it read (by sha256, code included; the
    inputs no job recorded, whose sha256 could not be checked), wrote, ran with and on (the kernels'
    instruction set and thread pools included), where its time and memory went
    (``augdefense.timing``), and the job itself (``python -m augdefense replay <sidecar>`` runs it again)."""
    record = {
        "rule": job["rule"],
        "wildcards": job["wildcards"],
        "seed": job["params"].get("seed"),
        "inputs": inputs,
        "unverified_inputs": unverified_inputs or [],
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
    rows = []
    for file in sorted(listed):
        path = Path(file)
        if not path.is_file():
            raise ArtifactError(f"{file}: listed for the manifest but missing")
        rows.append(ManifestRow(file, sha256(path), path.stat().st_size))
    _write_manifest(rows, out)


@dataclass(frozen=True)
class ManifestRow:
    """One file of the manifest; ``note`` says when an archive left it out, and how to rebuild it."""

    path: str
    sha256: str
    bytes: int
    note: str = ""

    @property
    def archived(self) -> bool:
        return not self.note.startswith(NOT_ARCHIVED)


def _write_manifest(rows: list[ManifestRow], out: str | Path) -> None:
    lines = [MANIFEST_HEADER] + [f"{r.path}\t{r.sha256}\t{r.bytes}\t{r.note}" for r in rows]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def read_manifest(manifest: str | Path) -> list[ManifestRow]:
    rows = Path(manifest).read_text().splitlines()
    if not rows or rows[0] not in (MANIFEST_HEADER, _OLD_MANIFEST_HEADER):
        raise ArtifactError(f"{manifest}: not a manifest (first line should be '{MANIFEST_HEADER}')")
    found = []
    for number, row in enumerate(rows[1:], start=2):
        fields = row.split("\t")
        if len(fields) not in (3, 4):
            raise ArtifactError(f"{manifest}, line {number}: not a manifest row (path, sha256, bytes, note)")
        found.append(ManifestRow(fields[0], fields[1], int(fields[2]), fields[3] if len(fields) == 4 else ""))
    return found


def check_manifest(manifest: str | Path, root: str | Path = ".") -> list[str]:
    """Return one line per file that is missing or whose sha256 differs from the manifest's. A file
    an archive left out (``not_archived``) is checked once it is there again."""
    problems = []
    for row in read_manifest(manifest):
        file = Path(root) / row.path
        if not file.is_file():
            if row.archived:
                problems.append(f"{row.path}: missing")
        elif sha256(file) != row.sha256:
            problems.append(f"{row.path}: sha256 differs from the manifest (file changed after the run)")
    return problems


def not_archived(manifest: str | Path, root: str | Path = ".") -> list[ManifestRow]:
    """The files an archive left out that are not (yet) rebuilt."""
    return [row for row in read_manifest(manifest) if not row.archived and not (Path(root) / row.path).is_file()]


def _archive(out: str | Path, members: list[tuple[Path, str]], environment: dict[str, str]) -> Path:
    """``members`` as (file or folder, name in the archive), and ``environment``'s texts under
    environment/, into a .tar.gz written atomically."""
    out = Path(out)
    with atomic_path(out) as tmp:
        with tarfile.open(tmp, "w:gz") as tar:
            for path, name in members:
                tar.add(str(path), arcname=name, filter=_not_archives)
            for name, text in environment.items():
                data = text.encode()
                info = tarfile.TarInfo(f"environment/{name}")
                info.size, info.mtime, info.mode = len(data), int(dt.datetime.now().timestamp()), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out


def _not_archives(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if info.name.endswith(".tar.gz") or "__pycache__" in info.name.split("/") else info


ARCHIVE_MEMBERS = ["results", "logs", "benchmarks", ".snakemake/metadata"]
MANIFEST = "results/provenance/manifest.tsv"
# Prepared data above this size is left out of the archive (the manifest says how to rebuild it).
SHIP_DATA_UP_TO_MB = 64.0
REBUILD_NOTE = f"{NOT_ARCHIVED}: rebuild with `python -m augdefense rebuild` (replays its sidecar)"


def archive_results(out: str | Path | None = None, ship_data_up_to_mb: float = SHIP_DATA_UP_TO_MB) -> Path:
    """``make archive``: results (with every sidecar, the manifest and the resolved config), logs,
    benchmarks, Snakemake's metadata, ``pip freeze``, the package source the sidecars record (under
    ``source/``, checked against their sha256, so ``replay`` runs from the archive), and the other
    files of the manifest (the prepared data) when at most ``ship_data_up_to_mb``; a larger one is
    marked in the archive's manifest as not archived, with how to rebuild it. Written as
    results/archive-<UTC time>.tar.gz."""
    import tempfile

    manifest = Path(MANIFEST)
    if not manifest.exists():
        raise ArtifactError(f"{manifest}: missing; run the workflow to completion before archiving")
    problems = check_manifest(manifest)
    if problems:
        raise ArtifactError("outputs changed since the run, refusing to archive them: " + "; ".join(problems))
    rows = read_manifest(manifest)
    inside = tuple(f"{member}/" for member in ARCHIVE_MEMBERS)
    ships = {
        row.path: row.path.endswith(SIDECAR_SUFFIX) or row.bytes <= ship_data_up_to_mb * 2**20
        for row in rows
        if not row.path.startswith(inside)
    }
    annotated = [row if ships.get(row.path, True) else replace(row, note=REBUILD_NOTE) for row in rows]
    root, source = source_files()
    _check_source(rows, root, source)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        archived_manifest = Path(folder) / "manifest.tsv"
        _write_manifest(annotated, archived_manifest)
        members = [(Path(m), m) for m in ARCHIVE_MEMBERS if Path(m).exists() and m != "results"]
        members += [(p, str(p)) for p in sorted(Path("results").rglob("*")) if p.is_file() and p != manifest]
        members += [(Path(path), path) for path, ship in ships.items() if ship]
        members += [(archived_manifest, str(manifest))]
        members += [(root / name, f"source/{name}") for name in source]
        described = {**code_version(), "source": "source/ (the files below, as they were when archived)"}
        path = _archive(
            out or f"results/archive-{stamp}.tar.gz",
            members,
            {"pip-freeze.txt": frozen, "source.json": json.dumps(described, indent=1) + "\n"},
        )
    print(f"archive: {path}")
    for row in annotated:
        if not row.archived:
            print(f"  not archived ({row.bytes / 2**20:.0f} MB): {row.path}: {row.note}")
    return path


def source_files() -> tuple[Path, list[str]]:
    """The checkout the package runs from, and its files to archive (relative): those git tracks,
    as they are now, or outside a git checkout the package's own files."""
    root = Path(__file__).resolve().parents[2]
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        listed = None
    if listed is not None and listed.returncode == 0 and listed.stdout:
        names = [name for name in listed.stdout.split("\0") if name and (root / name).is_file()]
    else:
        package = [p for p in (root / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        names = [str(p.relative_to(root)) for p in package] + ["pyproject.toml"]
    return root, sorted(names)


def _check_source(rows: list[ManifestRow], root: Path, source: list[str]) -> None:
    """Every package file a job's sidecar records must be in the archived source with the recorded
    sha256: else ``replay`` could not run that job's code."""
    from augdefense.io import read_json

    shipped, stale = set(source), set()
    for row in rows:
        if not row.path.endswith(SIDECAR_SUFFIX):
            continue
        record = read_json(row.path)
        for file, digest in record.get("inputs", {}).items():
            name = code_path(file, record)
            if name is None:
                continue
            if name not in shipped or sha256(root / name) != digest:
                stale.add(name)
    if stale:
        raise ArtifactError(
            f"package sources the jobs ran are not here as they ran them (changed since, or not tracked by git): "
            f"{sorted(stale)}; commit them, or rerun the workflow (it reruns what they affect), before archiving"
        )


def code_path(file: str, record: dict) -> str | None:
    """A recorded input's path relative to the checkout that ran the job, if it is one of its files."""
    source = (record.get("code") or {}).get("source")
    if not source or not Path(file).is_absolute():
        return None
    try:
        return str(Path(file).relative_to(source))
    except ValueError:
        return None
