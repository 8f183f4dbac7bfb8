"""Config checks the schema cannot express, and the experiment grid."""

import copy

import pytest

from augdefense import config as grid
from augdefense.errors import ConfigError
from augdefense.sources import SourceFacts
from conftest import REPO

# ImageNet's training set as the Table 3 preset sees it (the data are not on this machine).
IMAGENET = SourceFacts(train_class_sizes=(1300,) * 1000, image_shape=(3, 224, 224))


@pytest.fixture
def config():
    return grid.load(REPO / "presets" / "tiny.yaml")


def test_presets_and_paper_config_pass():
    for path in [REPO / "config.yaml", *sorted((REPO / "presets").glob("*.yaml"))]:
        grid.load(path, facts=IMAGENET if path.name == "imagenet.yaml" else None)


def test_grid_is_the_union_of_experiments(config):
    config["experiments"]["other"] = {"attacks": ["patch10"], "defenses": ["none", "cutmix"]}
    cells = grid.cells(config)
    # Shared cells once; ss x patch100 excluded; table2: wb x 2, wb_adapt x mixup, control x 2;
    # table4: fc, cp x none, ss; table6: htbd, clbd x none.
    assert len(cells) == len(set(cells)) == 3 * 2 + 1 + 5 + 6
    assert ("wb_control", "none") in cells and ("wb_adapt", "none") not in cells
    assert len(grid.victim_runs(config)) == 18 * 2
    config["seeds"] = [3, 7]
    assert {s for _, _, s in grid.victim_runs(config)} == {3, 7}


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["experiments"]["table1"]["attacks"].append("wb9"),
            "experiments.table1.attacks: 'wb9' is not defined",
        ),
        (lambda c: c["experiments"]["table2"].update(control="wb"), "experiments.table2.control: attack 'wb' poisons"),
        (
            lambda c: c["experiments"]["table2"].update(control="wb7"),
            "experiments.table2.attacks: 'wb7' is not defined",
        ),
        (
            lambda c: c["experiments"]["table2"]["defenses"].append("ss"),
            "defense 'ss' cannot apply to attack 'wb_adapt': an adaptive attack",
        ),
        (lambda c: c["experiments"]["table1"]["defenses"].append("dknn"), "experiments.table1.defenses: 'dknn' is not"),
        (
            lambda c: c["attacks"]["patch10"].update(recipe="targeted9"),
            "attacks.patch10.recipe: 'targeted9' is not defined",
        ),
        (
            lambda c: c["experiments"]["table1"].update(exclude=[{"attack": "patch10", "defense": "ac"}]),
            "experiments.table1.exclude",
        ),
    ],
)
def test_undefined_references_are_named(config, edit, message):
    edit(config)
    with pytest.raises(ConfigError, match=message):
        grid.check_config(config)


def test_filter_on_a_fully_poisoned_class_is_refused_unless_excluded(config):
    assert config["defenses"]["ss"]["type"] == "spectral_signatures"
    grid.check_config(config)
    assert ("patch100", "ss") not in grid.cells(config) and ("patch10", "ss") in grid.cells(config)
    refused = copy.deepcopy(config)
    del refused["experiments"]["table1"]["exclude"]
    with pytest.raises(ConfigError, match="defense 'ss' cannot apply to attack 'patch100'"):
        grid.check_config(refused)


def test_non_adaptive_poisons_are_crafted_once(config):
    assert grid.crafting_slot(config, "patch10", "mixup") == grid.crafting_slot(config, "patch10", "cutmix") == "none"
    assert grid.crafting_slot(config, "wb", "mixup") == grid.crafting_slot(config, "wb", "cutmix") == "none"
    assert grid.crafting_slot(config, "wb_adapt", "mixup") == "mixup"


def test_filter_types_match_the_registry():
    from augdefense import defenses

    registered = {name for name, cls in defenses.REGISTRY.items() if getattr(cls, "is_filter", False)}
    assert registered == set(grid.FILTER_TYPES)
