"""The README and docs/ say only what the repository backs: every relative link resolves, every
test they name exists, every decimal number on a line that links a run's file under docs/evidence/
appears in that file, and each committed evidence run's claims table is what its metrics give."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").rglob("*.md")])
EVIDENCE = REPO / "docs" / "evidence"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
NAMED_TEST = re.compile(r"(?:tests/)?(test_\w+)\.py::(test_\w+)")
DECIMAL = re.compile(r"(?<![\w.])[-+]?\d+\.\d+")


def _relative_links(path: Path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for target in LINK.findall(line):
            if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
                yield number, line, target


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc):
    _check_links(doc)


def _check_links(doc: Path) -> None:
    broken = []
    for number, _, target in _relative_links(doc):
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file).resolve()
        if not resolved.exists():
            broken.append(f"line {number}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md":
            headings = [line.lstrip("#") for line in resolved.read_text().splitlines() if line.startswith("#")]
            if anchor not in {_slug(h) for h in headings}:
                broken.append(f"line {number}: {target} (no such heading)")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def test_the_link_check_can_fail(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Here\n[ok](doc.md#here) [gone](missing.md) [bad anchor](doc.md#there) [web](https://x.org)\n")
    targets = [t for _, _, t in _relative_links(doc)]
    assert targets == ["doc.md#here", "missing.md", "doc.md#there"]
    with pytest.raises(AssertionError, match=r"missing\.md.*doc\.md#there"):
        _check_links(doc)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_named_test_exists(doc):
    missing = []
    for module, name in NAMED_TEST.findall(doc.read_text()):
        source = REPO / "tests" / f"{module}.py"
        if not source.exists() or not re.search(rf"^def {name}\(", source.read_text(), re.M):
            missing.append(f"{module}.py::{name}")
    assert not missing, f"{doc.relative_to(REPO)} names tests that do not exist: {missing}"


def _numbers(text: str) -> set[str]:
    return {n.lstrip("+-") for n in DECIMAL.findall(text.replace("−", "-"))}


def _quotes(doc: Path):
    """Each line that links a file under docs/evidence/, with the files it links."""
    for line in doc.read_text().splitlines():
        files = []
        for target in LINK.findall(line):
            file = (doc.parent / target.partition("#")[0]).resolve()
            if EVIDENCE.resolve() in file.parents and file.is_file():
                files.append(file)
        if files:
            yield line, files


def _misquotes(doc: Path) -> list[str]:
    wrong = []
    for line, files in _quotes(doc):
        source = " ".join(f.read_text() for f in files)
        prose = LINK.sub(lambda m: m.group(0).split("](")[0], line)  # link targets are not quotes
        absent = sorted(_numbers(prose) - _numbers(source))
        if absent:
            wrong.append(f"{absent} not in {[f.name for f in files]}: {line[:100]}")
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_numbers_quoted_beside_a_run_file_are_in_that_file(doc):
    wrong = _misquotes(doc)
    assert not wrong, f"{doc.relative_to(REPO)}:\n" + "\n".join(wrong)


def test_a_misquoted_number_is_caught(tmp_path):
    claims = EVIDENCE / "digits" / "claims.md"
    if not claims.exists():
        pytest.skip("no committed evidence run")
    quoted = sorted(_numbers(claims.read_text()))[0]
    doc = tmp_path / "doc.md"
    doc.write_text(f"Right: {quoted} ([claims]({claims})). Wrong: 123.456 ([claims]({claims})).\n")
    assert len(_misquotes(doc)) == 1 and "123.456" in _misquotes(doc)[0]
    doc.write_text(f"Right: {quoted} ([claims]({claims})).\n")
    assert _misquotes(doc) == []


RUNS = sorted(p.parent for p in EVIDENCE.rglob("run.json"))


@pytest.mark.parametrize("run", RUNS, ids=lambda p: str(p.relative_to(EVIDENCE)))
def test_a_committed_runs_claims_are_what_its_metrics_give(run, tmp_path):
    from augdefense.claims import render_claims
    from augdefense.evidence import claimed_experiments

    record = json.loads((run / "run.json").read_text())
    for key in ("commit", "date", "machine", "cpu_isa", "preset", "seeds", "workflow_wall_seconds"):
        assert key in record, f"{run / 'run.json'} lacks {key}"
    experiments = claimed_experiments(run / "config.json")
    frame = render_claims(
        metrics=run / "metrics.csv", experiments=experiments, scale="", csv=tmp_path / "c.csv", md=tmp_path / "c.md"
    )
    committed = pd.read_csv(run / "claims.csv")
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "c.csv"), committed, check_dtype=False, check_exact=False, rtol=1e-9
    )
    assert set(frame.verdict) <= {"holds", "contradicted", "inconclusive"}
    assert int(pd.read_csv(run / "metrics.csv").seed.nunique()) == record["seeds"]


def _recipes_of(config: dict, attack: str) -> dict:
    """The recipes a cell of ``attack`` trains with: its own, its extractor's and its crafting model's."""
    names, entry = set(), config["attacks"][attack]
    for name in (entry.get("recipe"), entry.get("crafting_recipe")):
        if name:
            names.add(name)
            names.add((config["recipes"][name].get("transfer") or {}).get("pretrain_recipe"))
    return {n: config["recipes"][n] for n in sorted(filter(None, names))}


def _cell_setting(config: dict, attack: str, defense: str) -> str:
    shared = {k: config.get(k) for k in ("data", "model", "runtime", "threads")}
    entries = {"attack": config["attacks"][attack], "defense": config["defenses"][defense]}
    return json.dumps({**shared, **entries, "recipes": _recipes_of(config, attack)}, sort_keys=True)


TOP_RUNS = [run for run in RUNS if run.parent == EVIDENCE]
RUN_PAIRS = [(a, b) for i, a in enumerate(TOP_RUNS) for b in TOP_RUNS[i + 1 :]]


@pytest.mark.parametrize("first, second", RUN_PAIRS, ids=lambda p: p.name)
def test_two_committed_runs_give_a_shared_cell_the_same_numbers(first, second):
    """Two runs on the same kernels and the same CPU model that hold a cell with the same settings
    (data, model, runtime, the attack's and defense's entries, every recipe it trains with) have the
    same metrics per seed."""
    records = [json.loads((run / "run.json").read_text()) for run in (first, second)]
    if records[0]["cpu_isa"] != records[1]["cpu_isa"]:
        pytest.skip("different kernels: verdicts, not digits, should agree")
    if records[0]["machine"] != records[1]["machine"]:
        pytest.skip("different CPUs (the same ISA sums in another order on another vendor's CPU): verdicts agree")
    configs = [json.loads((run / "config.json").read_text()) for run in (first, second)]
    metrics = [pd.read_csv(run / "metrics.csv") for run in (first, second)]
    both = metrics[0].merge(metrics[1], on=["attack", "defense", "seed"], suffixes=("_1", "_2"))
    compared = 0
    for (attack, defense), rows in both.groupby(["attack", "defense"]):
        if _cell_setting(configs[0], attack, defense) != _cell_setting(configs[1], attack, defense):
            continue
        for column in ("clean_acc", "poison_success", "goal_margin"):
            assert list(rows[f"{column}_1"]) == list(rows[f"{column}_2"]), (attack, defense, column)
        compared += len(rows)
    if not compared:
        pytest.skip("no cell with the same settings in both runs")


@pytest.mark.parametrize("first, second", RUN_PAIRS, ids=lambda p: p.name)
def test_two_committed_runs_of_one_config_give_every_claim_the_same_verdict(first, second):
    """Per-seed numbers may move with the CPU; a claim's verdict must not (docs/reproducibility.md)."""
    configs = [(run / "config.json").read_text() for run in (first, second)]
    if json.loads(configs[0]) != json.loads(configs[1]):
        pytest.skip("different configs")
    claims = [pd.read_csv(run / "claims.csv").set_index(["experiment", "claim"]).verdict for run in (first, second)]
    assert claims[0].sort_index().to_dict() == claims[1].sort_index().to_dict()
