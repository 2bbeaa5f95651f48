"""The `bluegreen` command: run the proxy, run the demo, and operate on a config file."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import shtab

from controller import log_format
from controller.build import BuildInfo
from controller.cluster_ops import (
    ADMIN_SERVICE,
    OperationError,
    SwitchResult,
    read_status,
    switch_colour,
    wait_configmap_switch,
    wait_file_switch,
)
from controller.config import ConfigError
from controller.demo import DemoPorts, run_demo
from controller.file_source import load_config_file, write_active
from controller.kube import ConfigMapRef, KubeError
from controller.kubeconfig import ClusterAccess, KubeconfigError, context_namespace
from controller.leader import LeaseSettings
from controller.process import ConfigMapSpec, Endpoint, ProxyProcess, ShutdownSettings
from controller.status_report import (
    EXIT_DIVERGED,
    EXIT_INVALID,
    OUTPUTS,
    exit_code,
    render,
    with_served,
)
from controller.tuning import raise_open_file_limit, run_event_loop, tune_malloc
from controller.validate import validate_stream
from controller.values import parse_duration

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _VersionAction(argparse.Action):
    """`--version`: the build identity, looked up only when asked for (it imports the proxy)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and build; exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        """Print the version line and exit."""
        print(BuildInfo.current().describe())
        parser.exit()


def _endpoint(text: str) -> Endpoint:
    try:
        return Endpoint.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


class _Help(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (when it has one), and examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default in (None, False, argparse.SUPPRESS)
            or "default" in text
            or action.option_strings == []
        ):
            return text
        return f"{text} (default: %(default)s)"


def _configmap(text: str) -> ConfigMapRef | str:
    """NAMESPACE/NAME is parsed at once; a bare NAME waits for -n and the kubeconfig."""
    if "/" not in text:
        return text
    try:
        return ConfigMapRef.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


SOURCE_EXAMPLES = """
A ConfigMap is NAME in the namespace of -n, else of the kubeconfig context (like kubectl), or
NAMESPACE/NAME. A local file is --config FILE.
"""


def _add_source_arguments(parser: argparse.ArgumentParser, *, context: bool = True) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, metavar="FILE", help="local YAML config file")
    source.add_argument(
        "--configmap",
        type=_configmap,
        metavar="[NAMESPACE/]NAME",
        help="the ConfigMap in a cluster",
    )
    parser.add_argument(
        "-n",
        "--namespace",
        help="namespace of --configmap NAME (default: the kubeconfig context's namespace)",
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config; in a pod, in-cluster)",
    )
    if context:
        parser.add_argument("--context", help="kubeconfig context (default: the current context)")


def _add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="wait until every ready replica serves the colour; exit non-zero with the reason "
        "when the switch is refused, rolled back or not served within --timeout",
    )
    parser.add_argument(
        "--timeout", type=_duration, default="30s", help="how long --wait waits, e.g. 1m"
    )
    parser.add_argument(
        "--admin",
        action="append",
        metavar="URL",
        help="with --wait: a replica's admin URL to read /status from (repeatable; default "
        "with --configmap: every ready pod behind --admin-service, through the API server)",
    )
    parser.add_argument(
        "--admin-service",
        default=ADMIN_SERVICE,
        metavar="NAME",
        help="with --wait and --configmap: the Service in front of the replicas' admin port",
    )


def _sub(
    sub: Any, name: str, summary: str, examples: str = "", **kwargs: Any
) -> argparse.ArgumentParser:
    epilog = f"examples:\n{examples}" if examples else None
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=_Help,
        **kwargs,
    )
    return parser


