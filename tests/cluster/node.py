"""A real single-node Kubernetes 1.20 cluster on this machine, for tests and for developers.

`up` starts, as children it records by PID: etcd, kube-apiserver, a containerd of its own, the
controller-manager, the scheduler, the kubelet, kube-proxy and dnsmasq (with a small refresher
for Service names), then imports the images of tests/cluster/images.py. `down` ends exactly
those PIDs and undoes what they changed on the machine: sysctls back to their saved values,
KUBE-* iptables chains and the rules jumping to them removed, pod network namespaces, mounts
and cgroups removed, the bridge deleted. `status` says what runs. bin/cluster and the pytest
fixture in tests/cluster/conftest.py both use this module; one cluster per machine (a lock).

SECURITY IS TEST-GRADE. One admin token (system:masters) is used by every component and is
in the kubeconfig; the kubelet allows anonymous access (on the bridge address only); nothing
is hardened. Never point this at anything but a throw-away machine.

Network, all of it on this machine: a bridge ``bluegreen0`` holding the node address 10.244.0.1
(there is no dummy link type here, so the node IP lives on the CNI bridge, created before the
kubelet), Pods in 10.244.0.0/24, Services in 10.0.0.0/24 (routed onto the bridge). Pods get a
route to the Service range only, no default route, and a FORWARD rule drops anything between
the bridge and another interface: nothing from the cluster leaves the machine. kube-proxy opens
NodePorts on loopback and the node address only. The API server, kubelet and DNS listen on the
node address; everything else on 127.0.0.1.

Quirks of these machines, found by a probe: no CAP_SYS_RESOURCE, so no negative oom_score_adj
(containerd's CRI gets ``restrict_oom_score_adj``, kubelet and kube-proxy ``oomScoreAdj: 0``);
cgroup v1 with the cgroupfs driver on both sides.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tests.cluster import images
from tests.kubernetes.apiserver import free_ports, log_tail
from tests.tools import debian_tool

KUBE_VERSION = "1.20.2"
REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "kubernetes" / "build_apiserver.sh"
INSTALL_SCRIPT = Path(__file__).resolve().with_name("install_runtime.sh")
BRIDGE = "bluegreen0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.0.0.0/24"
API_SERVICE_IP = "10.0.0.1"
API_PORT = 6443
NODE_NAME = "bluegreen-node"
NODE_PORT = 30080
CNI_BIN = Path("/usr/lib/cni")
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
POD_LOGS = Path("/var/log/pods")
# The runc shim keeps container state here whatever containerd's own state directory is.
RUNC_STATE = Path("/run/containerd")
# Everything the kubelet, kube-proxy and we change; saved at `up`, restored at `down`.
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
)
ISOLATION_CHAIN = "BLUEGREEN-ISOLATE"
# The order `down` stops them in (the reverse of `up`, the runtime last but one).
STOP_ORDER = (
    "dns-refresh",
    "dnsmasq",
    "kube-proxy",
    "kubelet",
    "kube-scheduler",
    "kube-controller-manager",
    "containerd",
    "kube-apiserver",
    "etcd",
)


def run_dir() -> Path:
    """Where a running cluster keeps its state (``$BLUEGREEN_CLUSTER_DIR`` overrides it)."""
    return Path(os.environ.get("BLUEGREEN_CLUSTER_DIR", "/tmp/bluegreen-cluster"))


def kube_bin() -> Path:
    """The cached Kubernetes binaries (build_apiserver.sh --node)."""
    configured = os.environ.get("BLUEGREEN_KUBE_CACHE")
    cache = Path(configured) if configured else Path.home() / ".cache/bluegreen/kube-1.20.2"
    return cache / "bin"


class ClusterError(RuntimeError):
    """The cluster could not be started or stopped; the message says which part and why."""


def say(message: str) -> None:
    """Progress on stderr: stdout of `bin/cluster up` is only the shell lines to eval."""
    images.log(message)


def sh(*argv: str | Path, check: bool = True, quiet: bool = False) -> str:
    """Run a short command; return stdout; raise ClusterError with stderr on failure."""
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, timeout=120
    )
    if check and result.returncode != 0:
        raise ClusterError(
            f"{' '.join(map(str, argv))} exited with {result.returncode}: {result.stderr.strip()}"
        )
    if not check and result.returncode != 0 and not quiet:
        say(f"(ignored) {' '.join(map(str, argv))}: {result.stderr.strip()}")
    return result.stdout


def wait_for(what: str, probe: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    """Poll `probe` until true; raise naming `what` (and a log tail) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            tail = f"\n---- {log} ----\n{log_tail(log)}" if log else ""
            raise ClusterError(f"{what} not within {timeout:.0f} s{tail}")
        time.sleep(0.2)


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (to tell our process from a later one with its PID)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass
class State:
    """What `up` started and changed, persisted in ``state.json`` for `down` and `status`."""

    processes: dict[str, tuple[int, str]] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    netns_before: list[str] = field(default_factory=list)
    created_pod_logs: bool = False
    created_runc_state: bool = False
    admin_token: str = ""

    @classmethod
    def load(cls, path: Path) -> State:
        """Read the state file (an empty state if there is none)."""
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        data["processes"] = {k: tuple(v) for k, v in data.get("processes", {}).items()}
        return cls(**data)

    def save(self, path: Path) -> None:
        """Write the state file atomically."""
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.__dict__, indent=1), encoding="utf-8")
        temporary.replace(path)


