import ast
import os
import re

from augdefense import codedeps, kernels, sources

CONDA_ENV = "../../envs/augdefense.yaml"
# Jobs import augdefense from this checkout, whether or not the package is installed in their
# environment (a conda env of the rule, a cluster node): they inherit this variable.
SRC_ROOT = Path(workflow.basedir) / "src"
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [str(SRC_ROOT), os.environ.get("PYTHONPATH")])))
# The CPU kernels' instruction set (runtime.cpu_isa): in the environment every job process and the
# warm worker start with, before a library that reads it loads (augdefense.kernels).
kernels.pin(config["runtime"]["cpu_isa"])
# Config slices as params: keys sorted (Snakemake's params trigger compares repr()), defaults filled
# in by the schema, so a job's params are exactly what it ran with.
spec = grid.canonical
THREADS = config["threads"]
RUNTIME = spec(config["runtime"])
MODEL = spec(config["model"])

DATASET = sources.dataset_name(config["data"])
PREPARED_DATA = grid.prepared_data_path(config["data"])
# Every dataset a job reads, by name: the victims' and any extractor's own (CIFAR-100 in config.yaml).
DATASETS = grid.datasets(config)
# The scale a result was computed at, for report captions and the tables themselves.
SCALE = f"dataset {DATASET}, model {config['model']['arch']}, seeds {config['seeds']}"


wildcard_constraints:
    attack=r"[A-Za-z0-9_\-]+",
    defense=r"[A-Za-z0-9_\-]+",
    slot=r"[A-Za-z0-9_\-]+",
    recipe=r"[A-Za-z0-9_\-]+",
    seed=r"\d+",
    pretraining=r"share[0-9.eE\-]+|data-[A-Za-z0-9_\-]+",
    dataset="|".join(re.escape(name) for name in DATASETS),
    table=r"[A-Za-z0-9_\-]+",


def code(module):
    """Package sources a rule's results depend on (the import closure of the module holding its
    function): inputs, so that editing one reruns the rule."""
    return codedeps.code_files(module)


# SLURM wall time of a training job, minutes: the recipe's epochs at MINUTES_PER_EPOCH (ResNet-18 on
# CIFAR-10 on one GPU, with room for mixup/maxup) plus start-up; each retry (--retries) doubles it.
# Local runs ignore it.
MINUTES_PER_EPOCH = 3


def recipe_runtime(recipe, attempt):
    return attempt * (15 + MINUTES_PER_EPOCH * config["recipes"][recipe]["epochs"])


def train_runtime(wildcards, attempt):
    return recipe_runtime(config["attacks"][wildcards.attack]["recipe"], attempt)


def profile_default(name):
    """A default resource this run was given (a profile's default-resources, or --default-resources),
    read as Snakemake reads one (a number, else a string); None when not given."""
    defaults = workflow.resource_settings.default_resources
    resource = defaults.get(name) if defaults is not None else None
    raw = getattr(resource, "raw", resource)
    try:
        return ast.literal_eval(raw) if isinstance(raw, str) else raw
    except (ValueError, SyntaxError):
        return raw


# What a GPU job asks for, declared once: the rules that train, craft or filter spread it into
# its resources (`resources: **GPU_JOB`). gpu=1: locally `--resources gpu=N` caps how many run at once;
# the SLURM plugin submits `--gpus=1`. On a cluster the profile's gpu_job_partition, gpu_job_mem_mb and
# gpu_job_model (profiles/slurm/config.yaml) become these jobs' slurm_partition, mem_mb and gpu_model;
# every other rule keeps the profile's own slurm_partition and mem_mb (the CPU partition).
GPU_JOB = {"gpu": 1} | {
    key: value
    for key, value in (
        ("slurm_partition", profile_default("gpu_job_partition")),
        ("mem_mb", profile_default("gpu_job_mem_mb")),
        ("gpu_model", profile_default("gpu_job_model")),
    )
    if value is not None
}


def attack_recipe(attack):
    return grid.recipe_of(config, attack)


def slot_defense(slot):
    """The defense a crafting model trains under: none, or (adaptive attacks) the victim's."""
    return {"type": "none"} if slot == grid.NO_DEFENSE_SLOT else config["defenses"][slot]


def checkpoint(*parts):
    """A training job's resumable state (scratch, not an output), named after its wildcards."""
    return lambda w: os.path.join("scratch", "checkpoints", *(w[p] for p in parts)) + ".pt"


# The workflow's paths (config.py writes them once; [] where a job has no such input).
def extractor_path(attack):
    return grid.extractor_path(config, attack) or []


def pretraining(recipe, key):
    """What extractor (recipe, key) pretrains on: {pretrain_share} or {pretrain_data}."""
    return grid.pretraining(config, recipe, key)


def pretraining_data(recipe, key):
    """The prepared dataset an extractor trains on: the victims' (offline fallback) or its own."""
    data = pretraining(recipe, key).get("pretrain_data")
    return PREPARED_DATA if data is None else grid.prepared_data_path(data)


def crafting_model_path(attack, slot, seed):
    return grid.crafting_model_path(config, attack, slot, seed) or []


def poison_path(attack, defense, seed):
    return grid.poison_path(config, attack, defense, seed)


def sanitized_path(attack, defense, seed):
    return grid.sanitized_path(config, attack, defense, seed) or []


def feature_model_path(attack, defense, seed):
    return grid.feature_model_path(config, attack, defense, seed)


def _workflow_outputs():
    """Every file the workflow produces (the manifest hashes them, and their sidecars)."""
    files = {*(grid.prepared_data_path(d) for d in DATASETS.values()), "results/metrics.csv", "results/paper_comparison.csv", "results/paper_comparison.md",
             "results/claims.csv", "results/claims.md",
             "results/figures/illustrations.png", "results/figures/illustrations.pdf",
             "results/figures/figure4a.png", "results/figures/figure4a.pdf", "results/figures/figure4a.csv"}
    for outputs in grid.compute_jobs(config).values():
        files |= set(outputs)
    for table in config["experiments"]:
        files |= {f"results/tables/{table}.{ext}" for ext in ("csv", "md")}
        files |= {f"results/figures/{table}.{ext}" for ext in ("png", "pdf")}
    return sorted(files)


WORKFLOW_OUTPUTS = _workflow_outputs()
_first = next(iter(config["experiments"].values()))
ILLUSTRATED_POISON = poison_path(_first["attacks"][0], _first["defenses"][0], grid.seeds(config)[0])
