"""The `naiad` command: `naiad serve` runs the server, `naiad validate PATH` checks a repository."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from naiad.batching.instances import Worker
from naiad.clients import cli as client_cli
from naiad.daemon import VERSION, event_loop, logs, repository
from naiad.daemon.frontends import default_count
from naiad.daemon.registry import MODES, read_model
from naiad.daemon.server import serve
from naiad.daemon.settings import Settings

log = logging.getLogger("naiad")


def _flag_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _whole_number(minimum: int):
    """An argparse type: a whole number >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got '{text}'")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got '{text}'")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="naiad", description="A model server that speaks Triton's "
                                     "protocol over gRPC and HTTP.")
    parser.add_argument("--version", action="version", version=f"naiad {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model repository")
    d = Settings()
    serve.add_argument("--model-repository", type=Path, default=d.model_repository,
                       help="the folder of models (default: %(default)s)")
    serve.add_argument("--model-control-mode", choices=MODES, default=d.model_control_mode,
                       help="none: load all at start; poll: also follow changes on disk; explicit: "
                            "load only --load-model and what the repository API asks for")
    serve.add_argument("--load-model", action="append", default=[], metavar="NAME",
                       help="in explicit mode, a model to load at start (repeatable; * for all)")
    serve.add_argument("--repository-poll-secs", type=float, default=d.repository_poll_secs,
                       help="in poll mode, seconds between looks at the repository")
    serve.add_argument("--http-address", default=d.http_address)
    serve.add_argument("--http-port", type=int, default=d.http_port)
    serve.add_argument("--grpc-address", default=d.grpc_address)
    serve.add_argument("--grpc-port", type=int, default=d.grpc_port)
    serve.add_argument("--metrics-address", default=d.metrics_address)
    serve.add_argument("--metrics-port", type=int, default=d.metrics_port,
                       help="Prometheus metrics at /metrics on this port")
    serve.add_argument("--allow-http", type=_flag_bool, default=d.allow_http, metavar="BOOL")
    serve.add_argument("--allow-grpc", type=_flag_bool, default=d.allow_grpc, metavar="BOOL")
    serve.add_argument("--allow-metrics", type=_flag_bool, default=d.allow_metrics, metavar="BOOL")
    serve.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes,
                       help="gRPC: the largest request message taken")
    serve.add_argument("--http-max-input-size", type=_whole_number(1), default=d.http_max_input_size,
                       metavar="BYTES", help="HTTP: the largest request body taken, as sent and once "
                       "decompressed (default: %(default)s, 64 MiB)")
    serve.add_argument("--http-max-json-elements", type=_whole_number(1), default=d.http_max_json_elements,
                       metavar="N", help="HTTP: the most values a request's JSON may hold; larger tensors "
                       "go as binary data (default: %(default)s)")
    serve.add_argument("--http-idle-timeout-secs", type=_seconds, default=d.http_idle_timeout_secs,
                       metavar="SECONDS",
                       help="HTTP: a connection with no request in progress is closed after this long "
                       "(default: %(default)s)")
    serve.add_argument("--http-body-timeout-secs", type=_seconds, default=d.http_body_timeout_secs,
                       metavar="SECONDS",
                       help="HTTP: once its headers are in, how long a request's body may take to arrive "
                       "(default: %(default)s)")
    serve.add_argument("--exit-timeout-secs", type=float, default=d.exit_timeout_secs,
                       help="at shutdown, how long requests in flight may take to finish")
    serve.add_argument("--allow-client-shm", type=_flag_bool, default=d.allow_client_shm, metavar="BOOL",
                       help="let clients register system and CUDA shared-memory regions for tensors "
                            "(off by default: a region gives the client's tensors access to this "
                            "server's memory maps; turn it on for clients on this host you trust)")
    serve.add_argument("--frontends", type=_whole_number(1), default=default_count(), metavar="N",
                       help="processes that share the gRPC and HTTP ports and do the wire work; 1 serves "
                            "them from the server's own process (default: one for every two cores, "
                            "at most 8; 1 on two cores or fewer: %(default)s here)")
    serve.add_argument("--busy-poll-us", type=_whole_number(0), default=d.busy_poll_us, metavar="US",
                       help="with --frontends N > 1: how long each process polls for its next message "
                            "before it sleeps, in microseconds; 0: never (default: 1000 where each process "
                            "has a core of its own with one to spare, else 0)")
    serve.add_argument("--strict-readiness", type=_flag_bool, default=d.strict_readiness, metavar="BOOL",
                       help="true: ready only while every model that should be loaded serves; false: "
                            "ready once the models of the start have been tried (default: %(default)s)")
    serve.add_argument("--log-verbose", type=_whole_number(0), default=d.log_verbose, metavar="LEVEL",
                       help="0: info and above; 1 or more: debug lines too, one per request among them")
    serve.add_argument("--log-format", choices=logs.FORMATS, default=d.log_format,
                       help="text lines, or one JSON object per line (default: %(default)s)")
    serve.add_argument("--log-info", type=_flag_bool, default=d.log_info, metavar="BOOL")
    serve.add_argument("--log-warning", type=_flag_bool, default=d.log_warning, metavar="BOOL")
    serve.add_argument("--log-error", type=_flag_bool, default=d.log_error, metavar="BOOL")

    validate = commands.add_parser("validate", help="check a model repository without serving it")
    validate.add_argument("path", type=Path)
    client_cli.add_commands(commands)   # infer, models, perf: naiad's client (clients/cli.py)
    return parser


def _validate(path: Path) -> int:
    """Print every problem of every model; exit status 1 when there is any."""
    if not path.is_dir():
        print(f"{path}: not a folder")
        return 1
    names = repository.model_names(path)
    problems = 0
    for name in names:
        try:
            prepared = read_model(path / name, name)
        except Exception as e:
            found = getattr(e, "problems", None) or [str(e)]
            problems += len(found)
            for problem in found:
                print(f"{name}: {problem}")
        else:
            versions = ", ".join(str(v) for v in prepared.versions)
            print(f"{name}: ok (backend {prepared.config.backend}, version {versions})")
    print(f"{len(names)} model(s), {problems} problem(s)")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.path)
    if args.command in client_cli.COMMANDS:
        return client_cli.run(args)
    logs.setup(logs.LogSettings(format=args.log_format, verbose=args.log_verbose, info=args.log_info,
                                warning=args.log_warning, error=args.log_error))
    settings = Settings(**{k: v for k, v in vars(args).items() if k != "command"})
    try:
        spin = event_loop.spin_seconds(settings.frontends, settings.busy_poll_us)
        # no polling while instances run on threads of the server's process (the GIL)
        event_loop.run(serve(settings), lambda: 0.0 if Worker.alive else spin)
    except OSError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
