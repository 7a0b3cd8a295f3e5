"""The ``kvferry`` command."""

from __future__ import annotations

import argparse
import sys

from kvferry.server import config as config_mod


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvferry",
        description="kvferry: a transfer coordinator for windowed embedding transfers between "
                    "encoder and language workers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="run the gRPC server over a block pool",
        description="Run the gRPC server. Every flag can also be set by the environment variable "
                    "named after it (KVFERRY_<FLAG>, e.g. KVFERRY_NUM_BLOCKS); a flag wins over "
                    "its variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    config_mod.add_arguments(serve)
    diagram = sub.add_parser(
        "diagram", help="print the transfer state machine as Mermaid",
        description="Print the state machine, generated from the core's transition table.")
    diagram.add_argument("--doc", action="store_true",
                         help="print the whole docs/state-machine.md instead")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        from kvferry.server.app import run
        from kvferry.server.pool import PoolUnavailable
        try:
            cfg = config_mod.from_namespace(args)
        except ValueError as e:
            parser.error(str(e))
        try:
            return run(cfg)
        except (PoolUnavailable, OSError, ValueError) as e:
            print(f"kvferry: {e}", file=sys.stderr)
            return 2
    if args.command == "diagram":
        from kvferry.statemachine import diagram as diagram_mod
        print(diagram_mod.state_machine_doc() if args.doc else diagram_mod.mermaid(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
