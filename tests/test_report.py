"""The HTML report: categories named as the papers do (one home, ``augdefense.titles``), a front
page that says what ran, at what scale and where the claims are; and the illustrations' rule
reruns for the defenses it draws only."""

import json
import re

import pytest
import yaml

from augdefense import titles
from conftest import REPO, snakemake

CONFIGS = [REPO / "config.yaml", *sorted((REPO / "presets").glob("*.yaml"))]
# A paper's table or figure, optionally with the paper; or a plain-English name (no config key).
PAPER_STYLE = re.compile(r"(Tables?|Figures?) \d+[a-z]?( and \d+[a-z]?)? \(DP-InstaHide\)|[A-Z][a-z\-]+( [a-z\-]+)*")


def test_experiments_are_named_as_the_papers_do():
    assert titles.experiment_title("table1") == "Table 1 (DP-InstaHide)"
    assert titles.experiment_title("figure4b") == "Figure 4b (DP-InstaHide)"
    assert titles.experiment_title("backdoor_control") == "Backdoor clean control"
    # An experiment of a user's own is called by its key, marked as such, not given a paper's name.
    assert titles.experiment_title("my_ablation") == "Experiment my_ablation"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_experiment_has_a_paper_title(config):
    experiments = yaml.safe_load(config.read_text())["experiments"]
    untitled = [name for name in experiments if name not in titles.EXPERIMENT_TITLES]
    assert not untitled, f"{config.name}: experiments without a title in augdefense.titles: {untitled}"


def _report_categories() -> list[str]:
    """Every report() category the rules declare, evaluated: a ``titles`` constant, or the
    experiment title of every experiment of every shipped config."""
    names = []
    for rules in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for match in re.finditer(
            r"\bcategory=(lambda w: titles\.experiment_title\(w\.table\)|[^,)\n]+)", rules.read_text()
        ):
            expression = match.group(1).strip()
            if expression == "lambda w: titles.experiment_title(w.table)":
                for config in CONFIGS:
                    names += map(titles.experiment_title, yaml.safe_load(config.read_text())["experiments"])
            else:
                constant = re.fullmatch(r"titles\.([A-Z0-9_]+)", expression)
                assert constant, f"{rules.name}: category={expression} is not a name from augdefense.titles"
                names.append(getattr(titles, constant.group(1)))
    return names


def test_every_report_category_is_a_paper_style_name():
    names = _report_categories()
    assert "Table 1 (DP-InstaHide)" in names and titles.ILLUSTRATIONS in names and titles.CLAIMS in names
    for name in names:
        assert PAPER_STYLE.fullmatch(name), f"report category {name!r} is not named as the papers do"
        assert not re.fullmatch(r"[a-z0-9_]+", name), name  # a raw config key


def test_the_subcategories_name_what_they_hold():
    text = (REPO / "workflow" / "rules" / "report.smk").read_text()
    assert sorted(set(re.findall(r'subcategory="([^"]+)"', text))) == ["Figure", "Table"]


def _dry_run(workdir, config: dict, name: str) -> str:
    path = workdir.parent / f"{workdir.name}-{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return snakemake("-n", "--configfile", str(path), cwd=workdir).stdout


def test_editing_a_defense_redraws_the_illustrations_only_if_it_is_drawn(tiny_run):
    workdir, _ = tiny_run
    config = yaml.safe_load((workdir / "tiny.yaml").read_text())
    unchanged = _dry_run(workdir, config, "same")
    assert "render_illustrations" not in unchanged
    config["defenses"]["ss"]["multiplier"] = 2.0  # a filter: not drawn
    assert "render_illustrations" not in _dry_run(workdir, config, "filter")
    config["defenses"]["mixup"]["alpha"] = 0.5  # the mixup panel's defense
    assert "render_illustrations" in _dry_run(workdir, config, "mixup")


def test_the_report_names_categories_as_the_papers_and_opens_on_a_front_page(tiny_run, tmp_path):
    workdir, _ = tiny_run
    report = tmp_path / "report.html"
    snakemake("--configfile", str(workdir / "tiny.yaml"), "--report", str(report), cwd=workdir)
    html = report.read_text(errors="replace")
    categories = json.loads(re.search(r"var categories = (\{.*?\});\n", html).group(1))
    experiments = yaml.safe_load((workdir / "tiny.yaml").read_text())["experiments"]
    expected = {titles.experiment_title(name) for name in experiments}
    expected |= {titles.METRICS, titles.ILLUSTRATIONS, titles.FIGURE4A, titles.COMPARISON, titles.CLAIMS}
    assert set(categories) == expected
    assert categories["Table 1 (DP-InstaHide)"] == {
        "Table": ["results/tables/table1.csv"],
        "Figure": ["results/figures/table1.png"],
    }
    front = json.loads(re.search(r"var workflow_desc = (\".*?\");\n", html).group(1))
    assert "dataset digits, model convnet, seeds 2" in front  # the scale the run's jobs were given
    assert "results/claims.md" in front
    for name in experiments:
        assert titles.experiment_title(name) in front and f">{name}<" in front