def build_parser(prog: str = "bluegreen") -> argparse.ArgumentParser:
    """Build the argument parser for every subcommand (`prog` is how the user typed it)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Blue-green traffic switch: a proxy that routes by colour.",
        epilog=(
            f"examples:\n  {prog} demo\n  {prog} status --configmap bluegreen -n shop\n"
            f"  {prog} switch green --configmap bluegreen --wait\n"
            f"  kubectl kustomize overlay | {prog} validate -f -\n"
            f"  source <({prog} completion bash)"
        ),
        formatter_class=_Help,
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default: INFO for run and demo, WARNING for the other commands)",
    )
    parser.add_argument(
        "--log-format",
        choices=log_format.FORMATS,
        default=log_format.LOGFMT,
        help="process log lines on stderr: logfmt (default) or json; UTC timestamps",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _sub(
        sub,
        "run",
        "serve the proxy from a config file or a ConfigMap",
        f"  {prog} run --config bluegreen.yaml\n  {prog} run --configmap bluegreen  # in a pod",
    )
    _add_source_arguments(run, context=False)
    run.add_argument("--listen", type=_endpoint, default="0.0.0.0:8080", help="proxy address")
    run.add_argument("--admin-listen", type=_endpoint, default="0.0.0.0:9090", help="admin address")
    run.add_argument(
        "--lease-duration",
        type=int,
        default=15,
        help="with --configmap: seconds a leader's Lease lasts without renewal",
    )
    run.add_argument("--lease-renew-deadline", type=int, default=10, help="seconds")
    run.add_argument("--lease-retry-period", type=int, default=2, help="seconds")
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

    demo = _sub(
        sub, "demo", "run two colour apps and the proxy locally", f"  {prog} demo --port 8000"
    )
    demo.add_argument("--host", default="127.0.0.1", help="address of every demo listener")
    demo.add_argument("--port", type=int, default=8080, help="proxy port")
    demo.add_argument("--admin-port", type=int, default=9090, help="admin port")
    demo.add_argument("--blue-port", type=int, default=8081, help="blue app port")
    demo.add_argument("--green-port", type=int, default=8082, help="green app port")
    demo.add_argument("--workdir", type=Path, help="where to write the demo config")

    validate = _sub(
        sub,
        "validate",
        "check a config file, or the ConfigMaps of a YAML stream, without applying it",
        f"  {prog} validate bluegreen.yaml\n"
        f"  kubectl kustomize deploy/examples/myapp | {prog} validate -f -\n"
        f"  {prog} validate -f rendered.yaml --name bluegreen",
    )
    validate.add_argument("file", nargs="?", help="the file to check ('-': standard input)")
    validate.add_argument(
        "-f", "--filename", help="the file to check ('-': standard input), as kubectl's -f"
    )
    validate.add_argument(
        "--name",
        help="in a stream of manifests, check only the ConfigMap with this name "
        "(default: every ConfigMap with active: or upstream.* keys)",
    )

    switch = _sub(
        sub,
        "switch",
        "make COLOUR the active colour",
        f"  {prog} switch green --configmap bluegreen -n shop --wait --timeout 1m\n"
        f"  {prog} switch green --configmap bluegreen --retry --wait  # after a rollback\n"
        f"  {prog} switch green --config bluegreen.yaml",
    )
    switch.add_argument("colour")
    switch.add_argument(
        "--retry",
        action="store_true",
        help="COLOUR is desired but a refusal or rollback holds it back: delete that decision "
        "so that the proxies try COLOUR again (ConfigMap)",
    )
    _add_source_arguments(switch)
    _add_wait_arguments(switch)
    rollback = _sub(
        sub,
        "rollback",
        "switch back to the previous colour (ConfigMap)",
        f"  {prog} rollback --configmap bluegreen",
    )
    _add_source_arguments(rollback)
    _add_wait_arguments(rollback)

    status = _sub(
        sub,
        "status",
        "show the desired and served colour, upstreams and recent switches",
        f"  {prog} status --configmap bluegreen -o yaml\n"
        f"  {prog} status --configmap bluegreen --admin 127.0.0.1:9090 --watch\n\n"
        "exit status: 0 valid and serving the desired colour, 1 cannot read, 2 usage,\n"
        f"  {EXIT_INVALID} the config is invalid, {EXIT_DIVERGED} the served colour is not the "
        "desired one",
    )
    _add_source_arguments(status)
    status.add_argument(
        "--admin",
        help="admin URL of a running proxy (e.g. 127.0.0.1:9090; http:// when no scheme)",
    )
    status.add_argument("-o", "--output", choices=OUTPUTS, default="text", help="format")
    status.add_argument(
        "-w", "--watch", action="store_true", help="print the status again whenever it changes"
    )
    status.add_argument(
        "--interval",
        type=_duration,
        default="1s",
        help="with --watch: how often to read the status",
    )

    completion = _sub(
        sub,
        "completion",
        "print a shell completion script",
        f"  source <({prog} completion bash)        # bash, in ~/.bashrc\n"
        f'  {prog} completion zsh > "${{fpath[1]}}/_{prog.replace(" ", "-")}"\n'
        f"  {prog} completion fish > ~/.config/fish/completions/{prog.replace(' ', '-')}.fish",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
    return parser


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"bluegreen: {message}", file=sys.stderr)
    return code


def _resolve_configmap(args: argparse.Namespace) -> str | None:
    """Turn --configmap [NS/]NAME and -n into `args.configmap` (a ConfigMapRef).

    Returns an error message for the user, or None. The namespace defaults to the kubeconfig
    context's, as with kubectl.
    """
    if args.configmap is None:
        if args.namespace is not None:
            return "-n/--namespace goes with --configmap NAME"
        return None
    given: ConfigMapRef | str = args.configmap
    context = getattr(args, "context", None)
    if isinstance(given, ConfigMapRef):
        if args.namespace is not None and args.namespace != given.namespace:
            return (
                f"--configmap {given} names namespace {given.namespace!r} but -n says "
                f"{args.namespace!r}; give one of them"
            )
        return None
    try:
        namespace = args.namespace or context_namespace(ClusterAccess(args.kubeconfig, context))
        ref = ConfigMapRef.resolve(given, namespace)
    except (ValueError, KubeconfigError) as error:
        return str(error)
    args.configmap = ref
    return None


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
    except KubeconfigError as error:
        return _fail(f"cannot start: {error}", EXIT_USAGE)
    except OSError as error:
        return _fail(f"cannot start: {error}")
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
    """Check a config file, or every bluegreen ConfigMap of a stream, and say what is wrong."""
    if (args.file is None) == (args.filename is None):
        return _fail("validate needs one file: FILE, or -f FILE ('-' for standard input)", 2)
    name: str = args.file if args.file is not None else args.filename
    if name == "-":
        raw, source = sys.stdin.buffer.read(), "<stdin>"
    else:
        try:
            raw, source = Path(name).read_bytes(), name
        except OSError as error:
            return _fail(f"cannot read {name}: {error.strerror or error}", EXIT_USAGE)
    report = validate_stream(raw, source, args.name)
    for verdict in report.verdicts:
        if verdict.config is not None:
            colours = ", ".join(verdict.config.upstreams)
            print(f"{verdict.what}: valid (active={verdict.config.active}, colours: {colours})")
        else:
            print(f"{verdict.what}: invalid\n{verdict.error}", file=sys.stderr)
    if report.skipped:
        listed = ", ".join(report.skipped)
        print(f"skipped {len(report.skipped)} documents, not bluegreen configs: {listed}")
    return EXIT_OK if report.valid else EXIT_USAGE


def _cluster_switch(args: argparse.Namespace, colour: str | None, reason: str) -> int:
    try:
        result = run_event_loop(
            switch_colour(
                args.configmap,
                args.kubeconfig,
                colour,
                reason=reason,
                context=args.context,
                retry=getattr(args, "retry", False),
            )
        )
    except OperationError as error:
        return _fail(str(error), EXIT_USAGE)
    except KubeconfigError as error:
        return _fail(str(error), EXIT_USAGE)
    except (KubeError, OSError) as error:
        return _fail(f"cannot reach ConfigMap {args.configmap}: {error}")
    if not result.changed:
        print(f"{result.current} is already active; nothing changed")
    else:
        print(
            f"switched {result.previous} -> {result.current} in ConfigMap {args.configmap} "
            f"(resourceVersion {result.resource_version})"
        )
    if not args.wait:
        return EXIT_OK
    return _waited(args, result)


def _waited(args: argparse.Namespace, result: SwitchResult) -> int:
    """Wait for the replicas after a ConfigMap switch; say the outcome and return the exit code."""
    admins = [admin_url(admin) for admin in args.admin or ()]
    try:
        outcome = run_event_loop(
            wait_configmap_switch(
                args.configmap,
                args.kubeconfig,
                result,
                timeout=args.timeout,
                admins=admins,
                admin_service=args.admin_service,
                context=args.context,
                progress=_show_progress,
            )
        )
    except (KubeconfigError, KubeError, OSError) as error:
        return _fail(f"cannot wait for the replicas: {error}")
    return _said(outcome.served, outcome.decided, outcome.message)


def _show_progress(waiting: str) -> None:
    # On stderr, as it changes: a switch to a scaled-down colour waits for its scale-up.
    print(f"waiting: {waiting}", file=sys.stderr, flush=True)


def _said(served: bool, decided: bool, message: str) -> int:
    if served:
        print(message)
        return EXIT_OK
    if decided:
        return _fail(f"not served: {message}", EXIT_DIVERGED)
    return _fail(message, EXIT_FAILED)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Switch back to the colour recorded as previous in the ConfigMap."""
    if args.configmap is None:
        return _fail(
            "rollback reads the previous colour from the ConfigMap's annotations; "
            "with a local file, run `bluegreen switch COLOUR --config FILE`",
            EXIT_USAGE,
        )
    return _cluster_switch(args, None, "rollback: manual")


