"""Config checks the schema cannot express, and the experiment grid."""

import copy

import pytest
import yaml

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


def test_the_paper_config_gives_the_transfer_setting_the_benchmarks_constants_and_the_rest_the_datas():
    """learning_module.data_mean_std_dict["cifar10"]: fine-tuning and crafting in Tables 4 and 6;
    Tables 1, 2 and 5 (forest) keep the statistics computed from the training set."""
    paper = grid.load(REPO / "config.yaml")
    assert "mean" not in paper["data"] and "std" not in paper["data"]
    transfer = paper["recipes"]["transfer"]["transfer"]
    assert transfer["mean"] == [0.4914, 0.4822, 0.4465] and transfer["std"] == [0.2023, 0.1994, 0.2010]
    for name in ("backdoor", "targeted", "pretrain"):
        assert "transfer" not in paper["recipes"][name]


def test_the_paper_config_follows_the_reference_code_where_it_departs_from_the_libraries_defaults():
    """fp32 victims (forest and the benchmark did not autocast), forest's default cutout strength in
    the MaxUp-cutout row that reproduces forest's code, and the benchmark's triggers and truncation."""
    from augdefense.training import Runtime

    paper = grid.load(REPO / "config.yaml")
    assert paper["runtime"]["amp"] is False and Runtime.from_spec({}).amp is False
    assert paper["defenses"]["maxup_cutout_forest"]["inner"]["strength"] == 0
    for name in ("htbd", "clbd"):
        assert paper["attacks"][name].get("trigger", "benchmark") == "benchmark"


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
    with pytest.raises(
        ConfigError,
        match="defense 'ss' cannot apply to attack 'patch100': every training image of "
        "the target class is poisoned, so no clean image is left to tell apart; list",
    ):
        grid.check_config(refused)


def test_non_adaptive_poisons_are_crafted_once(config):
    assert grid.crafting_slot(config, "patch10", "mixup") == grid.crafting_slot(config, "patch10", "cutmix") == "none"
    assert grid.crafting_slot(config, "wb", "mixup") == grid.crafting_slot(config, "wb", "cutmix") == "none"
    assert grid.crafting_slot(config, "wb_adapt", "mixup") == "mixup"


def test_filter_types_match_the_registry():
    from augdefense import defenses

    registered = {name for name, cls in defenses.REGISTRY.items() if getattr(cls, "is_filter", False)}
    assert registered == set(grid.FILTER_TYPES)


DIGITS = SourceFacts(train_class_sizes=(142, 146, 142, 146, 145, 145, 145, 143, 139, 144), image_shape=(1, 8, 8))


def _refused(config, message, facts=DIGITS):
    with pytest.raises(ConfigError, match=message):
        grid.check_config(config, facts)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda c: c["attacks"]["wb"].update(budget=0.2),
            r"^attacks\.wb\.budget: 0\.2 x 1437 = 287 poisons of one class, but the smallest class of the training set "
            r"has 139 images \(the intended class is drawn at random per seed\)$",
        ),
        (
            lambda c: c["attacks"]["wb"].update(budget=0.0003),
            r"^attacks\.wb\.budget: 0\.0003 x 1437 training images rounds to no poison at all$",
        ),
        (
            lambda c: c["attacks"]["fc"].update(n_poisons=70),
            r"^attacks\.fc\.n_poisons: 70 poisons of one class, but the smallest class of the fine-tuning set has 69 "
            r"images \(classes are drawn at random per seed\)$",
        ),
        (
            lambda c: c["attacks"]["patch10"].update(fraction=0.003),
            r"^attacks\.patch10\.fraction: 0\.003 of the smallest class \(139 images\) rounds to no poison at all$",
        ),
        (lambda c: c["attacks"]["htbd"].update(patch_size=9), r"^attacks\.htbd\.patch_size: 9 exceeds the 8x8 images$"),
    ],
)
def test_what_the_data_cannot_hold_is_refused_naming_the_key(config, edit, message):
    edit(config)
    _refused(config, message)


