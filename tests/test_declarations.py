"""Facts written once: the config schema is generated from the registries' Param tables, the type
lists agree with the registries, rules bind to their functions by name, each rule's code inputs
cover the modules its job ran, and attacks of one seed share their random draws."""

import ast
import json

import pytest
import torch

from augdefense import attacks, codedeps, defenses, schema
from augdefense import config as grid
from augdefense.errors import ConfigError
from augdefense.params import Param, complete
from augdefense.runner import bind
from conftest import REPO


def test_committed_schema_is_the_generated_one():
    """`make schema` output: a Param table edited without regenerating fails here."""
    assert grid.SCHEMA_PATH.read_text() == schema.dump(schema.build())


def test_schema_follows_a_planted_change_in_a_param_table(monkeypatch):
    from augdefense.defenses.mixing import Mixup

    before = schema.dump(schema.build())
    monkeypatch.setitem(Mixup.params, "k", Param("integer", "mixture width", default=3, minimum=1))
    assert schema.dump(schema.build()) != before
    assert "default: 3" in schema.dump(schema.build())


def _branch(registry_def: dict, type_name: str) -> dict:
    return next(b["then"] for b in registry_def["allOf"] if b["if"]["properties"]["type"]["const"] == type_name)


def test_schema_types_and_role_lists_agree_with_the_registries():
    built = schema.build()["$defs"]
    assert built["attack"]["properties"]["type"]["enum"] == sorted(attacks.REGISTRY)
    assert built["defense"]["properties"]["type"]["enum"] == sorted(defenses.REGISTRY)
    filters = {name for name, cls in defenses.REGISTRY.items() if getattr(cls, "is_filter", False)}
    assert filters == set(grid.FILTER_TYPES)
    needs_model = {
        name for name, cls in attacks.REGISTRY.items() if cls({"type": name, "recipe": "r"}, "x").needs_model
    }
    assert needs_model == set(grid.MODEL_ATTACK_TYPES)
    counted = {name for name, cls in attacks.REGISTRY.items() if "n_poisons" in cls.fields()}
    assert counted == set(grid.COUNTED_ATTACK_TYPES)
    # Each branch lists exactly the class's keys, with the class's defaults.
    for name, cls in defenses.REGISTRY.items():
        branch = _branch(built["defense"], name)
        assert set(branch["properties"]) == {"type", *cls.fields()}
        assert {k: v["default"] for k, v in branch["properties"].items() if "default" in v} == {
            k: p.default for k, p in cls.fields().items() if p.has_default
        }


def test_a_planted_mismatch_in_a_type_list_is_caught(monkeypatch):
    monkeypatch.setattr(grid, "FILTER_TYPES", grid.FILTER_TYPES | {"mixup"})
    with pytest.raises(AssertionError):
        test_schema_types_and_role_lists_agree_with_the_registries()


def test_param_checks_name_the_key_and_fill_defaults():
    fields = {
        "k": Param("integer", default=2, minimum=1),
        "mode": Param("string", enum=("a", "b")),
        "p": Param("number", default=0.5, minimum=0, maximum=1),
    }
    assert complete({"mode": "a"}, fields, "defenses.x") == {"mode": "a", "k": 2, "p": 0.5}
    for spec, key in (
        ({"mode": "a", "k": 0}, "defenses.x.k: 0 is invalid"),
        ({"mode": "a", "k": True}, "defenses.x.k: True is invalid"),
        ({"mode": "a", "p": 1.5}, "defenses.x.p: 1.5 is invalid"),
        ({"mode": "c"}, "defenses.x.mode: 'c' is invalid"),
        ({}, "defenses.x.mode: required"),
        ({"mode": "a", "q": 1}, r"defenses.x: unknown key\(s\) \['q'\]"),
    ):
        with pytest.raises(ConfigError, match=key):
            complete(spec, fields, "defenses.x")


def test_bind_takes_names_and_refuses_what_does_not_match():
    from augdefense.jobs.train import TrainingJob, train_victim

    values = {
        "data": "d.pt",
        "poison": "p.pt",
        "model": {},
        "recipe": {},
        "runtime": {},
        "seed": 3,
        "defense_name": "none",
        "attack": "a",
        "out": "o.json",
        "threads": 2,
    }
    kwargs = bind(train_victim, values, "rule train_victim")
    assert isinstance(kwargs["job"], TrainingJob) and kwargs["job"].seed == 3 and kwargs["job"].threads == 2
    assert kwargs["out"] == "o.json" and kwargs["attack"] == "a"
    with pytest.raises(ConfigError, match=r"the rule declares \['extra'\], which train_victim does not take"):
        bind(train_victim, {**values, "extra": 1}, "rule train_victim")
    with pytest.raises(ConfigError, match="needs 'out'"):
        bind(train_victim, {k: v for k, v in values.items() if k != "out"}, "rule train_victim")


