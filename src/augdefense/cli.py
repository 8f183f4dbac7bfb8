"""What a person runs by hand (``python -m augdefense <command>``); the workflow's jobs run through
``augdefense.runner`` instead. Errors a user can act on print one line, without a traceback.

    check-manifest [MANIFEST]      exit 1 naming each output that no longer matches the manifest
    archive [--out FILE]           bundle results, provenance, source and environment for reviewers
    rebuild [MANIFEST]             rebuild what an archive left out (large prepared data), and check it
    replay SIDECAR [--out-dir D]   run the job that wrote an output again, from its provenance record
    pack-evidence RUN DEST --preset P [--wall-seconds S]
                                   copy a finished run's claims, tables and metrics, checked against
                                   its manifest, with run.json (commit, date, machine, kernels, seeds)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from augdefense import provenance
from augdefense.errors import AugdefenseError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="augdefense", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-manifest", help="exit 1 naming each output that no longer matches the manifest")
    p.add_argument("manifest", nargs="?", default=provenance.MANIFEST)
    p = sub.add_parser("archive", help="bundle results, provenance, source and environment for reviewers")
    p.add_argument("--out", help="default: results/archive-<UTC timestamp>.tar.gz")
    p.add_argument(
        "--ship-data-up-to",
        type=float,
        default=provenance.SHIP_DATA_UP_TO_MB,
        metavar="MB",
        help="prepared data larger than this is left out, marked in the manifest with how to rebuild it",
    )
    p = sub.add_parser("rebuild", help="rebuild what an archive left out (large prepared data), and check it")
    p.add_argument("manifest", nargs="?", default=provenance.MANIFEST)
    p = sub.add_parser("replay", help="run the job that wrote an output again, from its sidecar (<output>.prov.json)")
    p.add_argument("sidecar")
    p.add_argument("--out-dir", default="scratch/replay", help="where the outputs go (same relative paths)")
    p = sub.add_parser("pack-evidence", help="copy a finished run's quotable results, checked, with run.json")
    p.add_argument("run_dir", help="the run's working directory (holding results/)")
    p.add_argument("dest", help="the evidence folder to write")
    p.add_argument("--preset", required=True, help="the config the run used (recorded)")
    p.add_argument("--wall-seconds", type=float, help="the workflow's wall time, measured around it")
    p.add_argument("--note", default="", help="what else ran on the machine meanwhile, and anything a reader needs")
    p.add_argument(
        "--render-claims",
        action="store_true",
        help="write the claims from the run's metrics with this checkout's code (a run older than the statistics)",
    )
    return parser


def pack_evidence(args: argparse.Namespace) -> int:
    from augdefense import evidence

    record = evidence.pack(
        args.run_dir,
        args.dest,
        preset=args.preset,
        wall_seconds=args.wall_seconds,
        note=args.note,
        render_claims=args.render_claims,
    )
    print(f"{args.dest}: {record['victim_runs']} runs of {record['preset']} at {record['commit']}, {record['cpu_isa']}")
    return 0


def check_manifest(args: argparse.Namespace) -> int:
    problems = provenance.check_manifest(args.manifest)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    left_out = provenance.not_archived(args.manifest)
    print(f"{args.manifest}: every output matches" + (" except those the archive left out:" if left_out else ""))
    for row in left_out:
        print(f"  {row.path} ({row.bytes} bytes, sha256 {row.sha256}): {row.note}")
    if left_out:
        print("  Rebuilt, each is checked against its sha256 here: run this check again.")
    return 0


def archive(args: argparse.Namespace) -> int:
    provenance.archive_results(args.out, args.ship_data_up_to)
    return 0


def rebuild(args: argparse.Namespace) -> int:
    from augdefense import runner

    rebuilt = runner.rebuild(args.manifest)
    for path in rebuilt:
        print(f"{path}: rebuilt, sha256 as in {args.manifest}")
    if not rebuilt:
        print(f"{args.manifest}: nothing to rebuild")
    return 0


def replay(args: argparse.Namespace) -> int:
    from augdefense import runner

    same = runner.replay(args.sidecar, args.out_dir)
    for output, identical in same.items():
        note = "" if identical else _json_difference(output, Path(args.out_dir) / output)
        print(
            f"{output}: {'byte-identical to' if identical else 'differs from'} the recorded output "
            f"(new file under {args.out_dir}){note}"
        )
    return 0


def _json_difference(old: str, new: Path) -> str:
    """For a JSON record: which keys differ (a rerun's timings always do)."""
    import json

    if not old.endswith(".json") or not new.is_file():
        return ""
    a, b = json.loads(Path(old).read_text()), json.loads(new.read_text())
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return f"; keys that differ: {', '.join(keys)}"


COMMANDS = {
    "check-manifest": check_manifest,
    "archive": archive,
    "rebuild": rebuild,
    "replay": replay,
    "pack-evidence": pack_evidence,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except AugdefenseError as exc:
        print(f"augdefense {args.command}: error: {exc}", file=sys.stderr)
        return 2