def cmd_switch(args: argparse.Namespace) -> int:
    """Rewrite `active` in the config file or the ConfigMap."""
    if args.configmap is not None:
        return _cluster_switch(args, args.colour, "manual")
    if args.retry:
        return _fail(
            "with a local file the proxy keeps its decision in memory: it holds until the file "
            f"changes, so change any value in {args.config} (for example a new revision:) to "
            f"try {args.colour} again",
            EXIT_USAGE,
        )
    if args.wait and not args.admin:
        return _fail(
            "switch --wait with --config needs the running proxy: add --admin URL "
            "(its admin endpoint, e.g. 127.0.0.1:9090)",
            EXIT_USAGE,
        )
    since = datetime.now(UTC).replace(microsecond=0)
    try:
        previous, current = write_active(args.config, args.colour)
    except ConfigError as error:
        return _fail(f"switch refused, nothing written:\n{error}", EXIT_USAGE)
    except OSError as error:
        return _fail(f"cannot write {args.config}: {error}")
    if previous == current:
        print(f"{current} is already active; nothing changed")
    else:
        print(f"switched {previous} -> {current} in {args.config}")
    if not args.wait:
        return EXIT_OK
    admins = [admin_url(admin) for admin in args.admin or ()]
    outcome = run_event_loop(wait_file_switch(args.config, current, since, admins, args.timeout))
    return _said(outcome.served, outcome.decided, outcome.message)


