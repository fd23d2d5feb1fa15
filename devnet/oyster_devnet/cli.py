"""``oyster-devnet``: the development tools' command line (the demo for now)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oyster-devnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run the demo: a local chain, the daemon and real jobs")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from oyster_devnet.demo import main as demo_main

        return demo_main()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