def test_feasibility_limits_are_exact(config):
    """The largest counts that fit pass: 139 images in the smallest class (69 of them in the
    fine-tuning half), a trigger as large as the image; controls poison nothing and always fit."""
    config["attacks"]["wb"]["budget"] = 139 / 1437
    config["attacks"]["fc"]["n_poisons"] = 69
    config["attacks"]["htbd"]["patch_size"] = 8
    config["attacks"]["wb_control"]["budget"] = 0.9
    grid.check_config(config, DIGITS)
    config["attacks"]["wb"]["budget"] = 140 / 1437
    _refused(config, r"^attacks\.wb\.budget: .* = 140 poisons")
    config["attacks"]["wb"]["budget"] = 0.5 / 1437 + 1e-9  # rounds to exactly one poison: allowed
    config["attacks"]["patch10"]["fraction"] = 0.5 / 139 + 1e-9
    grid.check_config(config, DIGITS)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["attacks"].update({"a/b": c["attacks"]["patch10"]}), r"^'a/b': attack and defense names"),
        (lambda c: c["defenses"].update({".x": {"type": "none"}}), r"^'\.x': attack and defense names"),
        (
            lambda c: c["experiments"]["table1"].update(exclude=[{"attack": "patch10", "defense": "ac"}]),
            r"^experiments\.table1\.exclude: \{'attack': 'patch10', 'defense': 'ac'\} does not name one of the "
            r"experiment's attacks and one of its defenses$",
        ),
        (
            lambda c: c["experiments"]["table1"].update(exclude=[{"attack": "wb", "defense": "ss"}]),
            r"^experiments\.table1\.exclude: ",
        ),
        (
            lambda c: c["recipes"]["transfer"]["transfer"].update(pretrain_recipe="transfer_e2e"),
            r"^recipes\.transfer\.transfer\.pretrain_recipe: 'transfer_e2e' must name a recipe without 'transfer'",
        ),
        (
            lambda c: c["recipes"]["transfer"]["transfer"].update(pretrain_recipe="missing"),
            r"^recipes\.transfer\.transfer\.pretrain_recipe: 'missing' must name a recipe",
        ),
        (
            lambda c: c["recipes"]["transfer"]["transfer"].update(mean=[0.5]),
            r"^recipes\.transfer\.transfer\.mean, recipes\.transfer\.transfer\.std: give both",
        ),
        (
            lambda c: c["recipes"]["transfer"]["transfer"].update(mean=[0.5], std=[0.2, 0.2]),
            r"^recipes\.transfer\.transfer\.mean, recipes\.transfer\.transfer\.std: give both",
        ),
        (
            lambda c: c["attacks"]["wb_adapt"].update(recipe="transfer"),
            r"^attacks\.wb_adapt\.adaptive: adaptive crafting trains a model under the victim's defense; a transfer "
            r"recipe crafts against the shared pretrained extractor$",
        ),
    ],
)
def test_what_cannot_work_is_refused_naming_the_key(config, edit, message):
    edit(config)
    _refused(config, message)


def test_a_control_attack_is_allowed_as_control(config):
    assert config["attacks"]["wb_control"]["control"] is True
    grid.check_config(config, DIGITS)  # table2's control is wb_control


