"""kubeconfig ``exec`` credential plugins run with a deadline (agent/kube_exec.py, through make_api_client).

The client library runs the plugin with no timeout, at load and on every token refresh: a plugin that hangs hung
``fleetpilot run`` / ``handover`` for ever. Real kubeconfigs, a real plugin (a shell script) and a real HTTP server
that records the credential each request carries; every call that could hang runs under a hard deadline, so a
regression fails instead of hanging.
"""

from __future__ import annotations

import datetime
import json
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from fleetpilot.agent import kube_exec
from fleetpilot.agent.cli import main
from fleetpilot.agent.kube import make_api_client
from fleetpilot.agent.kube_exec import ExecCredentialError, load_kubeconfig
from fleetpilot.agent.prom import redact
from fleetpilot.simulations.errors import UserError
from testbed.api_recorder import AuthRecordingServer, UtcClock, serve_auth_recorder
from testbed.prometheus import run_within

ROOT = Path(__file__).resolve().parents[1]
GOAL_PATH = ROOT / "examples" / "goals" / "single-model.yaml"
TIMEOUT_S = 1.0
MARGIN_S = 8.0  # generous for a loaded machine; without the bound the plugin sleeps 1000 s
ENV_SECRET = "env-SECRET-4242"
ARG_SECRET = "arg-SECRET-7777"
API_VERSION = "client.authentication.k8s.io/v1"

PLUGIN = r"""#!/bin/sh
dir=$(dirname "$0")
case "$(cat "$dir/mode")" in
  hang) sleep 1000 & echo $! > "$dir/child.pid"; wait ;;
  fail) echo "failed with $EXEC_SECRET $1" >&2; exit 3 ;;
  garbage) echo "not json $EXEC_SECRET" ;;
  ok) n=$(( $(cat "$dir/count" 2>/dev/null || echo 0) + 1 )); echo $n > "$dir/count"
      printf '{"apiVersion":"%s","kind":"ExecCredential","status":{"token":"tok-EXEC-%s","expirationTimestamp":"%s"}}\n' \
        "$API_VERSION" "$n" "$(cat "$dir/expiry")" ;;
esac
"""


