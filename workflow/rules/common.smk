import shlex

SRC = Path(workflow.basedir) / "src" / "augdefense"
CONDA_ENV = "../../envs/augdefense.yaml"
# Rules call the package from this checkout, whether or not it is installed in the environment.
AUGDEFENSE = f"env PYTHONPATH={shlex.quote(str(SRC.parent))} python -m augdefense"
THREADS = config.get("threads", 1)
RUNTIME = grid.as_json(config.get("runtime", {}))

_data = config["data"]
DATASET = _data["source"] + (f"-{_data['image_size']}px" if _data.get("image_size") else "")
PREPARED_DATA = f"resources/prepared/{DATASET}.pt"


wildcard_constraints:
    attack=r"[A-Za-z0-9_\-]+",
    defense=r"[A-Za-z0-9_\-]+",
    slot=r"[A-Za-z0-9_\-]+",
    seed=r"\d+",
    table=r"[A-Za-z0-9_\-]+",


def code(*names):
    """Package sources a rule's results depend on: inputs, so that editing them reruns the rule."""
    return sorted(str(p) for name in names for p in SRC.glob(name))


def poison_path(attack, defense, seed):
    return f"results/poisons/{attack}/{grid.crafting_slot(config, attack, defense)}/{seed}.pt"
