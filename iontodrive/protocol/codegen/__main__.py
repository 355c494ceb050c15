"""``python -m iontodrive.protocol.codegen [--out DIR] [--check]``: write or check the generated C codec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .generate import GENERATED_DIR, check, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m iontodrive.protocol.codegen",
        description="Generate the C99 codec of the iontodrive wire protocol from its Python definitions.",
    )
    parser.add_argument("--out", type=Path, default=GENERATED_DIR, help=f"output directory ({GENERATED_DIR})")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the files in --out are stale or missing",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("regenerate with: python -m iontodrive.protocol.codegen", file=sys.stderr)
            return 1
        print(f"generated C in {args.out} is current")
        return 0
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
