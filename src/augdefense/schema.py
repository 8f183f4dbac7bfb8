"""The config's JSON schema, generated from the ``Param`` tables (the one home of every key, its
type, range and default): the data, model, recipe and runtime tables, and one branch per
registered attack and defense type. ``workflow/schemas/config.schema.yaml`` is this function's
output (``make schema`` rewrites it; a test fails when it is stale). Snakemake validates the config
with it before any job runs and fills in every default, so each job's params hold complete entries.

    python -m augdefense.schema            # print the schema
    python -m augdefense.schema --write    # rewrite workflow/schemas/config.schema.yaml
"""

from __future__ import annotations

import sys

from augdefense.claims import CLAIM_PARAMS
from augdefense.params import OPTIONAL, Param, object_schema

HEADER = (
    "# Generated from the Param tables of augdefense's registries by `make schema` "
    "(python -m augdefense.schema --write): do not edit by hand.\n"
)

EXPERIMENT_PARAMS = {
    "attacks": Param("array", "the attacks of the table's columns", items=Param("string")),
    "defenses": Param("array", "the defenses of the table's rows", items=Param("string")),
    "plot": Param(
        "string",
        "the figure: success vs accuracy per defense, vs mixture width per noise level "
        "(Fig. 4b), or each augmentation's curve as noise grows (Fig. 5)",
        default="tradeoff",
        enum=("tradeoff", "width", "noise"),
    ),
    "control": Param(
        "string",
        "an attack with control: true, run under every defense of the experiment (same-seed clean twins)",
        default=OPTIONAL,
    ),
    "exclude": Param(
        "array",
        "cells not run (shown as 'not applicable' in the table)",
        default=OPTIONAL,
        items=Param("object", fields={"attack": Param("string"), "defense": Param("string")}),
    ),
    "claims": Param(
        "array",
        "the papers' claims this experiment tests (results/claims.md)",
        default=OPTIONAL,
        items=Param("object", fields=CLAIM_PARAMS),
    ),
}
THREADS = Param("integer", "CPU threads per compute job", default=1, minimum=1)
WARM_WORKER = Param(
    "boolean",
    "local runs with runtime.device cpu: fork each job from one process that has imported torch "
    "(augdefense.forkserver; the same outputs, less start-up)",
    default=True,
)


def _registry_branches(registry: dict, what: str) -> dict:
    """A ``{type: ...}`` entry checked against its type's own keys (if/then per registered type)."""
    return {
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": sorted(registry)}},
        "allOf": [
            {"if": {"properties": {"type": {"const": name}}}, "then": object_schema(cls.fields(), extra={"type": {}})}
            for name, cls in sorted(registry.items())
        ],
        "description": f"a {what} entry: its type, and that type's keys",
    }


def build() -> dict:
    from augdefense import attacks, defenses, models, sources, training

    def named(ref: str, description: str) -> dict:
        return {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {"$ref": f"#/$defs/{ref}"},
            "description": description,
        }

    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": "augdefense workflow config. Every object forbids unknown keys, so a typo stops the run "
        "with a message that names the key. Attack and defense entries are checked per type.",
        "type": "object",
        "additionalProperties": False,
        "required": ["data", "model", "recipes", "attacks", "defenses", "experiments", "seeds"],
        "properties": {
            "data": object_schema(sources.DATA_PARAMS),
            "model": object_schema(models.MODEL_PARAMS),
            "recipes": named("recipe", "training recipes by name"),
            "attacks": named("attack", "attacks by name"),
            "defenses": named("defense", "defenses by name"),
            "experiments": named("experiment", "the cells each table or figure needs; shared cells run once"),
            "seeds": {
                "description": "a count (seeds 0..n-1) or an explicit list",
                "oneOf": [
                    {"type": "integer", "minimum": 1},
                    {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}, "uniqueItems": True},
                ],
            },
            "threads": THREADS.schema(),
            "warm_worker": WARM_WORKER.schema(),
            "runtime": {**object_schema(training.RUNTIME_PARAMS), "default": {}},
        },
        "$defs": {
            "recipe": object_schema(training.RECIPE_PARAMS),
            "experiment": object_schema(EXPERIMENT_PARAMS),
            "attack": _registry_branches(attacks.REGISTRY, "attack"),
            "defense": _registry_branches(defenses.REGISTRY, "defense"),
        },
    }


def dump(schema: dict) -> str:
    import yaml

    return HEADER + yaml.safe_dump(schema, sort_keys=False, width=120, allow_unicode=True, default_flow_style=None)


def main(argv: list[str] | None = None) -> int:
    from augdefense.config import SCHEMA_PATH

    text = dump(build())
    if "--write" in (argv if argv is not None else sys.argv[1:]):
        SCHEMA_PATH.write_text(text)
        print(f"wrote {SCHEMA_PATH}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