def test_the_workflow_paths_and_jobs_of_the_tiny_preset(config):
    assert grid.crafting_seed(3) == 1_000_003
    assert (
        grid.needs_crafting_model(config["attacks"]["wb"])
        and not grid.needs_crafting_model(config["attacks"]["wb_control"])
        and not grid.needs_crafting_model(config["attacks"]["patch10"])
    )
    assert grid.extractor_path(config, "fc") == "results/extractors/pretrain/share0.5.pt"
    assert grid.extractor_path(config, "wb") is None
    assert grid.crafting_model_path(config, "wb", "none", 1) == "results/crafting_models/targeted/none/1.pt"
    assert grid.crafting_model_path(config, "fc", "none", 1) == "results/extractors/pretrain/share0.5.pt"
    assert grid.crafting_model_path(config, "patch10", "none", 1) is None
    assert grid.poison_path(config, "wb_adapt", "mixup", 0) == "results/poisons/wb_adapt/mixup/0.pt"
    assert grid.poison_path(config, "wb", "mixup", 0) == "results/poisons/wb/none/0.pt"
    assert grid.sanitized_path(config, "patch10", "ss", 1) == "results/sanitize/patch10/ss/1.json"
    assert grid.sanitized_path(config, "patch10", "mixup", 1) is None
    assert grid.feature_model_path(config, "patch10", "ss", 1) == "results/feature_models/patch10/none/1.pt"
    assert grid.recipe_of(config, "fc") is config["recipes"]["transfer"]
    jobs = grid.compute_jobs(config)
    assert {rule: len(paths) for rule, paths in jobs.items()} == {
        "pretrain_extractor": 1,
        "train_crafting_model": 4,
        "craft_poison": 18,
        "train_feature_model": 6,
        "sanitize": 6,
        "train_victim": 36,
    }
    assert jobs["train_crafting_model"] == [
        f"results/crafting_models/targeted/{slot}/{s}.pt" for slot in ("mixup", "none") for s in (0, 1)
    ]
    assert jobs["pretrain_extractor"] == ["results/extractors/pretrain/share0.5.pt"]
    adaptive = [p for p in jobs["craft_poison"] if "wb_adapt" in p]
    assert adaptive == [f"results/poisons/wb_adapt/mixup/{s}.pt" for s in (0, 1)]
    assert "results/sanitize/patch10/ss/0.json" in jobs["sanitize"]
    assert "results/feature_models/fc/none/1.pt" in jobs["train_feature_model"]
    assert "results/runs/wb_control/mixup/1.json" in jobs["train_victim"]


def _pretrain_elsewhere(config, finetune_size=None):
    transfer = config["recipes"]["transfer"]["transfer"]
    transfer["pretrain_data"] = {"source": "cifar100", "root": "resources"}
    if finetune_size is not None:
        transfer["finetune_size"] = finetune_size
    config["experiments"]["table6"]["attacks"] = ["htbd"]


def test_an_extractor_of_its_own_dataset_is_its_own_job_and_dataset(config):
    _pretrain_elsewhere(config)
    grid.check_config(config, DIGITS)
    assert grid.extractor_path(config, "fc") == "results/extractors/pretrain/data-cifar100.pt"
    assert grid.extractor_path(config, "htbd") == "results/extractors/pretrain/share0.5.pt"  # transfer_e2e
    assert grid.pretraining(config, "pretrain", "data-cifar100") == {
        "pretrain_data": {"source": "cifar100", "root": "resources"}
    }
    assert grid.pretraining(config, "pretrain", "share0.5") == {"pretrain_share": 0.5}
    with pytest.raises(ConfigError, match=r"results/extractors/pretrain/share0\.3\.pt: no transfer recipe"):
        grid.pretraining(config, "pretrain", "share0.3")
    assert set(grid.datasets(config)) == {"digits", "cifar100"}
    assert grid.prepared_data_path(config["data"]) == "resources/prepared/digits.pt"
    assert sorted(grid.compute_jobs(config)["pretrain_extractor"]) == [
        "results/extractors/pretrain/data-cifar100.pt",
        "results/extractors/pretrain/share0.5.pt",
    ]


def test_finetune_size_bounds_the_poisons_per_class(config):
    """200 images over 10 classes: 20 per class, so 20 poisons of one class fit and 21 do not."""
    _pretrain_elsewhere(config, finetune_size=200)
    config["attacks"]["fc"]["n_poisons"] = 20
    grid.check_config(config, DIGITS)
    config["attacks"]["fc"]["n_poisons"] = 21
    _refused(
        config,
        r"^attacks\.fc\.n_poisons: 21 poisons of one class, but the smallest class of the fine-tuning set has 20",
    )


