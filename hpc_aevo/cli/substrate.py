"""`python -m hpc_aevo.substrate check DIR`: check a substrate against the contract before a campaign uses it.

One line per check (files, recipe, axes, train, eval, score): `ok`, `FAIL` with what is wrong and
where, or `skip` with why; exit code 0 only when none fails, 2 otherwise. The trainer and the
evaluator run on a scratch state tree, kept when a check fails (its logs say more) and removed
otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpc_aevo.loop.install import remove_tree
from hpc_aevo.loop.substrate_check import check_substrate, new_scratch

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "policy" / "initial.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hpc_aevo.substrate", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a substrate directory against the contract (substrate/README.md)")
    check.add_argument("substrate", type=Path, metavar="DIR")
    check.add_argument("--policy", type=Path, default=DEFAULT_POLICY, metavar="FILE",
                       help="the initial policy whose active axes the recipe must have keys for (default: %(default)s)")
    check.add_argument("--split-file", type=Path, default=None, metavar="S",
                       help="a held-out JSONL split to score the selected checkpoint on (default: the heldout-puzzles "
                            "split, drawn from the substrate's puzzles.py; without one the score check is skipped)")
    check.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                       help="time limit of each stage: train, eval, score (default: %(default)s)")
    check.add_argument("--scratch", type=Path, default=None, metavar="DIR",
                       help="where the scratch state tree goes, kept afterwards (default: a new temp dir, removed "
                            "when every check passes)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.split_file is not None and not args.split_file.is_file():
        print(f"--split-file {args.split_file}: no such file", file=sys.stderr)
        return 2
    scratch = args.scratch if args.scratch is not None else new_scratch()
    failed = False
    for line in check_substrate(args.substrate, args.policy, scratch, args.split_file, args.timeout):
        print(line.render(), flush=True)
        failed = failed or line.status == "FAIL"
    if args.scratch is None and (not failed or not any(scratch.iterdir())):
        remove_tree(scratch)
    else:
        print(f"scratch state tree (logs, checkpoints): {scratch}")
    return 2 if failed else 0
