"""The ``kvferry`` command."""

from __future__ import annotations

import argparse
import os
import sys

from kvferry.server import config as config_mod


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvferry", allow_abbrev=False,
        description="kvferry: a transfer coordinator for windowed embedding transfers between "
                    "encoder and language workers.",
        epilog="`kvferry COMMAND --help` explains each command's flags (for serve, each flag "
               "is also a KVFERRY_* environment variable).")
    parser.add_argument("--version", action="version", version=f"kvferry {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="run the gRPC server over a block pool", allow_abbrev=False,
        description="Run the gRPC server. Every flag can also be set by the environment variable "
                    "named after it (KVFERRY_<FLAG>, e.g. KVFERRY_NUM_BLOCKS); a flag wins over "
                    "its variable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    config_mod.add_arguments(serve)
    for name, help_ in (("status", "print pool usage, transfers by state and the oldest live "
                                   "transfers of a running server"),
                        ("top", "the same as status, refreshed live")):
        p = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                           allow_abbrev=False)
        p.add_argument("--target", default=os.environ.get("KVFERRY_TARGET", "127.0.0.1:50051"),
                       help="host:port of the server (default: %(default)s; env KVFERRY_TARGET)")
        p.add_argument("--token-file", default=os.environ.get("KVFERRY_TOKEN_FILE", ""),
                       help="file holding the server's bearer token: its admin token when it has one "
                            "(--admin-token-file) (env KVFERRY_TOKEN_FILE)")
        p.add_argument("--tls-ca", default="", help="PEM CA bundle: connect over TLS")
        p.add_argument("--tls-cert", default="", help="PEM client certificate (mTLS)")
        p.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
        p.add_argument("--oldest", type=int, default=10 if name == "status" else 20,
                       help="how many of the oldest live transfers to list (default: %(default)s)")
        if name == "top":
            p.add_argument("--interval", type=float, default=1.0,
                           help="seconds between refreshes (default: %(default)s)")
            p.add_argument("--iterations", type=int, default=0,
                           help="stop after this many refreshes (default: 0, until Ctrl-C)")
    diagram = sub.add_parser(
        "diagram", help="print the transfer state machine as Mermaid", allow_abbrev=False,
        description="Print the state machine, generated from the core's transition table.")
    diagram.add_argument("--doc", action="store_true",
                         help="print the whole docs/state-machine.md instead")
    parser.commands = sub.choices  # type: ignore[attr-defined]
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's own parser, with its own usage line
        commands: dict[str, argparse.ArgumentParser] = parser.commands  # type: ignore[attr-defined]
        commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "serve":
        return _serve(args)
    if args.command in ("status", "top"):
        return _console(args)
    if args.command == "diagram":
        from kvferry.statemachine import diagram as diagram_mod
        print(diagram_mod.state_machine_doc() if args.doc else diagram_mod.mermaid(), end="")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Run the server; every start-up failure is one line, ``kvferry serve: what: what to do``,
    and exit status 2."""
    from kvferry.server.app import StartupError, run
    from kvferry.server.storage import PoolUnavailable

    def fail(what: str) -> int:
        print(f"kvferry serve: {what}", file=sys.stderr)
        return 2

    try:
        cfg = config_mod.from_namespace(args)
    except ValueError as e:
        return fail(f"{e}; see kvferry serve --help")
    try:
        for path in (cfg.auth_token_file, cfg.admin_token_file, cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca):
            if path and not os.path.isfile(path):
                return fail(f"{path}: no such file: give the path of an existing file")
        cfg.read_auth_token()
        cfg.read_admin_token()
        return run(cfg)
    except StartupError as e:
        return fail(str(e))
    except PoolUnavailable as e:
        return fail(f"the block pool cannot be made: {e}")
    except (OSError, ValueError) as e:
        return fail(config_mod.flag_names(str(e)))


def _version() -> str:
    from kvferry.server.app import version

    return version()


def _console(args: argparse.Namespace) -> int:
    import grpc

    from kvferry.client import Client, console

    def read(path: str) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    token = (read(args.token_file) or b"").decode().strip() or None
    creds = None
    if args.tls_ca or args.tls_cert:
        creds = grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert))
    try:
        with Client(args.target, token=token, credentials=creds) as client:
            if args.command == "status":
                console.status(client, args.target, args.oldest)
            else:
                console.top(client, args.target, args.interval, args.iterations, args.oldest)
    except grpc.RpcError as e:
        print(f"kvferry {args.command}: {args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
