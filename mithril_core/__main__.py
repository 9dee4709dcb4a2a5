"""Command line: ``python -m mithril_core demo|ops|plugins``."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args else "demo"
    if command == "demo":
        from mithril_core.demo import main as demo

        return demo(args)
    print(f"unknown command {command!r}; use: demo", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
