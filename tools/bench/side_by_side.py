#!/usr/bin/env python3
"""Medusa's harness and gorgon-bench in one run on this machine, and the ratio table.

    python3 tools/bench/side_by_side.py [--quick] [--medusa-dir DIR] [--keep-json DIR]

Runs `node bench.mjs` (Medusa's workflows-sdk, in memory) first, then `gorgon-bench` (built with
the workspace's `production` profile, release with fat LTO, if it is not yet), one after the
other so neither measures the other's load, and
prints a Markdown table: wf/s of both per (shape, mode), their ratio, and each engine's per-step
cost of `seq100` over `seq10`'s.

`--quick` checks that both harnesses run; its figures are not the comparison: with a tenth of
the workflows neither engine is warm (V8 has not optimised Medusa's code, and Gorgon's memory
store has not yet reached the 256 finished runs it keeps).

`shared/bench/medusa` may be read-only: it is copied to `--medusa-dir` (default
`$TMPDIR/gorgon-side-by-side/medusa`) and `npm ci` runs there once.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED_MEDUSA = ROOT.parent / "shared" / "bench" / "medusa"


def medusa_dir(target: Path) -> Path:
    """A writable copy of Medusa's harness with its dependencies installed."""
    if not (target / "bench.mjs").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(SHARED_MEDUSA, target, dirs_exist_ok=True)
    if not (target / "node_modules").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=target, check=True)
    return target


def json_lines(command, cwd) -> list:
    """Runs `command` and returns the JSON objects it printed, a line each."""
    print("running:", " ".join(map(str, command)), file=sys.stderr, flush=True)
    out = subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def by_cell(lines) -> dict:
    return {(line["shape"], line["mode"]): line for line in lines}


def per_step_growth(cells) -> dict:
    """Per mode: seq100's cost per step over seq10's (1.0: a step costs the same)."""
    growth = {}
    for mode in ("serial", "concurrent"):
        short, long = cells.get(("seq10", mode)), cells.get(("seq100", mode))
        if short and long:
            growth[mode] = (short["wf_per_s"] * 10) / (long["wf_per_s"] * 100)
    return growth


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer workflows per cell (a smoke test, not figures to compare)")
    parser.add_argument(
        "--medusa-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gorgon-side-by-side" / "medusa",
        help="where the writable copy of shared/bench/medusa goes",
    )
    parser.add_argument("--keep-json", type=Path, help="also write both engines' JSON lines here")
    args = parser.parse_args()

    quick = ["--quick"] if args.quick else []
    medusa = by_cell(json_lines(["node", "bench.mjs", *quick], medusa_dir(args.medusa_dir)))
    subprocess.run(
        ["cargo", "build", "--profile", "production", "-q", "-p", "gorgon-bench"],
        cwd=ROOT,
        check=True,
    )
    gorgon = by_cell(json_lines([ROOT / "target" / "production" / "gorgon-bench", *quick], ROOT))

    if args.keep_json:
        args.keep_json.mkdir(parents=True, exist_ok=True)
        for name, cells in (("medusa", medusa), ("gorgon", gorgon)):
            with open(args.keep_json / f"{name}.jsonl", "w") as out:
                for line in cells.values():
                    out.write(json.dumps(line) + "\n")

    print("| shape | mode | Medusa wf/s | Gorgon wf/s | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for key, theirs in medusa.items():
        ours = gorgon.get(key)
        if ours is None:
            continue
        ratio = ours["wf_per_s"] / theirs["wf_per_s"]
        print(f"| {key[0]} | {key[1]} | {theirs['wf_per_s']:,.1f} | {ours['wf_per_s']:,.1f} "
              f"| {ratio:,.1f}x |")
    print()
    for name, cells in (("Medusa", medusa), ("Gorgon", gorgon)):
        growth = ", ".join(f"{mode} {g:.2f}x" for mode, g in per_step_growth(cells).items())
        print(f"{name}: per-step cost of seq100 over seq10's: {growth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
