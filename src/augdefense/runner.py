"""How a rule runs its job. Each ``workflow/scripts/<rule>.py`` is one call, ``run_rule(snakemake,
function)``: the job (``JobSpec``, from what Snakemake knows about it) runs in a child of the warm
worker when there is one (``augdefense.forkserver``), else in the script's process; either way
through ``augdefense.execution.run_job``, which checks its inputs, binds its arguments and writes
its sidecars. ``replay`` runs a recorded job again by hand.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from augdefense import forkserver, kernels
from augdefense.errors import ArtifactError
from augdefense.execution import CODE_INPUT, JobSpec, bind, execute, function_named, run_job, verify_inputs

# What the scripts and tests import from here (the job's entry point itself is augdefense.execution's).
__all__ = [
    "CODE_INPUT",
    "JobSpec",
    "bind",
    "execute",
    "function_named",
    "rebuild",
    "replay",
    "run_job",
    "run_rule",
    "verify_inputs",
]


def run_rule(snakemake, function: Callable) -> None:
    """Run one Snakemake job (or a ``JobSpec``): in a child of the warm worker when one takes it
    (a ``JobSpec`` always runs here), else in this process."""
    if isinstance(snakemake, JobSpec):
        job = snakemake
    else:
        job = JobSpec.from_snakemake(snakemake)
        status = forkserver.delegate(job, function)
        if status is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            raise SystemExit(status)
    run_job(job, function)


def replay(sidecar: str | Path, out_dir: str | Path) -> dict[str, bool]:
    """Run the job that wrote ``sidecar`` again, by hand, on the inputs it recorded and with the
    kernels it recorded, writing its outputs under ``out_dir`` (same relative paths), without a
    checkpoint. The recorded package sources are this package's files at the same place in its
    checkout (a reviewer archive's ``source/``). Refuses an input whose sha256 differs from the
    record. Returns, per output, whether the new file is byte-identical to the recorded one."""
    from augdefense.io import read_json, sha256

    record = read_json(sidecar)
    if not {"function", "job", "inputs", "outputs"} <= set(record):
        raise ArtifactError(f"{sidecar}: not a job record (written before jobs recorded themselves?)")
    here = {file: _in_this_checkout(file, record) for file in record["inputs"]}
    for file, digest in record["inputs"].items():
        if not Path(here[file]).is_file() or sha256(here[file]) != digest:
            raise ArtifactError(f"{here[file]}: missing or changed since the job recorded in {sidecar} read it")
    job = JobSpec(**record["job"])
    moved = {name: _relocate(value, Path(out_dir)) for name, value in job.outputs.items()}
    params = {**job.params, **({"checkpoint": None} if "checkpoint" in job.params else {})}
    job = replace(job, outputs=moved, params=params, log=None, code=[here.get(f, f) for f in job.code])
    # The kernels the job ran with, before its imports load them: its setting, and the variables it
    # ran under (with native, the caller's).
    recorded = record.get("environment", {}).get("kernels") or {}
    kernels.apply(recorded.get("cpu_isa") or kernels.setting_of(job.params), job.threads)
    for name, value in (recorded.get("variables") or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    execute(job, function_named(record["function"]))
    return {
        original: (Path(out_dir) / original).is_file() and sha256(Path(out_dir) / original) == digest
        for original, digest in record["outputs"].items()
    }


def rebuild(manifest: str | Path, scratch: str | Path = "scratch/rebuild") -> list[str]:
    """Rebuild each file the archive left out by replaying the job its sidecar records, and put it
    in place once its sha256 is the manifest's; the files rebuilt."""
    import shutil

    from augdefense.io import sha256
    from augdefense.provenance import not_archived, sidecar_path

    rebuilt = []
    for row in not_archived(manifest):
        sidecar = sidecar_path(row.path)
        if not sidecar.is_file():
            raise ArtifactError(f"{row.path}: not archived, and its sidecar {sidecar} is missing: it cannot be rebuilt")
        replay(sidecar, scratch)
        made = Path(scratch) / row.path
        if sha256(made) != row.sha256:
            raise ArtifactError(
                f"{row.path}: rebuilt as {made}, but its sha256 is not the manifest's "
                "(another machine's kernels? see runtime.cpu_isa): left there, not put in place"
            )
        Path(row.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(made, row.path)
        rebuilt.append(row.path)
    return rebuilt


# The checkout this package runs from (``<root>/src/augdefense``).
CHECKOUT = Path(__file__).resolve().parents[2]


def _in_this_checkout(file: str, record: dict) -> str:
    """A recorded input; a file of the checkout that ran the job is this checkout's file of that name."""
    from augdefense.provenance import code_path

    name = code_path(file, record)
    return file if name is None else str(CHECKOUT / name)


def _relocate(value, out_dir: Path):
    if isinstance(value, list):
        return [str(out_dir / v) for v in value]
    return None if value is None else str(out_dir / value)
