"""Per-module mutation scores of the last `mutmut run` (``make mutation``): killed (or timed out)
mutants over all mutants, "no tests" counted as survivors. Prints a markdown table.

    .venv/bin/python tests/mutation_scores.py
"""

import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255}  # a failing test run, or a timeout (mutmut's own reading)


def main(root: Path = Path("mutants/src")) -> int:
    metas = sorted(root.rglob("*.py.meta"))
    if not metas:
        print("no mutmut results under mutants/: run `make mutation` first", file=sys.stderr)
        return 1
    print("| module | mutants | killed | survived | no test ran | score |\n|---|---|---|---|---|---|")
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        count = Counter(
            "killed" if c in KILLED else "survived" if c == 0 else "no tests" if c in (5, 33) else "other"
            for c in codes.values()
        )
        module = meta.relative_to(root).as_posix()[: -len(".meta")]
        print(
            f"| {module} | {len(codes)} | {count['killed']} | {count['survived']} | {count['no tests']} | "
            f"{100 * count['killed'] / len(codes):.0f}% |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
