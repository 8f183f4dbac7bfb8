"""The CPU demo's profile: the workflow's wall time and each rule family's, the demo run from scratch
with Snakemake's own CPU time, and where each rule's jobs spend their time (``augdefense.timing``'s
phases from the sidecars, the wall time from the ``benchmark:`` files)."""

from __future__ import annotations

import itertools
import re
import statistics
import time
from pathlib import Path


def workflow_timings(root: Path) -> dict:
    """Wall time of the last Snakemake run here, and per rule family from the benchmark files."""
    out: dict = {}
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"))
    for log in reversed(logs):
        match = re.search(r"Elapsed time: (\d+):(\d+):(\d+(?:\.\d+)?)", log.read_text(errors="replace"))
        if match:
            h, m, s = match.groups()
            out["last_run_wall_seconds"] = round(int(h) * 3600 + int(m) * 60 + float(s), 1)
            out["last_run_log"] = str(log)
            break
    rules: dict[str, list[float]] = {}
    for tsv in (root / "benchmarks").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if len(lines) >= 2:
            rules.setdefault(tsv.relative_to(root / "benchmarks").parts[0], []).append(float(lines[1].split("\t")[0]))
    out["rules"] = {
        rule: {"jobs": len(v), "median_seconds": round(statistics.median(v), 2), "total_seconds": round(sum(v), 1)}
        for rule, v in sorted(rules.items())
    }
    return out


def demo_command(workdir: Path, cores: int = 2, warm_worker: bool = True) -> list[str]:
    """The Snakemake command of the CPU demo (``make demo``'s workflow) in ``workdir``, from this checkout."""
    import sys

    from augdefense.runner import CHECKOUT

    files = {"--snakefile": CHECKOUT / "Snakefile", "--configfile": CHECKOUT / "presets" / "quick.yaml"}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"the demo needs the checkout's {missing} (is augdefense installed from a clone?)")
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "--snakefile", str(files["--snakefile"]), "-d", str(workdir), "--cores", str(cores)]
    return cmd + ["--configfile", str(files["--configfile"]), "--config", f"warm_worker={warm_worker}"]


