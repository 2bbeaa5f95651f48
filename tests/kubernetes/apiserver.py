"""A real kube-apiserver (with its own etcd) on loopback, for tests.

The binaries come from ``tests/kubernetes/build_apiserver.sh``, which builds Kubernetes 1.20.2's
kube-apiserver from source and installs etcd into a cache directory outside the repository.
`KubeApiServer` runs them in a temporary directory:

* etcd on two free loopback ports, with its data directory in the temporary directory;
* kube-apiserver on a free loopback port, HTTPS with a self-signed certificate (``--cert-dir``),
  token authentication (an admin token in ``system:masters``, plus any users added with
  `KubeApiServer.add_user` before start), RBAC authorization;
* a kubeconfig for the admin (`KubeApiServer.kubeconfig`) or any token (`kubeconfig_for`).

`stop` stops only kube-apiserver, and `start` starts it again on the same port over the same
etcd, so objects survive a restart. `close` ends both processes, by PID, and removes the
temporary directory.

Known gaps of 1.20.2: no EndpointSlice v1 (only v1beta1), and no controller-manager, scheduler or
kubelet: Pods stay Pending, Deployments get no ReplicaSets, Namespaces are never finalized, and
the aggregated ClusterRoles (``view``, ``edit``, ``admin``) have no rules: bind your own Roles.
The ``kubernetes`` Service has no Endpoints (``--endpoint-reconciler-type=none``: 127.0.0.1 is
not a valid endpoint address). A new RoleBinding takes a moment to reach the RBAC authorizer.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Self

import yaml

KUBE_VERSION = "1.20.2"
BUILD_SCRIPT = Path(__file__).resolve().with_name("build_apiserver.sh")
LOG_TAIL_LINES = 40


_LIVE: weakref.WeakSet[KubeApiServer] = weakref.WeakSet()


@atexit.register
def _close_forgotten_servers() -> None:
    """Close servers that a test run left open (an interrupted session, say)."""
    for server in list(_LIVE):
        server.close()


class KubeApiServerError(RuntimeError):
    """etcd or kube-apiserver could not be started, or is not usable."""


class MissingBinariesError(KubeApiServerError):
    """The binaries are not built yet: run tests/kubernetes/build_apiserver.sh."""


def default_cache_dir() -> Path:
    """Where build_apiserver.sh puts the binaries (``$BLUEGREEN_KUBE_CACHE`` overrides it)."""
    configured = os.environ.get("BLUEGREEN_KUBE_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "bluegreen" / f"kube-{KUBE_VERSION}"


@dataclass(frozen=True)
class KubeBinaries:
    """Paths of the two binaries a `KubeApiServer` runs."""

    kube_apiserver: Path
    etcd: Path


def find_binaries(cache_dir: Path | None = None) -> KubeBinaries:
    """Return the built binaries, or raise `MissingBinariesError` telling how to build them."""
    bin_dir = (cache_dir or default_cache_dir()) / "bin"
    binaries = KubeBinaries(bin_dir / "kube-apiserver", bin_dir / "etcd")
    for path in (binaries.kube_apiserver, binaries.etcd):
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise MissingBinariesError(
                f"{path} is missing: build kube-apiserver {KUBE_VERSION} and etcd once with "
                f"`bash {BUILD_SCRIPT.relative_to(BUILD_SCRIPT.parents[2])}` "
                "(8-11 minutes on 2 cores; bin/test runs it too)"
            )
    return binaries


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a log file, or a note that it is empty or missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else f"({path} is empty)"


@dataclass(frozen=True)
class TokenUser:
    """One line of the API server's ``--token-auth-file``."""

    token: str
    name: str
    uid: str
    groups: tuple[str, ...]

    def csv_line(self) -> str:
        """The line in the token file's format: ``token,user,uid,"group1,group2"``."""
        for value in (self.token, self.name, self.uid, *self.groups):
            if any(c in value for c in ',"\n'):
                raise ValueError(f"token file values may not hold commas or quotes: {value!r}")
        line = f"{self.token},{self.name},{self.uid}"
        if self.groups:
            line += ',"' + ",".join(self.groups) + '"'
        return line


class _Process:
    """A child process we started, with its log file; ended by PID only."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self._log.write(f"\n==== {time.strftime('%H:%M:%S')} starting {name}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            _die_with_parent(list(argv)),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; only this PID."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(10)
        finally:
            self._log.close()


def _die_with_parent(argv: list[str]) -> list[str]:
    """Prefix `argv` with ``setpriv --pdeathsig SIGTERM`` where that is safe and available.

    The child then gets SIGTERM if the test process dies without closing it. Linux sends the
    signal when the parent *thread* exits, so this is only done from the main thread (a worker
    thread would take the server down with it when it ends).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return argv
    return [setpriv, "--pdeathsig", "SIGTERM", "--", *argv]


