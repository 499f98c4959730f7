"""``python -m bench``: list the suites; ``python -m bench SUITE [args]`` runs one."""

from __future__ import annotations

import sys

from bench.suites import SUITES, describe, run_suite


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(describe())
        return 0
    if argv[0] not in SUITES:
        print(f"unknown suite {argv[0]!r}\n\n{describe()}", file=sys.stderr)
        return 2
    run_suite(argv[0], argv[1:], prog=f"python -m bench.{argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