def test_clean_label_needs_a_crafting_recipe_when_the_extractor_pretrains_elsewhere(config):
    config["recipes"]["transfer_e2e"]["transfer"]["pretrain_data"] = {"source": "cifar100"}
    _refused(
        config,
        r"^attacks\.clbd\.crafting_recipe: required: its crafting needs a classifier over the victim's classes, "
        r"and recipe 'transfer_e2e' pretrains its extractor on another dataset$",
    )
    config["attacks"]["clbd"]["crafting_recipe"] = "transfer"
    _refused(config, r"^attacks\.clbd\.crafting_recipe: 'transfer' must name a recipe without 'transfer'")
    config["attacks"]["clbd"]["crafting_recipe"] = "targeted"
    grid.check_config(config, DIGITS)
    assert grid.crafting_model_path(config, "clbd", "none", 1) == "results/crafting_models/targeted/none/1.pt"
    assert "results/crafting_models/targeted/none/1.pt" in grid.compute_jobs(config)["train_crafting_model"]


def test_two_datasets_under_one_name_are_refused(config):
    config["recipes"]["transfer"]["transfer"]["pretrain_data"] = {"source": "digits", "split_seed": 3}
    _refused(
        config,
        r"^recipes\.transfer\.transfer\.pretrain_data: differs from data but would be prepared under the same "
        r"name 'digits'",
    )


def test_canonical_sorts_every_mapping_and_keeps_lists_in_order():
    value = grid.canonical({"b": 1, "a": {"d": [3, {"z": 1, "y": 2}], "c": (1, 2)}})
    assert list(value) == ["a", "b"] and list(value["a"]) == ["c", "d"]
    assert value["a"]["d"] == [3, {"y": 2, "z": 1}] and list(value["a"]["d"][1]) == ["y", "z"]
    assert value["a"]["c"] == [1, 2] and repr(value) == repr(grid.canonical(value))


def test_load_names_the_file_and_the_schema_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    config = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())
    config["defenses"]["mixup"]["k"] = 0
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=rf"(?s)^{bad}: .*0 is less than the minimum of 1.*\['mixup'\]\['k'\]"):
        grid.load(bad)


def test_cifar_sources_are_known_before_any_download():
    from augdefense import sources

    assert sources.facts({"source": "cifar100"}) == SourceFacts((500,) * 100, (3, 32, 32), 10000)
    assert sources.facts({"source": "cifar10", "image_size": 16}).image_shape == (3, 16, 16)
    assert sources.dataset_name({"source": "cifar10", "image_size": 16}) == "cifar10-16px"


def test_a_shift_claim_needs_the_experiments_control(config):
    claim = dict(config["experiments"]["table1"]["claims"][0], metric="goal_margin_shift")
    config["experiments"]["table1"]["claims"] = [claim]
    _refused(
        config,
        r"^experiments\.table1\.claims\[0\]\.metric: goal_margin_shift compares with the clean control; "
        r"the experiment has no 'control'$",
    )


def test_a_not_lower_claim_names_its_margin_and_no_other_claim_has_one(config):
    not_lower = config["experiments"]["table1"]["claims"][1]
    assert not_lower["direction"] == "not_lower" and not_lower["margin"] == 0.05
    config["experiments"]["table1"]["claims"][1] = {k: v for k, v in not_lower.items() if k != "margin"}
    _refused(
        config, r"^experiments\.table1\.claims\[1\]\.margin: required for direction not_lower: .*in the metric's unit"
    )
    config["experiments"]["table1"]["claims"][1] = not_lower
    config["experiments"]["table1"]["claims"][0]["margin"] = 0.05
    _refused(config, r"^experiments\.table1\.claims\[0\]\.margin: only a not_lower claim has a margin")