class KubeApiServer:
    """etcd and kube-apiserver on free loopback ports, in a temporary directory.

    Typical use::

        with KubeApiServer() as server:
            token = ...  # server.add_user(...) must come before start()
            server.start()
            kubeconfig = server.kubeconfig
            server.stop(); server.start()  # same port, same etcd data

    `fast_compaction` serves configmaps without a watch cache and compacts etcd every 2 s, so a
    watch from an old resourceVersion soon gets 410 Gone (and configmap watches get no bookmarks).
    """

    ADMIN_USER = "admin"

    def __init__(
        self,
        *,
        fast_compaction: bool = False,
        cache_dir: Path | None = None,
        ready_timeout: float = 90.0,
        keep_dir: bool = False,
        extra_args: Iterable[str] = (),
    ) -> None:
        self.binaries = find_binaries(cache_dir)
        self.fast_compaction = fast_compaction
        self.ready_timeout = ready_timeout
        self.keep_dir = keep_dir
        self.extra_args = list(extra_args)
        self.dir = Path(tempfile.mkdtemp(prefix="bluegreen-kube-"))
        self.cert_dir = self.dir / "certs"
        self.etcd_data_dir = self.dir / "etcd-data"
        self.token_file = self.dir / "tokens.csv"
        self.etcd_log = self.dir / "etcd.log"
        self.apiserver_log = self.dir / "kube-apiserver.log"
        self.kubeconfig = self.dir / "kubeconfig-admin.yaml"
        self.port, self.etcd_client_port, self.etcd_peer_port = free_ports(3)
        self.ready_seconds = 0.0
        """How long the last `start` waited for kube-apiserver to become ready."""
        self._users: dict[str, TokenUser] = {}
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._closed = False
        _LIVE.add(self)
        try:
            self.admin_token = self.add_user(self.ADMIN_USER, ["system:masters"])
            self._make_service_account_keys()
        except BaseException:
            self.close()
            raise

    # -- configuration, before start ------------------------------------------------------------

    def add_user(self, name: str, groups: Sequence[str] = ()) -> str:
        """Add a token user and return its bearer token.

        The token file is read when kube-apiserver starts: call this before `start` (or between
        `stop` and `start`).
        """
        if self.running:
            raise KubeApiServerError(
                "add_user() after start(): kube-apiserver reads its token file only at start; "
                "stop() it first or add users before start()"
            )
        if any(user.name == name for user in self._users.values()):
            raise ValueError(f"token user {name!r} exists already")
        user = TokenUser(secrets.token_hex(24), name, f"uid-{name}", tuple(groups))
        user.csv_line()  # validate now, not at start
        self._users[user.token] = user
        return user.token

    def users(self) -> dict[str, TokenUser]:
        """The token users by token (the admin included)."""
        return dict(self._users)

    # -- addresses and client configuration -----------------------------------------------------

    @property
    def url(self) -> str:
        """The API server's base URL."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        """etcd's client URL."""
        return f"http://127.0.0.1:{self.etcd_client_port}"

    @property
    def ca_file(self) -> Path:
        """The self-signed serving certificate bundle (certificate and its CA) to trust."""
        return self.cert_dir / "apiserver.crt"

    @property
    def running(self) -> bool:
        """Whether kube-apiserver is running."""
        return self._apiserver is not None and self._apiserver.alive()

    def kubeconfig_for(self, token: str, path: Path | None = None) -> Path:
        """Write a kubeconfig that authenticates with `token`; return its path.

        The cluster entry trusts the API server's generated CA (it exists once the server has
        started: call this after `start`).
        """
        user = self._users.get(token)
        name = user.name if user else "token-user"
        if path is None:
            # A ServiceAccount's user name holds colons, which kubeconfig loaders read as a
            # path list separator: keep the file name to safe characters.
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
            path = self.dir / f"kubeconfig-{safe}.yaml"
        cluster: dict[str, object] = {"server": self.url}
        if self.ca_file.is_file():
            cluster["certificate-authority"] = str(self.ca_file)
        else:
            cluster["insecure-skip-tls-verify"] = True
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "bluegreen-test", "cluster": cluster}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [
                {
                    "name": f"{name}@bluegreen-test",
                    "context": {
                        "cluster": "bluegreen-test",
                        "user": name,
                        "namespace": "default",
                    },
                }
            ],
            "current-context": f"{name}@bluegreen-test",
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        path.chmod(0o600)
        return path

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start etcd (first time only) and kube-apiserver, and wait until both are ready."""
        if self._closed:
            raise KubeApiServerError("start() after close()")
        if self.running:
            return
        if self._etcd is None or not self._etcd.alive():
            self._start_etcd()
        self._write_token_file()
        self.cert_dir.mkdir(exist_ok=True)
        self._apiserver = _Process(
            "kube-apiserver", self._apiserver_argv(), self.apiserver_log, self.dir
        )
        self._wait_apiserver_ready()
        self.kubeconfig_for(self.admin_token, self.kubeconfig)

    def stop(self) -> None:
        """Stop kube-apiserver only; etcd and its data stay, for a later `start`."""
        if self._apiserver is not None:
            process, self._apiserver = self._apiserver, None
            process.stop()

    def restart(self) -> None:
        """`stop` then `start`: same port, same etcd data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """End kube-apiserver and etcd (only the processes this object started)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            if self._etcd is not None:
                process, self._etcd = self._etcd, None
                process.stop()
            if not self.keep_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<KubeApiServer {self.url} {state} dir={self.dir}>"

    # -- plumbing -------------------------------------------------------------------------------

    def _make_service_account_keys(self) -> None:
        key, pub = self.dir / "sa.key", self.dir / "sa.pub"
        commands = [
            ["openssl", "genrsa", "-out", str(key), "2048"],
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
        ]
        for command in commands:
            try:
                subprocess.run(command, check=True, capture_output=True, timeout=60)
            except FileNotFoundError as exc:
                raise KubeApiServerError("openssl is missing (apt-get install openssl)") from exc
            except subprocess.CalledProcessError as exc:
                raise KubeApiServerError(
                    f"{' '.join(command)} failed: {exc.stderr.decode(errors='replace')}"
                ) from exc

    def _write_token_file(self) -> None:
        lines = [user.csv_line() for user in self._users.values()]
        self.token_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.token_file.chmod(0o600)

    def _etcd_argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            str(self.binaries.etcd),
            "--name=bluegreen-test",
            f"--data-dir={self.etcd_data_dir}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=bluegreen-test={peer}",
            "--initial-cluster-state=new",
            "--log-level=warn",
        ]

    def _apiserver_argv(self) -> list[str]:
        argv = [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            "--insecure-port=0",
            f"--cert-dir={self.cert_dir}",
            f"--token-auth-file={self.token_file}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={self.dir / 'sa.pub'}",
            f"--service-account-signing-key-file={self.dir / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--disable-admission-plugins=ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            # The `kubernetes` Service's Endpoints may not point at 127.0.0.1: don't try (and log).
            "--endpoint-reconciler-type=none",
        ]
        if self.fast_compaction:
            argv += ["--watch-cache-sizes=configmaps#0", "--etcd-compaction-interval=2s"]
        return argv + self.extra_args

    def _start_etcd(self) -> None:
        self._etcd = _Process("etcd", self._etcd_argv(), self.etcd_log, self.dir)
        deadline = time.monotonic() + 30.0
        while True:
            if not self._etcd.alive():
                self._fail(
                    f"etcd exited with status {self._etcd.popen.returncode}",
                    self.etcd_log,
                    stop_etcd=True,
                )
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response,
            ):
                if json.loads(response.read()).get("health") == "true":
                    return
            if time.monotonic() > deadline:
                self._fail("etcd did not report healthy within 30 s", self.etcd_log, stop_etcd=True)
            time.sleep(0.1)

    def _get(self, path: str) -> tuple[int, bytes]:
        """GET `path` from the API server as admin (TLS not verified: the CA may be new)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), error.read()

    def _wait_apiserver_ready(self) -> None:
        assert self._apiserver is not None
        started = time.monotonic()
        last = "no answer yet"
        while True:
            if not self._apiserver.alive():
                self._fail(
                    f"kube-apiserver exited with status {self._apiserver.popen.returncode}",
                    self.apiserver_log,
                )
            try:
                status, body = self._get("/readyz")
                last = f"/readyz: {status} {body[:200]!r}"
                if status == 200:
                    status, body = self._get("/api/v1/namespaces/default")
                    last = f"namespace default: {status} {body[:200]!r}"
                    if status == 200:
                        self.ready_seconds = time.monotonic() - started
                        return
            except (OSError, ValueError) as error:
                last = f"{type(error).__name__}: {error}"
            if time.monotonic() - started > self.ready_timeout:
                self._fail(
                    f"kube-apiserver not ready within {self.ready_timeout:.0f} s ({last})",
                    self.apiserver_log,
                )
            time.sleep(0.25)

    def _fail(self, message: str, log: Path, *, stop_etcd: bool = False) -> NoReturn:
        """Stop what is half started and raise with the tail of `log`."""
        if self._apiserver is not None:
            process, self._apiserver = self._apiserver, None
            process.stop()
        if stop_etcd and self._etcd is not None:
            process, self._etcd = self._etcd, None
            process.stop()
        raise KubeApiServerError(
            f"{message}\n---- last {LOG_TAIL_LINES} lines of {log} ----\n{log_tail(log)}"
        )