def run_demo(workdir: Path, cores: int = 2, warm_worker: bool = True) -> dict:
    """Run the CPU demo in ``workdir`` from scratch and measure Snakemake's own CPU time (its
    process alone: its jobs are children, counted apart) by polling it."""
    import shutil
    import subprocess

    import psutil

    cmd = demo_command(workdir, cores, warm_worker)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    start = time.perf_counter()
    worker_log = workdir / "logs" / "warm_worker.log"
    with open(workdir / "snakemake.out", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        watched, cpu = psutil.Process(proc.pid), 0.0
        worker, worker_cpu = None, 0.0
        while proc.poll() is None:
            try:
                times = watched.cpu_times()
                cpu = times.user + times.system
            except psutil.Error:
                break
            worker = worker or _warm_worker(worker_log)
            if worker is not None:
                try:
                    times = worker.cpu_times()  # its own: the forked jobs are counted by their benchmarks
                    worker_cpu = times.user + times.system
                except psutil.Error:
                    pass
            time.sleep(0.2)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the demo failed (exit {proc.returncode}); see {workdir / 'snakemake.out'}")
    return {
        "wall_seconds": round(wall, 1),
        "snakemake_cpu_seconds": round(cpu, 1),
        "warm_worker_cpu_seconds": round(worker_cpu, 1) if worker is not None else None,
        "cores": cores,
    }


def _warm_worker(log: Path):
    """The warm worker's process, once its log names it (``augdefense.forkserver``)."""
    import psutil

    match = re.match(r"warm worker (\d+):", log.read_text()) if log.is_file() else None
    try:
        return psutil.Process(int(match.group(1))) if match else None
    except psutil.Error:
        return None


OVERHEAD_PHASES = ("startup", "imports", "verify_inputs", "load", "model", "write")


def job_breakdown(root: Path) -> dict:
    """Per rule: jobs, mean wall time (``benchmark:``) and mean seconds per phase (sidecars'
    ``timings``; ``other`` = the wall time no phase covers: bookkeeping, sidecars, interpreter
    exit); and the whole run's summed job time and overhead share."""
    import json

    from augdefense.timing import WORK

    jobs: dict[tuple[str, str], dict] = {}
    sidecars = itertools.chain((root / "results").rglob("*.prov.json"), (root / "resources").rglob("*.prov.json"))
    for sidecar in sidecars:
        record = json.loads(sidecar.read_text())
        if "timings" in record:
            jobs[(record["rule"], json.dumps(record["wildcards"], sort_keys=True))] = record
    rules: dict[str, list[dict]] = {}
    benchmarked_jobs: dict[str, int] = {}
    for (rule, _), record in jobs.items():
        wildcards = record["wildcards"]
        phases = dict(record["timings"])
        # Rules without a benchmark file (reporting): the runner's own measure, exit excluded.
        wall, benchmarked = sum(phases.get(p, 0.0) for p in ("startup", "imports", "verify_inputs", "job")), 0
        # The benchmark file is named by the wildcards in the output pattern's order, which the
        # sidecar (keys sorted) does not keep: try each order.
        for order in itertools.permutations(wildcards.values()) if wildcards else ():
            tsv = root / "benchmarks" / rule / ("/".join(order) + ".tsv")
            if tsv.is_file():
                wall, benchmarked = float(tsv.read_text().splitlines()[1].split("\t")[0]), 1
                break
        work = sum(phases.get(p, 0.0) for p in WORK)
        named = sum(phases.get(p, 0.0) for p in (*OVERHEAD_PHASES, *WORK))
        rules.setdefault(rule, []).append(
            {"wall": wall, "work": work, **{p: phases.get(p, 0.0) for p in OVERHEAD_PHASES}, "other": wall - named}
        )
        benchmarked_jobs[rule] = benchmarked_jobs.get(rule, 0) + benchmarked
    table, total, work_total = {}, 0.0, 0.0
    for rule, rows in sorted(rules.items()):
        n = len(rows)
        table[rule] = {
            "jobs": n,
            "benchmarked": benchmarked_jobs[rule],  # jobs whose wall time is their benchmark file's
            **{k: round(sum(r[k] for r in rows) / n, 2) for k in rows[0]},
        }
        total += sum(r["wall"] for r in rows)
        work_total += sum(r["work"] for r in rows)
    return {
        "rules": table,
        "summed_job_seconds": round(total, 1),
        "work_seconds": round(work_total, 1),
        "overhead_share": round(1 - work_total / total, 3) if total else None,
    }


def overhead_share(demo: dict) -> float | None:
    """Everything but the work, as a share of the jobs' summed wall time plus the warm worker's own
    CPU time (its imports, and the forks: time no job's benchmark holds)."""
    b = demo["breakdown"]
    total = b["summed_job_seconds"] + (demo.get("warm_worker_cpu_seconds") or 0.0)
    return round(1 - b["work_seconds"] / total, 3) if total else None


def breakdown_markdown(demo: dict) -> list[str]:
    b = demo["breakdown"]
    worker = demo.get("warm_worker_cpu_seconds")
    lines = [
        f"The CPU demo from scratch: {demo['wall_seconds']} s wall on {demo['cores']} cores; Snakemake's own "
        f"process used {demo['snakemake_cpu_seconds']} s of CPU"
        + (f", the warm worker's {worker} s" if worker is not None else ", no warm worker")
        + f". Jobs' summed wall time {b['summed_job_seconds']} s, of which the work (training, crafting, "
        f"evaluation, filtering) {b['work_seconds']} s: overhead {100 * overhead_share(demo):.1f}% (of the "
        "jobs' time and the worker's CPU). Mean seconds per job:",
        "",
        "| rule | jobs | wall | start-up | imports | verify inputs | load | model | work | write | other |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rule, r in b["rules"].items():
        lines.append(
            f"| {rule} | {r['jobs']} | {r['wall']} | {r['startup']} | {r['imports']} | {r['verify_inputs']} | "
            f"{r['load']} | {r['model']} | {r['work']} | {r['write']} | {r['other']} |"
        )
    return lines