def test_every_rule_script_calls_one_function_whose_closure_is_its_code_input():
    """Each workflow/scripts/<rule>.py runs one augdefense function through the runner; the rule's
    code input names that function's module."""
    rules_text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        tree = ast.parse(script.read_text())
        imports = {a.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names}
        call = tree.body[-1].value
        function = call.args[1].id
        assert imports["run_rule"] == "augdefense.runner" and imports[function].startswith("augdefense")
        rule = script.stem
        block = rules_text.split(f"rule {rule}:", 1)[1].split("\nrule ", 1)[0]
        assert f'code=code("{imports[function]}")' in block, rule
        assert f'"../scripts/{rule}.py"' in block, rule


@pytest.mark.workflow
def test_code_inputs_cover_the_modules_each_job_ran(tiny_run):
    """Every module a job of the tiny run loaded (its sidecar records them) is among its rule's code
    inputs, except the runner, provenance, timing and warm-worker modules, which no result depends on."""
    workdir, _ = tiny_run
    checked = set()
    for sidecar in [*(workdir / "results").rglob("*.prov.json"), *(workdir / "resources").rglob("*.prov.json")]:
        record = json.loads(sidecar.read_text())
        code = {p for p in record["inputs"] if p.startswith(str(REPO / "src"))}
        ran = {
            str(codedeps.module_file(m)) for m in record["environment"]["modules"] if m not in codedeps.RUNNER_MODULES
        }
        assert ran <= code, (record["rule"], sorted(ran - code))
        checked.add(record["rule"])
    assert {
        "prepare_data",
        "craft_poison",
        "train_victim",
        "sanitize",
        "render_tables",
        "render_figures",
        "provenance_manifest",
    } <= checked


def test_closure_follows_imports_inside_functions(tmp_path, monkeypatch):
    """A planted lazy import is found (and its package's __init__); a module imported nowhere is not."""
    package = tmp_path / "augdefense"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("X = 1\n")
    (package / "c.py").write_text("Y = 2\n")
    (package / "a.py").write_text("def f():\n    from augdefense.sub import b\n    return b.X\n")
    monkeypatch.setattr(codedeps, "SRC", package)
    codedeps.closure.cache_clear()
    try:
        assert codedeps.closure("augdefense.a") == {"augdefense", "augdefense.a", "augdefense.sub", "augdefense.sub.b"}
    finally:
        codedeps.closure.cache_clear()


def test_no_function_takes_more_than_eight_positional_parameters():
    for path in sorted((REPO / "src" / "augdefense").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = [a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
                assert len(positional) <= 8, f"{path.name}:{node.lineno} {node.name} takes {len(positional)}"


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_a_seed_draws_one_target_across_targeted_attacks_and_their_control(digits8, seed):
    from augdefense.attacks.feature_collision import draw_targeted

    gm = attacks.build({"type": "gradient_matching", "recipe": "r", "budget": 0.02}, "wb").draw(digits8, seed)
    control = attacks.build({"type": "gradient_matching", "recipe": "r", "budget": 0.02, "control": True}, "wbc").craft(
        digits8, seed
    )
    fc = draw_targeted(digits8, seed, 5, "fc")
    assert gm["target_index"] == fc["target_index"] == int(control["clean_exclude"][0])
    assert gm["intended_class"] == fc["attacker_class"] == int(control["eval_goals"][0])
    assert torch.equal(gm["indices"][:0], fc["indices"][:0])


@pytest.mark.parametrize("seed", [0, 3])
def test_a_seed_draws_one_pair_and_trigger_across_backdoors_and_their_control(digits8, seed):
    from augdefense.attacks import draws

    patch = attacks.build({"type": "patch", "recipe": "r", "patch_size": 3}, "p").craft(digits8, seed)
    control = attacks.build({"type": "patch", "recipe": "r", "patch_size": 3, "control": True}, "c").craft(
        digits8, seed
    )
    drawn = draws.backdoor(digits8, seed, 3, "x")
    for artifact in (patch, control):
        assert torch.equal(artifact["patch"], drawn["patch"])
        assert artifact["info"]["target_class"] == drawn["target_class"]
        assert artifact["info"]["victim_class"] == drawn["victim_class"]
    # The trigger backdoors share the draw too (same stream, [seed, 0]).
    assert torch.equal(draws.backdoor(digits8, seed, 3, "htbd")["patch"], patch["patch"])
