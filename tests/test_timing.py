"""Where a job's time goes: phases net of the imports inside them, imports counted once, and the
per-rule breakdown `make bench` writes from the sidecars and benchmark files."""

import json
import sys
import time

import pytest

from augdefense import timing
from augdefense.bench import demo as bench_demo


@pytest.fixture(autouse=True)
def fresh_phases():
    timing.reset()
    yield
    timing.reset()


def test_a_phase_is_net_of_the_imports_inside_it(tmp_path, monkeypatch):
    module = tmp_path / "slow_module_for_timing.py"
    module.write_text("import time\ntime.sleep(0.2)\nimport json\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with timing.imports_timed():
        with timing.phase("load"):
            time.sleep(0.1)
            import slow_module_for_timing  # noqa: F401
        import slow_module_for_timing  # noqa: F401,F811 (loaded: not counted again)
    phases = timing.recorded()
    # Counted twice (the nested import, or the second import of a loaded module) would be >= 0.4; load
    # with the import inside it would be >= 0.3. The margins leave room for a loaded machine.
    assert 0.2 <= phases["imports"] < 0.38
    assert 0.1 <= phases["load"] < 0.28
    assert "slow_module_for_timing" in sys.modules


def test_phases_add_up_and_process_age_is_positive():
    for _ in range(2):
        with timing.phase("write"):
            time.sleep(0.05)
    assert 0.1 <= timing.recorded()["write"] < 0.2  # both blocks, added up
    age = timing.process_age()  # this process has run pytest's collection at least
    assert age is not None and 0 < age < 24 * 3600
    timing.reset()
    assert timing.recorded() == {}


def _job(root, rule, wildcards, phases, wall=None, order=None, folder="results"):
    out = root / folder / rule / ("_".join(wildcards.values()) + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"rule": rule, "wildcards": dict(sorted(wildcards.items())), "timings": phases}
    (out.parent / (out.name + ".prov.json")).write_text(json.dumps(record))
    if wall is not None:
        bench_file = root / "benchmarks" / rule / ("/".join(order or wildcards.values()) + ".tsv")
        bench_file.parent.mkdir(parents=True, exist_ok=True)
        bench_file.write_text(f"s\th:m:s\n{wall}\t0:00:0{int(wall)}\n")


def test_breakdown_splits_work_from_overhead_per_rule(tmp_path):
    # The benchmark file follows the output pattern's order (seed last), the sidecar sorts its keys.
    phases = {"startup": 0.1, "imports": 2.0, "load": 0.2, "train": 6.0, "evaluate": 0.5, "write": 0.1, "job": 6.8}
    _job(tmp_path, "train_victim", {"attack": "a", "seed": "0", "defense": "d"}, phases, 9.0, ["a", "d", "0"])
    _job(tmp_path, "train_victim", {"attack": "a", "seed": "1", "defense": "d"}, phases, 10.0, ["a", "d", "1"])
    _job(tmp_path, "render_tables", {}, {"startup": 1.0, "imports": 0.5, "verify_inputs": 0.0, "job": 0.5})
    _job(tmp_path, "prepare_data", {"dataset": "x"}, {"startup": 0.1, "load": 1.9, "job": 1.9}, folder="resources")
    result = bench_demo.job_breakdown(tmp_path)
    victims = result["rules"]["train_victim"]
    assert victims["jobs"] == 2 and victims["wall"] == 9.5 and victims["work"] == 6.5
    assert victims["other"] == pytest.approx(9.5 - 6.5 - 2.0 - 0.1 - 0.2 - 0.1, abs=0.01)
    assert result["rules"]["render_tables"]["wall"] == 2.0  # no benchmark file: the runner's own measure
    assert result["rules"]["prepare_data"]["load"] == 1.9  # sidecars under resources/ count too
    assert result["summed_job_seconds"] == 23.0 and result["work_seconds"] == 13.0
    assert result["overhead_share"] == pytest.approx(1 - 13 / 23, abs=0.001)
    markdown = "\n".join(
        bench_demo.breakdown_markdown(
            {"wall_seconds": 30.0, "cores": 2, "snakemake_cpu_seconds": 4.2, "breakdown": result}
        )
    )
    assert "Snakemake's own process used 4.2 s of CPU" in markdown and "| train_victim | 2 | 9.5 |" in markdown
    assert "no warm worker" in markdown and "overhead 43.5%" in markdown
    # The warm worker's own CPU (its imports, the forks) is overhead that no job's benchmark holds.
    demo = {"wall_seconds": 30.0, "cores": 2, "snakemake_cpu_seconds": 4.2, "warm_worker_cpu_seconds": 2.0}
    demo["breakdown"] = result
    assert bench_demo.overhead_share(demo) == pytest.approx(1 - 13 / 25, abs=0.001)
    assert "the warm worker's 2.0 s" in "\n".join(bench_demo.breakdown_markdown(demo))


@pytest.mark.workflow
def test_breakdown_of_a_real_run_matches_every_job_to_its_benchmark_file(tiny_run):
    """On the tiny run's own sidecars and `benchmark:` files (named in another wildcard order): every
    job of a benchmarked rule gets its file's wall time, and the work inside it is timed."""
    workdir, _ = tiny_run
    result = bench_demo.job_breakdown(workdir)
    rules = result["rules"]
    benchmarked = {path.name for path in (workdir / "benchmarks").iterdir()}
    assert {"prepare_data", "craft_poison", "train_victim"} <= benchmarked
    for rule in benchmarked:
        files = list((workdir / "benchmarks" / rule).rglob("*.tsv"))
        assert rules[rule]["jobs"] == rules[rule]["benchmarked"] == len(files), rule
    victims = rules["train_victim"]
    assert victims["work"] > 0 and victims["imports"] > 0 and victims["wall"] > victims["work"]
    assert rules["render_tables"]["benchmarked"] == 0
    assert 0 < result["overhead_share"] < 1
