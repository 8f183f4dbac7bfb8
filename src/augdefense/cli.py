"""Command line: one subcommand per workflow rule (``python -m augdefense <command> ...``).

Config slices arrive as JSON strings, exactly the values the rule's ``params:`` hold, so what a job
ran with is what Snakemake tracks. Errors a user can act on print one line, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from augdefense.config import parse_json_arg
from augdefense.errors import AugdefenseError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="augdefense", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-data", help="load a dataset source into uint8 tensors")
    p.add_argument("--spec", required=True, help="the config's 'data' entry as JSON")
    p.add_argument("--out", required=True)

    p = sub.add_parser("craft-poison", help="craft one attack's poison for one seed")
    p.add_argument("--data", required=True)
    p.add_argument("--attack", required=True, help="attack name")
    p.add_argument("--attack-spec", required=True, help="the attack's config entry as JSON")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--crafting-model", help="the trained model an optimisation-based attack crafts against")
    p.add_argument("--defense", default="none", help="the crafting model's defense (adaptive attacks)")
    p.add_argument("--defense-spec", default='{"type": "none"}', help="that defense's config entry as JSON")
    p.add_argument("--recipe", default="{}", help="the attack's training recipe as JSON (its crop and flip)")
    p.add_argument("--runtime", default="{}", help="the config's 'runtime' entry as JSON")
    p.add_argument("--threads", type=int, default=1)

    p = sub.add_parser("train-crafting-model", help="train the model an attack crafts against, on clean data")
    for arg in ("--data", "--defense", "--defense-spec", "--recipe", "--model", "--runtime", "--out"):
        p.add_argument(arg, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint")

    p = sub.add_parser("train-victim", help="train a victim on poisoned data under one defense")
    p.add_argument("--data", required=True)
    p.add_argument("--poison", required=True)
    p.add_argument("--attack", required=True)
    p.add_argument("--defense", required=True, help="defense name")
    p.add_argument("--defense-spec", required=True, help="the defense's config entry as JSON")
    p.add_argument("--recipe", required=True, help="the attack's training recipe as JSON")
    p.add_argument("--model", required=True, help="the config's 'model' entry as JSON")
    p.add_argument("--runtime", required=True, help="the config's 'runtime' entry as JSON")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint", help="scratch file for resumable training state (not an output)")
    p.add_argument("--sanitized", help="a filter defense's sanitize record (filter defenses only)")
    p.add_argument("--extractor", help="the pretrained extractor a transfer recipe fine-tunes")

    p = sub.add_parser("train-feature-model", help="train the filters' feature model (no defense) on poisoned data")
    for arg in ("--data", "--poison", "--attack", "--recipe", "--model", "--runtime", "--out"):
        p.add_argument(arg, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint")

    p.add_argument("--extractor")

    p = sub.add_parser("pretrain-extractor", help="pretrain a transfer recipe's feature extractor on its split")
    for arg in ("--data", "--recipe-name", "--pretrain-recipe", "--transfer", "--model", "--runtime", "--out"):
        p.add_argument(arg, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint")

    p = sub.add_parser("sanitize", help="run a filter defense on the feature model's features")
    for arg in ("--data", "--poison", "--feature-model", "--defense", "--defense-spec", "--runtime", "--out"):
        p.add_argument(arg, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)

    p = sub.add_parser("collect-metrics", help="gather run records into one CSV")
    p.add_argument("--out", required=True)
    p.add_argument("runs", nargs="+")

    for name in ("render-table", "render-figure"):
        p = sub.add_parser(name, help=f"{name.split('-')[1]} of one experiment")
        p.add_argument("--metrics", required=True)
        p.add_argument("--table", required=True, help="experiment name")
        p.add_argument("--experiment", required=True, help="the experiment's config entry as JSON")
        p.add_argument("--out", required=True, nargs=2, help="CSV and MD (table) or PNG and PDF (figure)")
        if name == "render-figure":
            p.add_argument("--defenses", default="{}", help="the experiment's defenses' config entries as JSON")

    p = sub.add_parser("render-illustrations", help="a poisoned training image and its augmented versions")
    p.add_argument("--data", required=True)
    p.add_argument("--poison", required=True)
    p.add_argument("--out", required=True, nargs=2, help="PNG and PDF")

    p = sub.add_parser("render-privacy-figure", help="DP-InstaHide Figure 4a: Theorem 2's epsilon against k")
    p.add_argument("--out", required=True, nargs=3, help="PNG, PDF and CSV")

    p = sub.add_parser("compare-papers", help="every reproduced cell beside the papers' value")
    p.add_argument("--metrics", required=True)
    p.add_argument("--experiments", required=True, help="the config's 'experiments' entry as JSON")
    p.add_argument("--out", required=True, nargs=2, help="CSV and MD")

    p = sub.add_parser("write-manifest", help="sha256 of every output")
    p.add_argument("--out", required=True)
    p.add_argument("files", nargs="+")

    p = sub.add_parser("check-manifest", help="exit 1 naming each output that no longer matches the manifest")
    p.add_argument("manifest", nargs="?", default="results/provenance/manifest.tsv")

    p = sub.add_parser("archive", help="bundle results, provenance and environment for reviewers")
    p.add_argument("--out", help="default: results/archive-<UTC timestamp>.tar.gz")
    return parser


# command -> (rule, input args, output args, config args, wildcard args): what its sidecars record.
PROVENANCE = {
    "prepare-data": ("prepare_data", [], ["out"], ["spec"], []),
    "craft-poison": ("craft_poison", ["data", "crafting_model"], ["out"],
                     ["attack_spec", "defense_spec", "recipe", "runtime"], ["attack", "defense", "seed"]),
    "train-crafting-model": ("train_crafting_model", ["data"], ["out"], ["defense_spec", "recipe", "model", "runtime"],
                             ["defense", "seed"]),
    "pretrain-extractor": ("pretrain_extractor", ["data"], ["out"], ["pretrain_recipe", "transfer", "model", "runtime"],
                           ["recipe_name"]),
    "train-victim": ("train_victim", ["data", "poison", "sanitized", "extractor"], ["out"],
                     ["defense_spec", "recipe", "model", "runtime"], ["attack", "defense", "seed"]),
    "train-feature-model": ("train_feature_model", ["data", "poison", "extractor"], ["out"], ["recipe", "model", "runtime"],
                            ["attack", "seed"]),
    "sanitize": ("sanitize", ["data", "poison", "feature_model"], ["out"], ["defense_spec", "runtime"],
                 ["defense", "seed"]),
    "collect-metrics": ("collect_metrics", ["runs"], ["out"], [], []),
    "render-table": ("render_tables", ["metrics"], ["out"], ["experiment"], ["table"]),
    "render-figure": ("render_figures", ["metrics"], ["out"], ["experiment", "defenses"], ["table"]),
    "render-illustrations": ("render_illustrations", ["data", "poison"], ["out"], [], []),
    "compare-papers": ("compare_papers", ["metrics"], ["out"], ["experiments"], []),
    "render-privacy-figure": ("render_privacy_figure", [], ["out"], [], []),
}


def _files(args: argparse.Namespace, names: list[str]) -> list[str]:
    values = [getattr(args, n) for n in names]
    return [str(v) for value in values if value for v in (value if isinstance(value, list) else [value])]


def record_provenance(args: argparse.Namespace, started: str) -> None:
    from augdefense import provenance

    rule, inputs, outputs, config, wildcards = PROVENANCE[args.command]
    provenance.write_sidecars(
        rule, {w: getattr(args, w) for w in wildcards}, _files(args, inputs), _files(args, outputs),
        {c: parse_json_arg(getattr(args, c), c) for c in config}, started, getattr(args, "seed", None))


REPORTING_COMMANDS = {"collect-metrics", "render-table", "render-figure", "render-illustrations",
                      "render-privacy-figure", "compare-papers"}


def run(args: argparse.Namespace) -> None:
    from augdefense import pipeline, provenance

    if args.command in REPORTING_COMMANDS:
        from augdefense import reporting  # pandas: only the reporting jobs pay for it

    if args.command == "prepare-data":
        pipeline.prepare_data(parse_json_arg(args.spec, "spec"), args.out)
    elif args.command == "craft-poison":
        pipeline.craft_poison(args.data, args.attack, parse_json_arg(args.attack_spec, "attack-spec"),
                              args.seed, args.out, args.crafting_model, args.defense,
                              parse_json_arg(args.defense_spec, "defense-spec"), parse_json_arg(args.recipe, "recipe"),
                              parse_json_arg(args.runtime, "runtime"), args.threads)
    elif args.command == "train-crafting-model":
        pipeline.train_crafting_model(
            args.data, args.defense, parse_json_arg(args.defense_spec, "defense-spec"),
            parse_json_arg(args.recipe, "recipe"), parse_json_arg(args.model, "model"),
            parse_json_arg(args.runtime, "runtime"), args.seed, args.threads, args.out, args.checkpoint)
    elif args.command == "train-victim":
        pipeline.train_victim(
            args.data, args.poison, args.attack, args.defense,
            parse_json_arg(args.defense_spec, "defense-spec"), parse_json_arg(args.recipe, "recipe"),
            parse_json_arg(args.model, "model"), parse_json_arg(args.runtime, "runtime"),
            args.seed, args.threads, args.out, args.checkpoint, args.sanitized, args.extractor)
    elif args.command == "train-feature-model":
        pipeline.train_feature_model(
            args.data, args.poison, args.attack, parse_json_arg(args.recipe, "recipe"),
            parse_json_arg(args.model, "model"), parse_json_arg(args.runtime, "runtime"), args.seed, args.threads,
            args.out, args.checkpoint, args.extractor)
    elif args.command == "pretrain-extractor":
        pipeline.pretrain_extractor(
            args.data, args.recipe_name, parse_json_arg(args.pretrain_recipe, "pretrain-recipe"),
            parse_json_arg(args.transfer, "transfer"), parse_json_arg(args.model, "model"),
            parse_json_arg(args.runtime, "runtime"), args.threads, args.out, args.checkpoint)
    elif args.command == "sanitize":
        pipeline.sanitize(args.data, args.poison, args.feature_model, args.defense,
                          parse_json_arg(args.defense_spec, "defense-spec"), parse_json_arg(args.runtime, "runtime"),
                          args.seed, args.threads, args.out)
    elif args.command == "collect-metrics":
        reporting.collect_metrics(args.runs, args.out)
    elif args.command == "render-table":
        reporting.render_table(args.metrics, args.table, parse_json_arg(args.experiment, "experiment"), *args.out)
    elif args.command == "render-figure":
        reporting.render_figure(args.metrics, args.table, parse_json_arg(args.experiment, "experiment"), *args.out,
                                defense_specs=parse_json_arg(args.defenses, "defenses"))
    elif args.command == "render-illustrations":
        reporting.render_illustrations(args.data, args.poison, *args.out)
    elif args.command == "render-privacy-figure":
        reporting.render_privacy_figure(*args.out)
    elif args.command == "compare-papers":
        reporting.compare_papers(args.metrics, parse_json_arg(args.experiments, "experiments"), *args.out)
    elif args.command == "write-manifest":
        provenance.write_manifest(args.files, args.out)
    elif args.command == "check-manifest":
        problems = provenance.check_manifest(args.manifest)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            raise SystemExit(1)
        print(f"{args.manifest}: every output matches")
    elif args.command == "archive":
        provenance.archive_results(args.out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from augdefense.provenance import now

    started = now()
    try:
        run(args)
        if args.command in PROVENANCE:
            record_provenance(args, started)
    except AugdefenseError as exc:
        print(f"augdefense {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