def admin_url(admin: str) -> str:
    """Return the admin base URL; `HOST:PORT` without a scheme means http, as kubectl's --server."""
    return admin if "://" in admin else f"http://{admin}"


def _fetch_status(admin: str) -> dict[str, Any]:
    url = admin_url(admin).rstrip("/") + "/status?format=json"
    with urllib.request.urlopen(url, timeout=5) as response:
        document: dict[str, Any] = json.load(response)
    return document


class StatusUnavailable(Exception):
    """The ConfigMap, the file or the admin endpoint could not be read; the message says why."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _status_document(args: argparse.Namespace) -> dict[str, Any]:
    """Read the status once (file or ConfigMap, plus --admin); raise StatusUnavailable."""
    if args.configmap is not None:
        try:
            document = run_event_loop(read_status(args.configmap, args.kubeconfig, args.context))
        except KubeconfigError as error:
            raise StatusUnavailable(str(error), EXIT_USAGE) from error
        except (KubeError, OSError) as error:
            raise StatusUnavailable(f"cannot read ConfigMap {args.configmap}: {error}") from error
    else:
        document = {"config": str(args.config), "valid": True, "error": None}
        try:
            config = load_config_file(args.config)
        except ConfigError as error:
            document.update(valid=False, error=str(error), active=None, upstreams={})
        else:
            document.update(active=config.active, upstreams=dict(config.upstreams))
    if args.admin:
        try:
            document["running"] = _fetch_status(args.admin)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise StatusUnavailable(f"cannot read {args.admin}: {error}") from error
    return with_served(document)


def cmd_status(args: argparse.Namespace) -> int:
    """Show the config's state (file or ConfigMap) and, with --admin, the running proxy's.

    The exit status says whether all is well (see status_report.exit_code); with --watch the
    status is printed again on every change until Ctrl-C.
    """
    last: str | None = None
    code = EXIT_OK
    try:
        while True:
            try:
                document = _status_document(args)
            except StatusUnavailable as error:
                if not args.watch or error.code == EXIT_USAGE:
                    return _fail(str(error), error.code)
                print(f"bluegreen: {error}", file=sys.stderr)  # a watch rides out an outage
            else:
                code = exit_code(document)
                shown = render(document, "json" if args.output == "json" else args.output)
                if shown != last:
                    if args.watch and args.output == "json":
                        print(json.dumps(document, separators=(",", ":")), flush=True)
                    elif args.watch and args.output == "yaml":
                        print(f"---\n{shown}", flush=True)
                    elif args.watch:
                        stamp = datetime.now(UTC).isoformat(timespec="seconds")
                        print(f"--- {stamp}\n{shown}", flush=True)
                    else:
                        print(shown)
                    last = shown
            if not args.watch:
                return code
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return code


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script of `shell`, generated from this very parser."""
    parser = build_parser(args.prog)
    print(shtab.complete(parser, shell=args.shell))
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "demo": cmd_demo,
    "validate": cmd_validate,
    "switch": cmd_switch,
    "rollback": cmd_rollback,
    "status": cmd_status,
    "completion": cmd_completion,
}
# The commands that serve log; the others print results, so only warnings and errors log.
SERVING = {"run", "demo"}


def main(argv: Sequence[str] | None = None, prog: str = "bluegreen") -> int:
    """Entry point of the `bluegreen` console script."""
    args = build_parser(prog).parse_args(argv)
    args.prog = prog
    log_format.configure(
        args.log_level or ("INFO" if args.command in SERVING else "WARNING"), args.log_format
    )
    if hasattr(args, "configmap"):
        problem = _resolve_configmap(args)
        if problem is not None:
            return _fail(problem, EXIT_USAGE)
    return COMMANDS[args.command](args)


def kubectl_plugin() -> int:
    """Entry point of `kubectl-bluegreen`, so that `kubectl bluegreen ...` works."""
    return main(prog="kubectl bluegreen")


if __name__ == "__main__":
    sys.exit(main())
