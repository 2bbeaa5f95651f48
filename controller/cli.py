"""The `bluegreen` command: run the proxy, run the demo, and operate on a config file."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from kubernetes_asyncio.config import ConfigException

from controller.cluster_ops import OperationError, read_status, switch_colour
from controller.config import ConfigError
from controller.demo import DemoPorts, run_demo
from controller.file_source import load_config_file, write_active
from controller.kube import ConfigMapRef, KubeError
from controller.leader import LeaseSettings
from controller.process import ConfigMapSpec, Endpoint, ProxyProcess, ShutdownSettings
from controller.tuning import raise_open_file_limit, run_event_loop, tune_malloc

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _version() -> str:
    try:
        return version("bluegreen")
    except PackageNotFoundError:
        return "unknown"


def _endpoint(text: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _configmap(text: str) -> ConfigMapRef:
    try:
        return ConfigMapRef.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="local YAML config file")
    source.add_argument(
        "--configmap", type=_configmap, metavar="NAMESPACE/NAME", help="ConfigMap in a cluster"
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig file (default: in-cluster in a pod, else the current context)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bluegreen", description="Blue-green traffic switch: a proxy that routes by colour."
    )
    parser.add_argument("--version", action="version", version=f"bluegreen {_version()}")
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="serve the proxy from a config file or a ConfigMap")
    _add_source_arguments(run)
    run.add_argument("--listen", type=_endpoint, default=Endpoint("0.0.0.0", 8080))
    run.add_argument("--admin-listen", type=_endpoint, default=Endpoint("0.0.0.0", 9090))
    run.add_argument(
        "--lease-duration",
        type=int,
        default=15,
        help="with --configmap: seconds a leader's Lease lasts without renewal",
    )
    run.add_argument("--lease-renew-deadline", type=int, default=10)
    run.add_argument("--lease-retry-period", type=int, default=2)
    run.add_argument(
        "--shutdown-delay",
        type=float,
        default=0.0,
        help="seconds between failing /readyz and closing the listener on SIGTERM",
    )
    run.add_argument(
        "--shutdown-grace",
        type=float,
        default=25.0,
        help="seconds in-flight requests get to finish on SIGTERM",
    )

    demo = sub.add_parser("demo", help="run two colour apps and the proxy locally")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080, help="proxy port")
    demo.add_argument("--admin-port", type=int, default=9090)
    demo.add_argument("--blue-port", type=int, default=8081)
    demo.add_argument("--green-port", type=int, default=8082)
    demo.add_argument("--workdir", type=Path, help="where to write the demo config")

    validate = sub.add_parser("validate", help="check a config file without applying it")
    validate.add_argument("file", type=Path)

    switch = sub.add_parser("switch", help="make COLOUR the active colour")
    switch.add_argument("colour")
    _add_source_arguments(switch)

    rollback = sub.add_parser("rollback", help="switch back to the previous colour (ConfigMap)")
    _add_source_arguments(rollback)

    status = sub.add_parser("status", help="show the active colour and upstreams")
    _add_source_arguments(status)
    status.add_argument(
        "--admin",
        help="admin URL of a running proxy (e.g. 127.0.0.1:9090; http:// when no scheme)",
    )
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Serve the proxy until SIGTERM."""
    tune_malloc()
    raise_open_file_limit()
    lease = LeaseSettings(args.lease_duration, args.lease_renew_deadline, args.lease_retry_period)
    source = args.config or ConfigMapSpec(args.configmap, args.kubeconfig, lease)
    process = ProxyProcess(
        source,
        args.listen,
        args.admin_listen,
        ShutdownSettings(delay=args.shutdown_delay, grace=args.shutdown_grace),
    )
    try:
        run_event_loop(process.run())
    except ConfigError as error:
        print(f"bluegreen: cannot start, {args.config} is invalid:\n{error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"bluegreen: cannot start: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the local demo until Ctrl-C."""
    tune_malloc()
    ports = DemoPorts(args.host, args.port, args.admin_port, args.blue_port, args.green_port)
    try:
        run_event_loop(run_demo(ports, args.workdir))
    except OSError as error:
        print(
            f"bluegreen demo: cannot start: {error}\n"
            "A port is probably in use: pick others with --port, --admin-port, --blue-port, "
            "--green-port.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Check a config file whole and say what is wrong."""
    try:
        config = load_config_file(args.file)
    except ConfigError as error:
        print(f"{args.file}: invalid\n{error}", file=sys.stderr)
        return EXIT_USAGE
    colours = ", ".join(config.upstreams)
    print(f"{args.file}: valid (active={config.active}, colours: {colours})")
    return EXIT_OK


def _cluster_switch(args: argparse.Namespace, colour: str | None, reason: str) -> int:
    try:
        result = run_event_loop(
            switch_colour(args.configmap, args.kubeconfig, colour, reason=reason)
        )
    except OperationError as error:
        print(f"bluegreen: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (KubeError, OSError, ConfigException) as error:
        print(f"bluegreen: cannot reach ConfigMap {args.configmap}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not result.changed:
        print(f"{result.current} is already active; nothing changed")
    else:
        print(
            f"switched {result.previous} -> {result.current} in ConfigMap {args.configmap} "
            f"(resourceVersion {result.resource_version})"
        )
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    """Switch back to the colour recorded as previous in the ConfigMap."""
    if args.configmap is None:
        print(
            "bluegreen: rollback reads the previous colour from the ConfigMap's annotations; "
            "with a local file, run `bluegreen switch COLOUR --config FILE`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return _cluster_switch(args, None, "rollback: manual")


def cmd_switch(args: argparse.Namespace) -> int:
    """Rewrite `active` in the config file or the ConfigMap."""
    if args.configmap is not None:
        return _cluster_switch(args, args.colour, "manual")
    try:
        previous, current = write_active(args.config, args.colour)
    except ConfigError as error:
        print(f"bluegreen: switch refused, nothing written:\n{error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        print(f"bluegreen: cannot write {args.config}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if previous == current:
        print(f"{current} is already active; nothing changed")
    else:
        print(f"switched {previous} -> {current} in {args.config}")
    return EXIT_OK


def admin_url(admin: str) -> str:
    """Return the admin base URL; `HOST:PORT` without a scheme means http, as kubectl's --server."""
    return admin if "://" in admin else f"http://{admin}"


def _fetch_status(admin: str) -> dict[str, Any]:
    url = admin_url(admin).rstrip("/") + "/status?format=json"
    with urllib.request.urlopen(url, timeout=5) as response:
        document: dict[str, Any] = json.load(response)
    return document


def _cluster_status(args: argparse.Namespace) -> int:
    try:
        document = run_event_loop(read_status(args.configmap, args.kubeconfig))
    except (KubeError, OSError, ConfigException) as error:
        print(f"bluegreen: cannot read ConfigMap {args.configmap}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if not _add_running(args, document):
        return EXIT_FAILED
    if args.output == "json":
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(f"configmap     {document['configmap']} (resourceVersion {document['config_version']})")
    print(f"active        {document['active']}")
    for colour, url in document["upstreams"].items():
        print(f"  {colour:<12}{url}")
    if not document["valid"]:
        print(f"INVALID: the proxies keep their last good config.\n{document['error']}")
    for record in document["switches"][:5]:
        print(
            f"  {record.get('at')}  {record.get('from')} -> {record.get('to')}  "
            f"({record.get('reason')}, by {record.get('by')})"
        )
    for event in document["events"][-5:]:
        print(f"  event {event['at']} {event['reason']}: {event['message']}")
    _print_running(document.get("running"))
    return EXIT_OK


def _add_running(args: argparse.Namespace, document: dict[str, Any]) -> bool:
    """With --admin, add the running proxy's /status as `running`; False when unreachable."""
    if not args.admin:
        return True
    try:
        document["running"] = _fetch_status(args.admin)
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"bluegreen: cannot read {args.admin}: {error}", file=sys.stderr)
        return False
    return True


def _print_running(running: dict[str, Any] | None) -> None:
    """Print what one running proxy reports: its colour, health per colour, last switches."""
    if running is None:
        return
    print(f"running proxy active={running['active']} version={running['config_version']}")
    for colour, detail in running.get("colours", {}).items():
        why = f" ({detail['health_error']})" if detail.get("health_error") else ""
        print(f"  {colour:<12}health {detail.get('health', 'unknown')}{why}")
    if running.get("last_error"):
        print(f"last rejected config: {running['last_error']}")
    for record in running.get("switches", [])[:5]:
        print(f"  {record['at']}  {record['from']} -> {record['to']}  ({record['reason']})")


def cmd_status(args: argparse.Namespace) -> int:
    """Show the config's state (file or ConfigMap) and, with --admin, the running proxy's."""
    if args.configmap is not None:
        return _cluster_status(args)
    try:
        config = load_config_file(args.config)
    except ConfigError as error:
        print(f"{args.config}: invalid\n{error}", file=sys.stderr)
        return EXIT_USAGE
    document: dict[str, Any] = {
        "config": str(args.config),
        "active": config.active,
        "upstreams": dict(config.upstreams),
    }
    if not _add_running(args, document):
        return EXIT_FAILED
    if args.output == "json":
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(f"config file   {args.config}")
    print(f"active        {config.active}")
    for colour, url in config.upstreams.items():
        print(f"  {colour:<12}{url}")
    _print_running(document.get("running"))
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "validate": cmd_validate,
    "switch": cmd_switch,
    "rollback": cmd_rollback,
    "status": cmd_status,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bluegreen` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