class Cluster:
    """The single-node cluster of this machine: `up`, `down`, `status`."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or run_dir()
        self.state_file = self.dir / "state.json"
        self.kubeconfig = self.dir / "kubeconfig"
        self.logs = self.dir / "logs"
        self.pki = self.dir / "pki"
        self.containerd_socket = self.dir / "containerd" / "containerd.sock"
        self.state = State.load(self.state_file)

    # -- what callers use -----------------------------------------------------------------------

    @property
    def node_address(self) -> str:
        """Where NodePorts answer (also 127.0.0.1)."""
        return NODE_IP

    def shell_lines(self) -> str:
        """The lines `eval "$(bin/cluster up)"` runs."""
        return f"export KUBECONFIG={self.kubeconfig}\nexport BLUEGREEN_NODE={NODE_IP}\n"

    def running(self) -> dict[str, bool]:
        """Each recorded process and whether it (the same process, not a reused PID) lives."""
        return {
            name: process_start_time(pid) == started
            for name, (pid, started) in self.state.processes.items()
        }

    def is_up(self) -> bool:
        """Whether every component runs and the node is Ready."""
        alive = self.running()
        if set(alive) != set(STOP_ORDER) or not all(alive.values()):
            return False
        return self.node_ready()

    def kubectl_result(
        self, *args: str, timeout: float = 60, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; the completed process, whatever its status."""
        return subprocess.run(
            [str(debian_tool("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 60, input_text: str | None = None
    ) -> str:
        """Run kubectl against this cluster; return stdout."""
        result = self.kubectl_result(*args, timeout=timeout, input_text=input_text)
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def ctr(self, *args: str | Path) -> str:
        """Run containerd's ctr against this cluster's containerd, namespace k8s.io."""
        return sh("ctr", "--address", self.containerd_socket, "--namespace", "k8s.io", *args)

    def api(self, path: str) -> Any:
        """GET `path` from the API server as admin; the decoded JSON, or None on any error."""
        status, document = self.api_call(path)
        return document if status == 200 else None

    def api_call(
        self,
        path: str,
        *,
        method: str = "GET",
        body: Any = None,
        token: str | None = None,
        content_type: str = "application/merge-patch+json",
    ) -> tuple[int, Any]:
        """One API request (as admin unless `token` is given): the status and decoded JSON.

        The status is 0 when the API server could not be reached or answered no JSON.
        """
        import ssl  # noqa: PLC0415 - only here: status, waits and tests

        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"https://{NODE_IP}:{API_PORT}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {token or self.state.admin_token}",
                **({"Content-Type": content_type} if data is not None else {}),
            },
        )
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                return int(error.code), json.loads(error.read())
            except ValueError:
                return int(error.code), None
        except (OSError, ValueError):
            return 0, None

    def node_ready(self) -> bool:
        """Whether the node reports Ready."""
        node = self.api(f"/api/v1/nodes/{NODE_NAME}")
        if not node:
            return False
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    # -- up -------------------------------------------------------------------------------------

    def up(self) -> None:
        """Start the whole cluster (idempotent: an up cluster is left as it is)."""
        with self._lock():
            self.state = State.load(self.state_file)
            if self.is_up():
                say(f"already up (state in {self.dir})")
                return
            if self.state.processes:
                say("a half-started cluster is recorded: taking it down first")
                self._down_locked()
            started = time.monotonic()
            self._prepare()
            try:
                self._start_all()
            except BaseException:
                say(f"start failed; taking down what started (logs kept in {self.logs})")
                self._down_locked(keep_logs=True)
                raise
            say(f"up in {time.monotonic() - started:.0f} s: node {NODE_NAME} Ready on {NODE_IP}")

    def _prepare(self) -> None:
        if os.geteuid() != 0:
            raise ClusterError("bin/cluster needs root (bridge, iptables, mounts, cgroups)")
        missing = [
            name
            for name in (
                "kube-apiserver",
                "etcd",
                "kubelet",
                "kube-controller-manager",
                "kube-scheduler",
                "kube-proxy",
                "pause",
            )
            if not (kube_bin() / name).is_file()
        ]
        if missing:
            say(f"building {', '.join(missing)} (build_apiserver.sh --node, ~7 min cold)")
            subprocess.run(["bash", str(BUILD_SCRIPT), "--node"], check=True, stdout=sys.stderr)
        if not all(shutil.which(t) for t in ("containerd", "runc", "dnsmasq", "buildah", "ctr")):
            subprocess.run(["bash", str(INSTALL_SCRIPT)], check=True, stdout=sys.stderr)
        debian_tool("kubectl")  # fails early, with the fix, when it was never fetched
        if self.dir.exists():
            shutil.rmtree(self.dir)
        for sub in ("logs", "pki", "cni", "dns", "containerd", "kubelet", "etcd"):
            (self.dir / sub).mkdir(parents=True)
        self.dir.chmod(0o700)
        self.state = State(admin_token=secrets.token_hex(24))
        self.state.save(self.state_file)

    def _start_all(self) -> None:
        self._network()
        self._make_pki()
        etcd_port, etcd_peer, *ports = free_ports(8)
        self._start_etcd(etcd_port, etcd_peer)
        self._start_apiserver(etcd_port)
        self._start_containerd(ports[0])
        self._start_control_plane(ports[1], ports[2])
        self._start_kubelet(ports[3])
        self._start_kube_proxy(ports[4], ports[5])
        self._start_dns()
        self._import_images()
        self._wait_for_service_accounts()

    def _spawn(
        self, name: str, argv: Sequence[str | Path], env: dict[str, str] | None = None
    ) -> None:
        """Start a daemon that outlives this process (bin/cluster up returns); record its PID."""
        log: IO[bytes]
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.dir,
                env={**os.environ, **(env or {})},
            )
        started = process_start_time(process.pid)
        if started is None:
            raise ClusterError(f"{name} exited at once; see {self.logs / f'{name}.log'}")
        self.state.processes[name] = (process.pid, started)
        self.state.save(self.state_file)

    def _check_alive(self, name: str) -> bool:
        pid, started = self.state.processes[name]
        if process_start_time(pid) != started:
            raise ClusterError(
                f"{name} exited\n---- {self.logs / f'{name}.log'} ----\n"
                f"{log_tail(self.logs / f'{name}.log')}"
            )
        return True

    def _network(self) -> None:
        say(f"network: bridge {BRIDGE} {NODE_IP}/24, Services {SERVICE_CIDR}, nothing routed out")
        for key in SYSCTLS:
            value = sh("sysctl", "-n", key, check=False, quiet=True).strip()
            if value:
                self.state.sysctls[key] = value
        self.state.netns_before = sorted(p.name for p in NETNS_DIR.glob("*"))
        self.state.created_pod_logs = not POD_LOGS.exists()
        self.state.created_runc_state = not RUNC_STATE.exists()
        self.state.save(self.state_file)
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        sh("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
        # Pod -> Service -> Pod on the same bridge is routed by this host, and the replies must
        # pass conntrack on the bridge too.
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", check=False)
        # Nothing crosses between the cluster's bridge and any other interface.
        sh("iptables", "-N", ISOLATION_CHAIN)
        sh("iptables", "-A", ISOLATION_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
        sh("iptables", "-A", ISOLATION_CHAIN, "-o", BRIDGE, "!", "-i", BRIDGE, "-j", "DROP")
        sh("iptables", "-I", "FORWARD", "1", "-j", ISOLATION_CHAIN)
        cni = {
            "cniVersion": "0.4.0",
            "name": "bluegreen",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": False,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                        # The Service range only: no default route, nothing leaves the machine.
                        "routes": [{"dst": SERVICE_CIDR}],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (self.dir / "cni" / "net.d").mkdir()
        (self.dir / "cni" / "net.d" / "10-bluegreen.conflist").write_text(json.dumps(cni))

    def _make_pki(self) -> None:
        pki = self.pki
        sans = ",".join(
            [
                f"IP:{NODE_IP}",
                f"IP:{API_SERVICE_IP}",
                "IP:127.0.0.1",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
            ]
        )
        commands: list[list[str | Path]] = [
            ["openssl", "genrsa", "-out", pki / "ca.key", "2048"],
            ["openssl", "req", "-x509", "-new", "-key", pki / "ca.key", "-days", "30",
             "-subj", "/CN=bluegreen-test-ca", "-out", pki / "ca.crt"],
            ["openssl", "genrsa", "-out", pki / "apiserver.key", "2048"],
            ["openssl", "req", "-new", "-key", pki / "apiserver.key",
             "-subj", "/CN=kube-apiserver", "-out", pki / "apiserver.csr"],
            ["openssl", "genrsa", "-out", pki / "sa.key", "2048"],
            ["openssl", "rsa", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub"],
        ]  # fmt: skip
        for command in commands:
            sh(*command)
        (pki / "san.ext").write_text(f"subjectAltName={sans}\nextendedKeyUsage=serverAuth\n")
        sh(
            "openssl", "x509", "-req", "-in", pki / "apiserver.csr", "-CA", pki / "ca.crt",
            "-CAkey", pki / "ca.key", "-CAcreateserial", "-days", "30",
            "-extfile", pki / "san.ext", "-out", pki / "apiserver.crt",
        )  # fmt: skip
        (pki / "tokens.csv").write_text(f'{self.state.admin_token},admin,admin,"system:masters"\n')
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "bluegreen-test",
                    "cluster": {
                        "server": f"https://{NODE_IP}:{API_PORT}",
                        "certificate-authority": str(pki / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.state.admin_token}}],
            "contexts": [
                {
                    "name": "bluegreen-test",
                    "context": {
                        "cluster": "bluegreen-test",
                        "user": "admin",
                        "namespace": "default",
                    },
                }
            ],
            "current-context": "bluegreen-test",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _start_etcd(self, port: int, peer_port: int) -> None:
        say("starting etcd")
        url, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                kube_bin() / "etcd", "--name=bluegreen-node", f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
                f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=bluegreen-node={peer}", "--log-level=warn",
                "--listen-metrics-urls=", "--unsafe-no-fsync",
            ],
        )  # fmt: skip
        self.etcd_url = url

    def _start_apiserver(self, etcd_port: int) -> None:
        say("starting kube-apiserver")
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                kube_bin() / "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}",
                f"--secure-port={API_PORT}", "--insecure-port=0",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--enable-priority-and-fairness=false", "--profiling=false",
                "--kubelet-preferred-address-types=InternalIP",
            ],
        )  # fmt: skip
        wait_for(
            "kube-apiserver ready",
            lambda: (
                self._check_alive("kube-apiserver")
                and self.api("/api/v1/namespaces/default") is not None
            ),
            90,
            self.logs / "kube-apiserver.log",
        )

    def _start_containerd(self, stream_port: int) -> None:
        say("starting containerd (own root, state and socket)")
        root = self.dir / "containerd"
        config = f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{root / "containerd.sock.ttrpc"}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.PAUSE_REF}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "{stream_port}"
  # No CAP_SYS_RESOURCE here: never ask for a negative oom_score_adj.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{self.dir / "cni" / "net.d"}"