def _setup(tmp_path: Path, mode: str, server: str = "http://127.0.0.1:1", expiry: str = "2999-01-01T00:00:00Z",
           ) -> Path:
    plugin = tmp_path / "plugin.sh"
    plugin.write_text(PLUGIN.replace("$API_VERSION", API_VERSION))
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "mode").write_text(mode)
    (tmp_path / "expiry").write_text(expiry)
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "robot"}}],
        "users": [{"name": "robot", "user": {"exec": {
            "apiVersion": API_VERSION, "command": str(plugin), "args": [ARG_SECRET],
            "env": [{"name": "EXEC_SECRET", "value": ENV_SECRET}], "interactiveMode": "Never"}}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _within(limit_s: float, fn: Callable[[], Any]) -> tuple[Any, BaseException | None, float]:
    """``fn()`` in a thread; (value, exception, seconds). Fails the test if it is still running after ``limit_s``."""
    return run_within(limit_s, fn, "the plugin was not bounded")


def _gone(pid: int, limit_s: float = MARGIN_S) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within ``limit_s``."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        threading.Event().wait(0.05)
    return False


def _no_secrets(text: str) -> None:
    assert ENV_SECRET not in text and ARG_SECRET not in text, text


def test_a_hanging_plugin_is_killed_at_the_deadline(tmp_path: Path) -> None:
    path = _setup(tmp_path, "hang")
    _, err, elapsed = _within(TIMEOUT_S + MARGIN_S, lambda: make_api_client(str(path), exec_timeout_s=TIMEOUT_S))
    assert isinstance(err, UserError), err
    msg = str(err)
    assert msg.startswith(f"{path}: cannot load Kubernetes configuration: kubeconfig user 'robot': exec credential "
                          f"plugin '{tmp_path / 'plugin.sh'}' did not answer within 1s (killed)"), msg
    assert "\n" not in msg
    _no_secrets(msg)
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + MARGIN_S, elapsed
    child = int((tmp_path / "child.pid").read_text())  # the script's own child: killed with its process group
    assert _gone(child), f"the plugin's child {child} outlived the timeout"


@pytest.mark.parametrize("command", ["handover", "run"])
def test_the_cli_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    monkeypatch.setattr(kube_exec, "EXEC_TIMEOUT_S", TIMEOUT_S)
    path = _setup(tmp_path, "hang")
    argv = ["handover", "--goal", str(GOAL_PATH), "--kubeconfig", str(path)] if command == "handover" else \
        ["run", "--goal", str(GOAL_PATH), "--policy", "hpa", "--once", "--warmup", "0", "--kubeconfig", str(path),
         "--prometheus", "http://127.0.0.1:1"]
    code, err, _ = _within(TIMEOUT_S + 3 * MARGIN_S, lambda: main(argv))
    assert err is None, err
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert "kubeconfig user 'robot': exec credential plugin" in stderr and "did not answer within 1s" in stderr
    _no_secrets(stderr)


@pytest.mark.parametrize(("mode", "expected"), [
    ("fail", "exited with status 3 (its messages are not shown"),
    ("garbage", "printed no JSON ExecCredential"),
])
def test_a_failing_plugin_is_one_line_without_its_output(tmp_path: Path, mode: str, expected: str) -> None:
    """The library logged the plugin's stderr and went on without credentials; now: one line, nothing it printed."""
    path = _setup(tmp_path, mode)
    _, err, _ = _within(MARGIN_S, lambda: make_api_client(str(path), exec_timeout_s=5.0))
    assert isinstance(err, UserError) and expected in str(err), err
    assert "kubeconfig user 'robot'" in str(err)
    _no_secrets(str(err))


# ------------------------------------------------------------------------------------------------ a working plugin


@pytest.fixture
def api_server() -> Iterator[AuthRecordingServer]:
    yield from serve_auth_recorder()


def _url(srv: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_a_working_plugin_authenticates(tmp_path: Path, api_server: ThreadingHTTPServer) -> None:
    path = _setup(tmp_path, "ok", server=_url(api_server))
    client, err, _ = _within(MARGIN_S, lambda: make_api_client(str(path), exec_timeout_s=5.0))
    assert err is None, err
    for _ in range(2):  # not expiring: the plugin runs once
        kubernetes.client.CoreV1Api(client).read_namespace("x", _request_timeout=5.0)
    assert api_server.seen == ["Bearer tok-EXEC-1"] * 2  # type: ignore[attr-defined]
    assert (tmp_path / "count").read_text().strip() == "1"
    assert redact("token tok-EXEC-1") == "token ***"  # the plugin's token is a secret


def test_the_refresh_is_bounded_too(tmp_path: Path, api_server: ThreadingHTTPServer) -> None:
    """An expiring token makes the library re-run the plugin before a call: bounded, and an OSError (temporary)."""
    path = _setup(tmp_path, "ok", server=_url(api_server), expiry="2000-01-01T00:00:00Z")
    client, err, _ = _within(MARGIN_S, lambda: make_api_client(str(path), exec_timeout_s=TIMEOUT_S))
    assert err is None, err
    core = kubernetes.client.CoreV1Api(client)
    core.read_namespace("x", _request_timeout=5.0)
    assert api_server.seen == ["Bearer tok-EXEC-2"]  # type: ignore[attr-defined]  # refreshed before the call
    assert redact("tok-EXEC-2") == "***"
    (tmp_path / "mode").write_text("hang")
    _, err, elapsed = _within(TIMEOUT_S + MARGIN_S, lambda: core.read_namespace("x", _request_timeout=5.0))
    assert isinstance(err, ExecCredentialError) and isinstance(err, OSError), err
    assert "did not answer within 1s (killed)" in str(err) and elapsed < TIMEOUT_S + MARGIN_S
    _no_secrets(str(err))
    assert len(api_server.seen) == 1  # type: ignore[attr-defined]  # no request went out without a credential
    assert _gone(int((tmp_path / "child.pid").read_text()))


def test_a_short_lived_credential_is_renewed_half_way_not_before_every_call(
        tmp_path: Path, api_server: ThreadingHTTPServer) -> None:
    """A plugin whose token lives 2 minutes: the library re-ran it before every API call (its rule renews from five
    minutes before the expirationTimestamp); it now runs again half-way through the token's lifetime."""
    clock = UtcClock()
    t0 = clock.epoch()
    exp = datetime.datetime.fromtimestamp(t0 + 120.0, tz=datetime.UTC)
    path = _setup(tmp_path, "ok", server=_url(api_server), expiry=exp.strftime("%Y-%m-%dT%H:%M:%SZ"))
    cfg = kubernetes.client.Configuration()
    _, err, _ = _within(MARGIN_S, lambda: load_kubeconfig(str(path), cfg, exec_timeout_s=5.0, clock=clock))
    assert err is None, err
    core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(cfg))
    renew = int(t0 + 120.0) - (int(t0 + 120.0) - t0) / 2  # the timestamp has whole seconds; issued at t0
    for at in (None, None, renew - 1.0):
        if at is not None:
            clock.at(at)
        core.read_namespace("x", _request_timeout=5.0)
    assert (tmp_path / "count").read_text().strip() == "1"  # one run for three calls
    clock.at(renew + 1.0)
    core.read_namespace("x", _request_timeout=5.0)
    assert (tmp_path / "count").read_text().strip() == "2"
    assert api_server.seen == ["Bearer tok-EXEC-1"] * 3 + ["Bearer tok-EXEC-2"]  # type: ignore[attr-defined]


def test_the_exec_timeout_must_be_positive_and_finite(tmp_path: Path) -> None:
    path = _setup(tmp_path, "ok")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="exec_timeout_s"):
            make_api_client(str(path), exec_timeout_s=bad)
    assert not (tmp_path / "count").exists()  # refused before the plugin ran


def test_a_malformed_exec_section_never_shows_its_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An env entry without a value: the library's message (and its log line) held the whole user, env values
    included."""
    path = _setup(tmp_path, "ok")
    config = json.loads(path.read_text())
    config["users"][0]["user"]["exec"]["env"].append({"name": "NO_VALUE"})
    path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="malformed exec section") as exc:
        make_api_client(str(path), exec_timeout_s=5.0)
    _no_secrets(str(exc.value))
    _no_secrets(capsys.readouterr().err)
    assert not (tmp_path / "count").exists()


def test_a_kubeconfig_error_never_shows_a_users_token(tmp_path: Path) -> None:
    """A users entry without a name: the library names it by the repr of the whole entry, its token too."""
    path = _setup(tmp_path, "ok")
    config = json.loads(path.read_text())
    config["users"].insert(0, {"user": {"token": "tok-NAMELESS-31337"}})
    path.write_text(json.dumps(config))
    with pytest.raises(UserError, match="cannot load Kubernetes configuration") as exc:
        make_api_client(str(path), exec_timeout_s=5.0)
    assert "tok-NAMELESS-31337" not in str(exc.value) and "{...}" in str(exc.value), exc.value


# ------------------------------------------------------------------------------------------------ --kube-exec-timeout


def _argv(command: str, path: Path, *extra: str) -> list[str]:
    if command == "handover":
        return ["handover", "--goal", str(GOAL_PATH), "--kubeconfig", str(path), *extra]
    return ["run", "--goal", str(GOAL_PATH), "--policy", "hpa", "--once", "--warmup", "0", "--kubeconfig", str(path),
            "--prometheus", "http://127.0.0.1:1", *extra]


@pytest.mark.parametrize("command", ["handover", "run"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc", "601"])
def test_a_bad_kube_exec_timeout_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str,
                                                    value: str) -> None:
    path = _setup(tmp_path, "ok")
    code, err, _ = _within(MARGIN_S, lambda: main(_argv(command, path, f"--kube-exec-timeout={value}")))
    assert err is None, err
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert "--kube-exec-timeout" in stderr, stderr
    assert not (tmp_path / "count").exists()  # refused before the plugin ran


@pytest.mark.parametrize("command", ["handover", "run"])
def test_the_kube_exec_timeout_flag_sets_the_plugins_deadline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              command: str) -> None:
    path = _setup(tmp_path, "hang")
    code, err, elapsed = _within(2.0 + 3 * MARGIN_S, lambda: main(_argv(command, path, "--kube-exec-timeout", "2")))
    assert err is None, err
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "kubeconfig user 'robot': exec credential plugin" in stderr and "did not answer within 2s (killed)" in stderr
    assert 2.0 * 0.9 <= elapsed < 2.0 + 3 * MARGIN_S, elapsed
    assert _gone(int((tmp_path / "child.pid").read_text()))
