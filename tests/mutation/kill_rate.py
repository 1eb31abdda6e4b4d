"""Kill rate per module of the last ``mutmut run`` (make mutation; docs/MUTATION.md).

Reads mutmut's results (``mutants/<file>.meta``) and the committed list of equivalent or irrelevant
mutants (``tests/mutation/equivalent_mutants.yaml``), prints one row per mutated module, and exits 1
when a surviving mutant is neither killed nor justified, or a module's kill rate is under the target.

    python tests/mutation/kill_rate.py [--mutants mutants] [--target 0.9]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
EQUIVALENT = HERE / "equivalent_mutants.yaml"
KILLED = {1, 3, 36, 37, 24, -24, 152, 255, -11, -9}  # test failure, pytest error, timeout, crash
SURVIVED = 0
NO_TESTS = {5, 33}
ROW = "{:40s} {:>6} {:>6} {:>6} {:>5} {:>5} {:>7}"


def load_justified(path: Path = EQUIVALENT) -> dict[str, dict]:
    """Mutant name -> its entry (module, mutation, reason) from the committed list."""
    entries = yaml.safe_load(path.read_text()) or []
    out = {}
    for entry in entries:
        missing = {"module", "mutant", "mutation", "reason"} - set(entry)
        if missing:
            raise ValueError(f"{path}: entry {entry} lacks {sorted(missing)}")
        out[entry["mutant"]] = entry
    return out


def module_results(mutants_dir: Path) -> dict[str, dict[str, int | None]]:
    """Source file (relative, e.g. training/metrics.py) -> {mutant name: exit code}."""
    out = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        module = meta.relative_to(mutants_dir).as_posix().removesuffix(".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            out[module] = codes
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mutants", type=Path, default=Path("mutants"), help="mutmut's work folder")
    parser.add_argument("--target", type=float, default=0.9, help="minimum kill rate per module")
    args = parser.parse_args(argv)

    justified = load_justified()
    results = module_results(args.mutants)
    if not results:
        print(f"no mutmut results under {args.mutants}/: run `make mutation` first", file=sys.stderr)
        return 2
    header = ROW.format("module", "total", "killed", "justif", "open", "unrun", "kill %")
    print(header)
    print("-" * len(header))
    bad, open_mutants = [], []
    totals = [0, 0, 0, 0, 0]
    for module, codes in results.items():
        killed = sum(code in KILLED for code in codes.values())
        unrun = sum(code is None for code in codes.values())
        escaped = [name for name, code in codes.items() if code == SURVIVED or code in NO_TESTS]
        just = [name for name in escaped if name in justified]
        still = [name for name in escaped if name not in justified]
        open_mutants += still
        total = len(codes)
        rate = killed / total
        row = [total, killed, len(just), len(still), unrun]
        totals = [a + b for a, b in zip(totals, row, strict=True)]
        print(ROW.format(module, *row, f"{100 * rate:.1f}%"))
        if rate < args.target or still or unrun:
            bad.append(module)
    total, killed, just, still, unrun = totals
    print("-" * len(header))
    print(ROW.format("all", *totals, f"{100 * killed / total:.1f}%"))
    stale = sorted(set(justified) - {n for codes in results.values() for n in codes})
    if stale:
        print(f"\n{len(stale)} justified mutant(s) no longer exist (the code moved): {', '.join(stale)}")
    if open_mutants:
        print(f"\n{len(open_mutants)} surviving mutant(s) neither killed nor justified (`mutmut show NAME`):")
        for name in open_mutants:
            print(f"  {name}")
    if bad:
        print(f"\nbelow the {args.target:.0%} target, open or unrun: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
