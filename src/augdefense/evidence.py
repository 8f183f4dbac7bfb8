"""Pack a finished run's quotable results into a folder of evidence (``python -m augdefense
pack-evidence RUN_DIR DEST``): the claims, the paper comparison, the tables, ``metrics.csv`` and the
resolved config, copied byte for byte after the run's manifest has checked them, and ``run.json``
saying which run wrote them: commit, dates, machine, the kernels' instruction set, seeds, wall time.
The docs quote numbers from these folders only, and ``tests/test_docs.py`` checks each quote."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

from augdefense import provenance
from augdefense.errors import ArtifactError
from augdefense.io import atomic_path, write_json

REQUIRED = ["results/metrics.csv", "results/provenance/config.json"]
OPTIONAL = [  # a run whose config declares no claims, or no paper cells, has none to pack
    "results/claims.md",
    "results/claims.csv",
    "results/paper_comparison.md",
    "results/paper_comparison.csv",
]


def _cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (the platform's machine type where /proc/cpuinfo has none)."""
    return _cpuinfo("model name") or platform.machine()


def cpu_features(wanted=("avx2", "avx512f", "avx512_bf16", "amx_tile")) -> list[str]:
    """Which of the instruction-set extensions the kernels choose between this CPU has."""
    flags = set((_cpuinfo("flags") or "").split())
    return [f for f in wanted if f in flags]


def _sidecars(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "results" / "runs").rglob("*.json.prov.json"))]


def _distinct_set_variables(kernels: list[dict]) -> list[dict]:
    """Each distinct set of kernel variables the jobs ran with (unset ones left out)."""
    seen = {
        json.dumps({k: v for k, v in (each.get("variables") or {}).items() if v is not None}, sort_keys=True)
        for each in kernels
    }
    return [json.loads(text) for text in sorted(seen)]


def run_record(run_dir: Path, *, preset: str, wall_seconds: float | None, note: str = "") -> dict:
    """What ``run.json`` says about the run in ``run_dir``, read from its victims' sidecars."""
    sidecars = _sidecars(run_dir)
    if not sidecars:
        raise ArtifactError(f"{run_dir}: no run records under results/runs (not a finished run?)")
    commits = {(s["code"].get("git_commit"), s["code"].get("git_dirty")) for s in sidecars}
    kernels = [s["environment"].get("kernels", {}) for s in sidecars]
    config = json.loads((run_dir / "results" / "provenance" / "config.json").read_text())
    seeds = config["seeds"]
    return {
        "preset": preset,
        "commit": sorted({c for c, _ in commits if c}) or None,
        "dirty": any(d for _, d in commits),
        "date": min(s["started"] for s in sidecars)[:10],
        "first_job_started": min(s["started"] for s in sidecars),
        "last_job_finished": max(s["finished"] for s in sidecars),
        "machine": cpu_model(),
        "cpu_features": cpu_features(),
        "host": sorted({s["environment"].get("host") for s in sidecars}),
        "cpu_isa": sorted({str(k.get("aten_capability")) for k in kernels}),
        "cpu_isa_setting": sorted({str(k.get("cpu_isa")) for k in kernels}),
        "threads": sorted({k.get("torch_threads") for k in kernels if k.get("torch_threads") is not None}),
        # The kernel variables set in the jobs' environment: a machine's own (OPENBLAS_CORETYPE, say)
        # moves numbers as the pin does, and a reader comparing two runs looks here first.
        "kernel_variables": _distinct_set_variables(kernels),
        "torch": sorted({s["environment"].get("torch") for s in sidecars}),
        "seeds": len(seeds) if isinstance(seeds, list) else seeds,
        "victim_runs": len(sidecars),
        "workflow_wall_seconds": wall_seconds,
        "note": note,
    }


def claimed_experiments(config_json: str | Path) -> dict:
    """The experiments of a resolved config as today's claims code reads them: older schemas filled
    a margin into every claim, where only a ``not_lower`` claim has one."""
    experiments = json.loads(Path(config_json).read_text())["experiments"]
    for experiment in experiments.values():
        for claim in experiment.get("claims", []):
            if claim.get("direction") != "not_lower":
                claim.pop("margin", None)
    return experiments


def pack(
    run_dir: str | Path,
    dest: str | Path,
    *,
    preset: str,
    wall_seconds: float | None,
    note: str = "",
    render_claims: bool = False,
) -> dict:
    """Check the run against its manifest, then copy its quotable files and write ``run.json``.
    ``render_claims``: write the claims from the run's metrics with this checkout's code instead of
    copying them (for a run made before the current statistics; ``run.json`` says so)."""
    run_dir, dest = Path(run_dir), Path(dest)
    missing = [f for f in REQUIRED if not (run_dir / f).is_file()]
    if missing:
        raise ArtifactError(f"{run_dir}: {missing} missing (not a finished run?)")
    manifest = run_dir / provenance.MANIFEST
    problems = provenance.check_manifest(manifest, root=run_dir)
    if problems:
        raise ArtifactError(f"{run_dir}: outputs changed since the run: {problems[:5]}")
    record = run_record(run_dir, preset=preset, wall_seconds=wall_seconds, note=note)
    tables = sorted([*(run_dir / "results" / "tables").glob("*.md"), *(run_dir / "results" / "tables").glob("*.csv")])
    quoted = REQUIRED + [f for f in OPTIONAL if not (render_claims and "claims" in f)]
    for source in [run_dir / f for f in quoted if (run_dir / f).is_file()] + tables:
        target = dest / ("tables" if source.parent.name == "tables" else "") / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    dest.mkdir(parents=True, exist_ok=True)
    if render_claims:
        from augdefense.claims import render_claims as render

        experiments = claimed_experiments(run_dir / "results" / "provenance" / "config.json")
        render(
            metrics=run_dir / "results" / "metrics.csv",
            experiments=experiments,
            scale=f"{preset}, claims rendered from its metrics.csv by later code",
            csv=dest / "claims.csv",
            md=dest / "claims.md",
        )
        record["claims_rendered_by"] = provenance.code_version().get("git_commit")
    write_json(dest / "run.json", record)
    return record
