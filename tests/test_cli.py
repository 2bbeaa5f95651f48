"""The `bluegreen` command as people type it: validate, status, completion, kubectl habits.

The cluster side (`--configmap` with -n and --context, switch, rollback, status against a real
kube-apiserver) is in tests/kubernetes/test_cli_cluster.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from controller.cli import main
from controller.kube import ConfigMapRef
from controller.kubeconfig import ClusterAccess, KubeconfigError, context_namespace

REPO = Path(__file__).resolve().parent.parent
VALID = "active: blue\nupstream.blue: http://127.0.0.1:1\nupstream.green: http://127.0.0.1:2\n"


@dataclass
class Ran:
    """What one `bluegreen` command did, run in this process (as the console script runs it)."""

    returncode: int
    stdout: str
    stderr: str


def bluegreen(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    saved_env = dict(os.environ)
    saved_stdin = sys.stdin
    try:
        os.environ.update(env or {})
        sys.stdin = io.TextIOWrapper(io.BytesIO((stdin or "").encode()))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's --help and usage errors
                code = int(exit_.code or 0)
    finally:
        sys.stdin = saved_stdin
        os.environ.clear()
        os.environ.update(saved_env)
    return Ran(code, out.getvalue(), err.getvalue())


def configmap(
    name: str, data: dict[str, object], namespace: str | None = None
) -> dict[str, object]:
    metadata: dict[str, object] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


RENDERED: list[dict[str, object]] = [
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "bluegreen"}},
    configmap("grafana-dashboards", {"board.json": "{}"}),
    configmap(
        "bluegreen",
        {"active": "green", "upstream.blue": "http://b:80", "upstream.green": "http://g:80"},
        "shop",
    ),
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bluegreen"}},
]


def stream(docs: list[dict[str, object]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def test_validate_a_rendered_stream_from_stdin() -> None:
    done = bluegreen("validate", "-f", "-", stdin=stream(RENDERED))
    assert done.returncode == 0, done.stderr
    assert "ConfigMap shop/bluegreen (document 3): valid (active=green, colours: blue, green)" in (
        done.stdout
    )
    assert "skipped 3 documents" in done.stdout
    assert "ConfigMap grafana-dashboards (document 2)" in done.stdout


def test_validate_a_stream_with_a_bad_bluegreen_configmap_fails_and_names_it() -> None:
    bad = [*RENDERED[:2], configmap("bluegreen", {"active": "purple", "upstream.blue": "http://b"})]
    done = bluegreen("validate", "-f", "-", stdin=stream(bad))
    assert done.returncode == 2
    assert "ConfigMap bluegreen (document 3): invalid" in done.stderr
    assert "'purple'" in done.stderr


def test_validate_a_stream_without_any_bluegreen_config_fails() -> None:
    done = bluegreen("validate", "-f", "-", stdin=stream([RENDERED[0], RENDERED[3]]))
    assert done.returncode == 2
    assert "found no bluegreen config among 2 documents" in done.stderr


def test_validate_name_picks_one_configmap(tmp_path: Path) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(stream(RENDERED))
    assert bluegreen("validate", "-f", str(path), "--name", "bluegreen").returncode == 0
    missing = bluegreen("validate", "-f", str(path), "--name", "other")
    assert missing.returncode == 2
    assert "found no ConfigMap named 'other' among 4 documents" in missing.stderr


def test_validate_a_single_file_positional_or_with_f(tmp_path: Path) -> None:
    path = tmp_path / "bluegreen.yaml"
    path.write_text(VALID)
    for args in ([str(path)], ["-f", str(path)]):
        done = bluegreen("validate", *args)
        assert done.returncode == 0, done.stderr
        assert f"{path}: valid (active=blue, colours: blue, green)" in done.stdout
    both = bluegreen("validate", str(path), "-f", str(path))
    assert both.returncode == 2 and "needs one file" in both.stderr
    absent = bluegreen("validate", str(tmp_path / "absent.yaml"))
    assert absent.returncode == 2 and "cannot read" in absent.stderr


def test_validate_reports_yaml_faults_of_a_stream_with_the_line() -> None:
    done = bluegreen("validate", "-f", "-", stdin="active: blue\n---\nkind: [\n")
    assert done.returncode == 2
    assert "invalid YAML at line" in done.stderr


def test_status_of_a_file_in_every_output_and_its_exit_codes(tmp_path: Path) -> None:
    path = tmp_path / "bluegreen.yaml"
    path.write_text(VALID)
    text = bluegreen("status", "--config", str(path))
    assert text.returncode == 0, text.stderr
    assert "desired       blue" in text.stdout and "active        blue" in text.stdout
    as_json = json.loads(bluegreen("status", "--config", str(path), "-o", "json").stdout)
    as_yaml = yaml.safe_load(bluegreen("status", "--config", str(path), "-o", "yaml").stdout)
    assert as_json == as_yaml
    assert as_json["desired"] == as_json["active"] == "blue"
    assert as_json["upstreams"] == {"blue": "http://127.0.0.1:1", "green": "http://127.0.0.1:2"}
    assert as_json["served_reason"] is None and as_json["valid"] is True
    path.write_text(VALID.replace("active: blue", "active: purple"))
    invalid = bluegreen("status", "--config", str(path), "-o", "json")
    assert invalid.returncode == 3
    assert json.loads(invalid.stdout)["valid"] is False
    assert "'purple'" in json.loads(invalid.stdout)["error"]


def test_status_watch_prints_each_change(tmp_path: Path) -> None:
    path = tmp_path / "bluegreen.yaml"
    path.write_text(VALID)
    command = [sys.executable, "-m", "controller.cli", "status", "--config", str(path)]
    with subprocess.Popen(
        [*command, "-o", "json", "--watch", "--interval", "50ms"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watching:
        try:
            assert watching.stdout is not None
            first = json.loads(watching.stdout.readline())
            path.write_text(VALID.replace("active: blue", "active: green"))
            second = json.loads(watching.stdout.readline())
        finally:
            watching.terminate()
    assert (first["active"], second["active"]) == ("blue", "green")


def test_commands_print_results_not_log_lines(tmp_path: Path) -> None:
    path = tmp_path / "bluegreen.yaml"
    path.write_text(VALID)
    done = bluegreen("switch", "green", "--config", str(path))
    assert done.returncode == 0
    assert done.stdout == f"switched blue -> green in {path}\n"
    assert done.stderr == ""


def test_a_missing_kubeconfig_says_what_to_pass(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "KUBECONFIG": "", "KUBERNETES_SERVICE_HOST": ""}
    done = bluegreen("status", "--configmap", "bluegreen", env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("bluegreen: no kubeconfig found")
    assert "--kubeconfig PATH" in done.stderr
    assert "current-context" not in done.stderr and "Traceback" not in done.stderr
    given = bluegreen("status", "--configmap", "x/y", "--kubeconfig", str(tmp_path / "nope"))
    assert given.returncode == 2
    assert "does not exist" in given.stderr


def test_namespace_and_ns_name_must_agree() -> None:
    done = bluegreen("status", "--configmap", "shop/bluegreen", "-n", "other")
    assert done.returncode == 2
    assert "names namespace 'shop' but -n says 'other'" in done.stderr
    bad = bluegreen("status", "--configmap", "Blue_Green", "-n", "shop")
    assert bad.returncode == 2 and "not the name of a ConfigMap" in bad.stderr


def kubeconfig(tmp_path: Path, current: str | None, contexts: dict[str, str | None]) -> Path:
    document: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [
            {
                "name": name,
                "context": {"cluster": "c", "user": "u", **({"namespace": ns} if ns else {})},
            }
            for name, ns in contexts.items()
        ],
    }
    if current is not None:
        document["current-context"] = current
    path = tmp_path / f"kubeconfig-{len(list(tmp_path.iterdir()))}"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    ("current", "context", "expected"),
    [
        ("shop", None, "shop-ns"),  # the current context's namespace
        ("plain", None, "default"),  # a context without namespace: default, like kubectl
        ("shop", "plain", "default"),  # --context wins over current-context
        ("plain", "shop", "shop-ns"),
        (None, "shop", "shop-ns"),
    ],
)
def test_context_namespace(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    current: str | None,
    context: str | None,
    expected: str,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = kubeconfig(tmp_path, current, {"shop": "shop-ns", "plain": None})
    assert context_namespace(ClusterAccess(path, context)) == expected


def test_context_namespace_errors_name_the_contexts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = kubeconfig(tmp_path, None, {"shop": "shop-ns", "plain": None})
    with pytest.raises(
        KubeconfigError, match=r"no current-context; pass --context NAME \(one of: plain, shop\)"
    ):
        context_namespace(ClusterAccess(path))
    with pytest.raises(KubeconfigError, match="context 'absent' is not in the kubeconfig"):
        context_namespace(ClusterAccess(path, "absent"))


def test_kubeconfig_env_lists_files_and_the_first_current_context_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    first = kubeconfig(tmp_path, "plain", {"plain": None})
    second = kubeconfig(tmp_path, "shop", {"shop": "shop-ns"})
    monkeypatch.setenv(
        "KUBECONFIG", f"{tmp_path / 'absent'}{os.pathsep}{first}{os.pathsep}{second}"
    )
    assert context_namespace(ClusterAccess()) == "default"
    assert context_namespace(ClusterAccess(context="shop")) == "shop-ns"


def test_configmap_ref_resolve() -> None:
    assert ConfigMapRef.resolve("bluegreen", "shop") == ConfigMapRef("shop", "bluegreen")
    assert ConfigMapRef.resolve("other/bluegreen", "shop") == ConfigMapRef("other", "bluegreen")
    with pytest.raises(ValueError, match="not the name of a ConfigMap"):
        ConfigMapRef.resolve("Blue", "shop")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_cover_every_command(shell: str) -> None:
    done = bluegreen("completion", shell)
    assert done.returncode == 0, done.stderr
    for word in ("status", "switch", "rollback", "validate", "--configmap", "--namespace"):
        assert word in done.stdout, (shell, word)


def test_bash_completion_script_loads_in_bash() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    script = bluegreen("completion", "bash").stdout
    done = subprocess.run(
        [bash, "-c", f"{script}\ncomplete -p bluegreen"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "bluegreen" in done.stdout


def test_help_shows_defaults_and_examples() -> None:
    done = bluegreen("run", "--help")
    assert "(default: 0.0.0.0:8080)" in done.stdout
    assert "examples:" in done.stdout
    status = bluegreen("status", "--help").stdout
    assert "exit status:" in status and "(default: text)" in status
    assert "(default: None)" not in status


def test_kubectl_plugin_name() -> None:
    plugin = Path(sys.executable).parent / "kubectl-bluegreen"
    assert plugin.exists(), "bin/setup installs the console scripts"
    done = subprocess.run(
        [str(plugin), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert done.stdout.startswith("usage: kubectl bluegreen")
    completion = subprocess.run(
        [str(plugin), "completion", "bash"], capture_output=True, text=True, timeout=60, check=False
    )
    assert "kubectl-bluegreen" in completion.stdout or "kubectl bluegreen" in completion.stdout


def test_validate_refuses_non_string_configmap_data_as_the_api_server_does() -> None:
    data = {"active": "blue", "upstream.blue": "http://b", "upstream.green": "http://g"}
    manifest = configmap("bluegreen", {**data, "health.failureThreshold": 3})
    done = bluegreen("validate", "-f", "-", stdin=stream([manifest, RENDERED[0]]))
    assert done.returncode == 2
    assert 'quote it (health.failureThreshold: "3")' in done.stderr