"""
        (root / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", "--config", root / "config.toml"])
        wait_for(
            "containerd socket",
            lambda: self._check_alive("containerd") and self.containerd_socket.is_socket(),
            30,
            self.logs / "containerd.log",
        )

    def _start_control_plane(self, cm_port: int, scheduler_port: int) -> None:
        say("starting kube-controller-manager and kube-scheduler")
        pki = self.pki
        self._spawn(
            "kube-controller-manager",
            [
                kube_bin() / "kube-controller-manager",
                f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
                "--bind-address=127.0.0.1", f"--secure-port={cm_port}", "--port=0",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=false",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route",
                "--node-monitor-grace-period=20s", "--pod-eviction-timeout=1h",
            ],
        )  # fmt: skip
        self._spawn(
            "kube-scheduler",
            [
                kube_bin() / "kube-scheduler",
                f"--kubeconfig={self.kubeconfig}", "--leader-elect=false",
                "--bind-address=127.0.0.1", f"--secure-port={scheduler_port}", "--port=0",
            ],
        )  # fmt: skip

    def _start_kubelet(self, healthz_port: int) -> None:
        say("starting kubelet")
        root = self.dir / "kubelet"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            # Test-grade: anyone on the bridge may use the kubelet API.
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "oomScoreAdj": 0,
            "clusterDNS": [NODE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": "",
            # A shared test machine: never evict for disk or memory pressure of other work.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "maxPods": 110,
            "serializeImagePulls": False,
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "nodeStatusUpdateFrequency": "4s",
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        self._spawn(
            "kubelet",
            [
                kube_bin() / "kubelet",
                f"--config={root / 'config.yaml'}", f"--kubeconfig={self.kubeconfig}",
                f"--root-dir={root}", f"--cert-dir={root / 'pki'}",
                "--container-runtime=remote",
                f"--container-runtime-endpoint=unix://{self.containerd_socket}",
                f"--pod-infra-container-image={images.PAUSE_REF}",
                f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}",
                "--register-node=true", "--v=1",
            ],
        )  # fmt: skip

    def _start_kube_proxy(self, metrics_port: int, healthz_port: int) -> None:
        say("starting kube-proxy (NodePorts on 127.0.0.1 and the node address only)")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{metrics_port}",
            "nodePortAddresses": ["127.0.0.0/8", f"{NODE_IP}/32"],
            "oomScoreAdj": 0,
            # Leave the machine's conntrack settings alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
        }
        path = self.dir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [kube_bin() / "kube-proxy", f"--config={path}"])
        wait_for(
            f"node {NODE_NAME} Ready",
            lambda: self._check_alive("kubelet") and self._check_alive("kube-proxy")
            and self.node_ready(),
            120,
            self.logs / "kubelet.log",
        )  # fmt: skip

    def _start_dns(self) -> None:
        say(f"starting cluster DNS (dnsmasq on {NODE_IP}:53)")
        hosts = self.dir / "dns"
        (hosts / "services").write_text("")
        self._spawn(
            "dns-refresh",
            [sys.executable, "-m", "tests.cluster.dns", self.kubeconfig, hosts],
            env={"PYTHONPATH": str(REPO)},
        )
        self._spawn(
            "dnsmasq",
            [
                "dnsmasq", "--keep-in-foreground", "--no-daemon", "--log-facility=-",
                "--user=root", "--no-resolv", "--no-hosts", "--bind-interfaces",
                f"--listen-address={NODE_IP}", "--port=53", f"--hostsdir={hosts}",
                "--local=/cluster.local/", "--domain-needed", "--bogus-priv",
                f"--pid-file={self.dir / 'dnsmasq.pid'}", "--cache-size=0",
            ],
        )  # fmt: skip

    def _import_images(self) -> None:
        archives = images.all_images(kube_bin() / "pause", self.logs / "images.log")
        for archive in archives:
            self.ctr("images", "import", archive.path)
        say("images imported: " + ", ".join(a.ref.rsplit("/", 1)[-1] for a in archives))

    def _wait_for_service_accounts(self) -> None:
        def ready() -> bool:
            account = self.api("/api/v1/namespaces/default/serviceaccounts/default")
            return bool(account and account.get("secrets"))

        wait_for("the default ServiceAccount's token", ready, 60)

    # -- down -----------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop everything `up` started and undo its changes to the machine (idempotent)."""
        with self._lock():
            self.state = State.load(self.state_file)
            self._down_locked()

    def _down_locked(self, *, keep_logs: bool = False) -> None:
        if not self.state_file.exists():
            say("no cluster recorded; nothing to do")
            return
        say("taking the cluster down")
        for name in STOP_ORDER:
            if name in self.state.processes:
                self._stop(name)
        self._kill_pods()
        self._remove_netns()
        self._unmount_all()
        self._remove_cgroups()
        self._remove_iptables()
        sh("ip", "link", "del", BRIDGE, check=False, quiet=True)
        for key, value in self.state.sysctls.items():
            sh("sysctl", "-qw", f"{key}={value}", check=False)
        if self.state.created_pod_logs:
            shutil.rmtree(POD_LOGS, ignore_errors=True)
        if keep_logs:
            self.state_file.unlink(missing_ok=True)
        else:
            subprocess.run(["chmod", "-R", "u+w", str(self.dir)], check=False)
            shutil.rmtree(self.dir, ignore_errors=True)
        self.state = State()
        say("down: processes stopped, sysctls restored, iptables, bridge, mounts, cgroups removed")

    def _kill_pods(self) -> None:
        """SIGKILL every process in the kubelet's pod cgroups, then our containerd's shims.

        Found by what marks them as ours (the kubepods cgroups, the shim's ``-address`` of our
        socket), so this works after a crash too, when containerd is gone.
        """
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = {
                int(pid)
                for procs in CGROUP_ROOT.glob("*/kubepods/**/cgroup.procs")
                for pid in procs.read_text().split()
            }
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        marker = f"-address\0{self.containerd_socket}\0".encode()
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if cmdline.startswith(b"/usr/bin/containerd-shim") and marker in cmdline:
                    container = cmdline.split(b"\0")[cmdline.split(b"\0").index(b"-id") + 1]
                    os.kill(int(proc.name), signal.SIGKILL)
                    shutil.rmtree(RUNC_STATE / "runc" / "k8s.io" / container.decode(), True)
        if self.state.created_runc_state:
            shutil.rmtree(RUNC_STATE, ignore_errors=True)

    def _stop(self, name: str) -> None:
        pid, started = self.state.processes[name]
        if process_start_time(pid) != started:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while process_start_time(pid) == started and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if process_start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def _remove_netns(self) -> None:
        """Pod network namespaces containerd made (their veths go with them)."""
        for path in NETNS_DIR.glob("cni-*"):
            if path.name in self.state.netns_before:
                continue
            sh("umount", path, check=False, quiet=True)
            path.unlink(missing_ok=True)

    def _unmount_all(self) -> None:
        """Every mount below the cluster directory, deepest first (tmpfs, overlay rootfs)."""
        prefix = str(self.dir) + "/"
        for _ in range(3):
            mounts = [
                line.split()[4]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split()[4].startswith(prefix)
            ]
            if not mounts:
                return
            for point in sorted(mounts, key=len, reverse=True):
                sh("umount", point, check=False, quiet=True)
        for point in mounts:
            sh("umount", "-l", point, check=False)

    def _remove_cgroups(self) -> None:
        """The kubelet's kubepods hierarchy in every cgroup controller, deepest first."""
        for controller in CGROUP_ROOT.iterdir():
            top = controller / "kubepods"
            if not top.is_dir():
                continue
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for directory in [*dirs, top]:
                with contextlib.suppress(OSError):
                    directory.rmdir()

    def _remove_iptables(self) -> None:
        """KUBE-* chains (and our isolation chain) in every table, and every jump to them."""
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool) is None:
                continue
            for table in ("filter", "nat", "mangle"):
                rules = sh(tool, "-t", table, "-S", check=False, quiet=True).splitlines()
                ours = [
                    r.split()[1]
                    for r in rules
                    if r.startswith("-N ") and r.split()[1].startswith(("KUBE-", ISOLATION_CHAIN))
                ]
                for rule in rules:
                    words = shlex.split(rule)
                    if (
                        words[:1] == ["-A"]
                        and words[1] not in ours
                        and any(w in ours for w in words[2:])
                    ):
                        sh(tool, "-t", table, "-D", *words[1:], check=False)
                for chain in ours:
                    sh(tool, "-t", table, "-F", chain, check=False, quiet=True)
                for chain in ours:
                    sh(tool, "-t", table, "-X", chain, check=False)

    # -- status and locking ---------------------------------------------------------------------

    def status(self) -> str:
        """One line per component, then the node's readiness."""
        self.state = State.load(self.state_file)
        if not self.state.processes:
            return "cluster: down (nothing recorded)"
        lines = [
            f"{name:24} pid {self.state.processes[name][0]:>7}  {'running' if ok else 'GONE'}"
            for name, ok in self.running().items()
        ]
        lines.append(f"node {NODE_NAME}: {'Ready' if self.node_ready() else 'not Ready'}")
        lines.append(f"KUBECONFIG={self.kubeconfig} BLUEGREEN_NODE={NODE_IP}")
        return "\n".join(lines)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One `up`/`down` at a time on this machine."""
        lock_path = Path(str(self.dir) + ".lock")
        with lock_path.open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"waiting for another bin/cluster up/down ({lock_path})")
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Wait until a TCP connect to host:port succeeds."""

    def connects() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return True
        return False

    wait_for(f"{host}:{port} accepting connections", connects, timeout)


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 5
) -> tuple[int, dict[str, str], str]:
    """One GET (a fresh connection); status, headers (lower-case names) and body text."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return (
                int(response.status),
                {k.lower(): v for k, v in response.headers.items()},
                response.read().decode(errors="replace"),
            )
    except urllib.error.HTTPError as error:
        return (
            int(error.code),
            {k.lower(): v for k, v in error.headers.items()},
            error.read().decode(errors="replace"),
        )
