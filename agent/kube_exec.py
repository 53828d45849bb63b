"""kubeconfig ``exec`` credential plugins, run with a deadline.

The official client runs a kubeconfig user's ``exec`` plugin (``aws eks get-token``, ``gke-gcloud-auth-plugin``,
``kubelogin``...) with ``subprocess`` and no timeout (``kubernetes.config.exec_provider.ExecProvider.run``), at
load time and again on every token refresh -- the ``refresh_api_key_hook`` it installs re-runs the plugin before an
API call once the token is within five minutes of its ``expirationTimestamp``. A plugin that hangs (waiting for a
browser login, a network call without its own timeout) would hang ``fleetpilot run`` or ``handover`` at start, or
the daemon's interval later. It also swallows the plugin's failure (logging it, stderr included) and goes on
without credentials.

:func:`load_kubeconfig` loads a kubeconfig as ``kubernetes.config.load_kube_config`` does (``$KUBECONFIG`` lists
merged, changed auth-provider tokens persisted), through a loader whose ``exec`` step is :func:`run_exec_plugin`:

* the plugin has ``timeout_s`` seconds (default :data:`EXEC_TIMEOUT_S`) to print its ``ExecCredential`` and exit;
  past it its whole process group is killed (it runs in a session of its own) and :class:`ExecCredentialError`
  is raised -- at load time and on every refresh alike;
* its output is capped (:data:`MAX_EXEC_OUTPUT_BYTES`); stdin is ``/dev/null`` and stderr discarded unless
  fleetpilot runs on a terminal (then, as kubectl does, the plugin may talk to the user there -- still bounded);
* a failure -- timed out, exit status, no valid ``ExecCredential`` -- is an :class:`ExecCredentialError` (an
  ``OSError``: the daemon's Kubernetes calls treat it as a temporary failure) whose message names the kubeconfig
  user and the plugin's command, never its arguments, its ``env`` values (they can hold tokens) or its output;
* every token a plugin returns is registered as a secret (:func:`fleetpilot.agent.prom.register_secret`), on
  refresh too.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Any

import kubernetes.client
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.exec_provider import ExecProvider
from kubernetes.config.kube_config import (
    KUBE_CONFIG_DEFAULT_LOCATION,
    FileOrData,
    KubeConfigLoader,
    KubeConfigMerger,
    parse_rfc3339,
)

__all__ = ["EXEC_TIMEOUT_S", "MAX_EXEC_OUTPUT_BYTES", "ExecCredentialError", "load_kubeconfig", "run_exec_plugin"]

#: seconds an exec credential plugin has to print its ExecCredential (cloud CLIs take 1-10 s, a cold start more)
EXEC_TIMEOUT_S = 30.0
#: the most an exec plugin may print (a credential with a client certificate and key is a few KiB)
MAX_EXEC_OUTPUT_BYTES = 1 << 20
_KILL_WAIT_S = 5.0  # after SIGKILL: how long to wait for the plugin to be reaped


class ExecCredentialError(OSError):
    """A kubeconfig ``exec`` credential plugin failed, timed out or printed no usable ``ExecCredential``."""


def _describe(user: str | None, command: Any) -> str:
    from fleetpilot.agent.prom import redact

    cmd = redact(str(command))
    cmd = cmd if len(cmd) <= 80 else "..." + cmd[-77:]
    return f"kubeconfig user {user!r}: exec credential plugin {cmd!r}" if user else \
        f"kubeconfig exec credential plugin {cmd!r}"


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the plugin's process group (a shell script's children too), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    try:
        proc.wait(timeout=_KILL_WAIT_S)
    except subprocess.TimeoutExpired:  # pragma: no cover -- SIGKILL is not ignorable
        pass


class _BoundedExecProvider(ExecProvider):  # type: ignore[misc]
    """The library's provider (its argument, env and ``KUBERNETES_EXEC_INFO`` handling) with a bounded ``run``."""

    def __init__(self, exec_config: Any, cwd: str | None, cluster: Any, *, timeout_s: float, what: str) -> None:
        super().__init__(exec_config, cwd, cluster)
        self.timeout_s = float(timeout_s)
        self.what = what

    def run(self, previous_response: Any = None) -> dict[str, Any]:
        interactive = hasattr(sys.stdout, "isatty") and sys.stdout.isatty()
        info: dict[str, Any] = {"apiVersion": self.api_version, "kind": "ExecCredential",
                                "spec": {"interactive": interactive}}
        if self.cluster:
            info["spec"]["cluster"] = dict(self.cluster.value)  # a copy: the kubeconfig itself stays as it was
            for ext in self.cluster.value.get("extensions") or ():
                if isinstance(ext, dict) and ext.get("name") == "client.authentication.k8s.io/exec":
                    info["spec"]["cluster"]["config"] = ext.get("extension")
                    break
        env = dict(self.env)
        env["KUBERNETES_EXEC_INFO"] = json.dumps(info)
        try:
            proc = subprocess.Popen(  # noqa: S603 -- the kubeconfig's own plugin, as kubectl runs it
                [str(a) for a in self.args], stdout=subprocess.PIPE,
                stdin=None if interactive else subprocess.DEVNULL,
                stderr=None if interactive else subprocess.DEVNULL,
                cwd=self.cwd, env=env, start_new_session=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ExecCredentialError(f"{self.what} cannot be started ({type(exc).__name__})") from None
        out = self._read(proc)
        return self._status(out)

    def _read(self, proc: subprocess.Popen[bytes]) -> bytes:
        assert proc.stdout is not None
        deadline = time.monotonic() + self.timeout_s
        buf = bytearray()
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        _kill(proc)
                        raise ExecCredentialError(f"{self.what} did not answer within {self.timeout_s:g}s "
                                                  "(killed)")
                    if not sel.select(left):
                        continue
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    buf += chunk
                    if len(buf) > MAX_EXEC_OUTPUT_BYTES:
                        _kill(proc)
                        raise ExecCredentialError(f"{self.what} printed more than {MAX_EXEC_OUTPUT_BYTES} bytes "
                                                  "(killed)")
            try:
                code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # closed its output but keeps running
                _kill(proc)
                raise ExecCredentialError(f"{self.what} did not exit within {self.timeout_s:g}s (killed)") from None
        finally:
            proc.stdout.close()
        if code != 0:
            raise ExecCredentialError(f"{self.what} exited with status {code} (its messages are not shown, they may "
                                      "hold credentials: run the command yourself to see them)")
        return bytes(buf)

    def _status(self, out: bytes) -> dict[str, Any]:
        try:
            data = json.loads(out.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ExecCredentialError(f"{self.what} printed no JSON ExecCredential") from None
        if not isinstance(data, dict) or data.get("kind") != "ExecCredential":
            raise ExecCredentialError(f"{self.what} printed no ExecCredential (expected kind: ExecCredential)")
        if data.get("apiVersion") != self.api_version:
            raise ExecCredentialError(f"{self.what} answered apiVersion {str(data.get('apiVersion'))[:60]!r}, "
                                      f"expected {str(self.api_version)[:60]!r} (the kubeconfig's)")
        status = data.get("status")
        if not isinstance(status, dict):
            raise ExecCredentialError(f"{self.what} printed an ExecCredential without a status object")
        return status


def run_exec_plugin(exec_config: Any, cwd: str | None, cluster: Any = None, *, user: str | None = None,
                    timeout_s: float = EXEC_TIMEOUT_S) -> dict[str, Any]:
    """Run a kubeconfig ``exec`` section (a ``ConfigNode``) with a deadline; its ``ExecCredential`` status.

    Raises :class:`ExecCredentialError` (message: the user and the command, never arguments, env or output)."""
    what = _describe(user, exec_config.safe_get("command") if hasattr(exec_config, "safe_get") else None)
    for key in ("command", "apiVersion"):
        if not (hasattr(exec_config, "safe_get") and exec_config.safe_get(key)):
            raise ExecCredentialError(f"{what}: the exec section has no {key}")
    try:
        provider = _BoundedExecProvider(exec_config, cwd, cluster, timeout_s=timeout_s, what=what)
    except (ConfigException, KeyError, TypeError, AttributeError):  # the library's text shows the env values
        raise ExecCredentialError(f"{what}: malformed exec section (args: a list of strings; env: a list of "
                                  "name/value pairs)") from None
    return provider.run()


class _BoundedLoader(KubeConfigLoader):  # type: ignore[misc]
    """The library's loader with its ``exec`` step bounded and failing loudly (at load and on refresh)."""

    def __init__(self, *args: Any, exec_timeout_s: float, **kwargs: Any) -> None:
        self._exec_timeout_s = float(exec_timeout_s)
        super().__init__(*args, **kwargs)

    def _load_from_exec_plugin(self) -> bool | None:
        from fleetpilot.agent.prom import register_secret

        if "exec" not in self._user:
            return None
        user = self._current_context["context"].safe_get("user")
        what = _describe(user, self._user["exec"].safe_get("command"))
        base_path = self._get_base_path(self._cluster.path)
        status = run_exec_plugin(self._user["exec"], base_path, self._cluster, user=user,
                                 timeout_s=self._exec_timeout_s)
        try:
            if isinstance(status.get("token"), str) and status["token"]:
                register_secret(status["token"])
                self.token = f"Bearer {status['token']}"
            elif isinstance(status.get("clientCertificateData"), str):
                if not isinstance(status.get("clientKeyData"), str):
                    raise ExecCredentialError(f"{what} returned clientCertificateData without clientKeyData")
                register_secret(status["clientKeyData"])
                self.cert_file = FileOrData(status, None, data_key_name="clientCertificateData",
                                            file_base_path=base_path, base64_file_content=False,
                                            temp_file_path=self._temp_file_path).as_file()
                self.key_file = FileOrData(status, None, data_key_name="clientKeyData",
                                           file_base_path=base_path, base64_file_content=False,
                                           temp_file_path=self._temp_file_path).as_file()
            else:
                raise ExecCredentialError(f"{what} returned neither a token nor clientCertificateData")
            if status.get("expirationTimestamp") is not None:
                self.expiry = parse_rfc3339(status["expirationTimestamp"])
        except ExecCredentialError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a bad timestamp or unwritable temp file: one line, no values
            raise ExecCredentialError(f"{what} returned an unusable ExecCredential ({type(exc).__name__})") \
                from None
        return True


def load_kubeconfig(config_file: str | None, client_configuration: kubernetes.client.Configuration, *,
                    exec_timeout_s: float = EXEC_TIMEOUT_S) -> None:
    """``kubernetes.config.load_kube_config(config_file, client_configuration=...)`` with a bounded ``exec``
    plugin (at load and on every token refresh): :class:`ExecCredentialError` when it fails or times out."""
    if not (0 < exec_timeout_s < float("inf")):
        raise ValueError(f"exec_timeout_s must be a positive finite number of seconds, got {exec_timeout_s!r}")
    merged = KubeConfigMerger(config_file if config_file is not None else KUBE_CONFIG_DEFAULT_LOCATION)
    if merged.config is None:
        raise ConfigException("Invalid kube-config file. No configuration found.")
    loader = _BoundedLoader(config_dict=merged.config, config_base_path=None, config_persister=merged.save_changes,
                            exec_timeout_s=exec_timeout_s)
    loader.load_and_set(client_configuration)
