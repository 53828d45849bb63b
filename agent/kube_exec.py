"""kubeconfig ``exec`` credential plugins, run with a deadline.

The official client runs a kubeconfig user's ``exec`` plugin (``aws eks get-token``, ``gke-gcloud-auth-plugin``,
``kubelogin``...) with ``subprocess`` and no timeout (``kubernetes.config.exec_provider.ExecProvider.run``), at
load time and again on every token refresh -- the ``refresh_api_key_hook`` it installs re-runs the plugin before an
API call once the token is within five minutes of its ``expirationTimestamp`` (for a token that lives five minutes
or less: before every call; fleetpilot's hook renews half-way through such a lifetime, :func:`refresh_at`). A
plugin that hangs (waiting for a browser login, a network call without its own timeout) would hang ``fleetpilot
run`` or ``handover`` at start, or the daemon's interval later. It also swallows the plugin's failure (logging it, stderr included) and goes on
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

The library's legacy ``auth-provider`` users are handled as kubectl (>= 1.26) does:

* ``gcp`` and ``azure`` (removed from kubectl and client-go in 1.26; the library ran ``cmd-path`` without a timeout
  or needed ``google.auth``) are refused with one line, :class:`AuthProviderError`, naming the user and the exec
  plugin that replaces them (``gke-gcloud-auth-plugin``, ``kubelogin``) -- never the provider's config values;
* ``oidc``: the id-token's JWT ``exp`` sets the loader's expiry, so the refresh hook reloads it before an API call
  once it is within five minutes of expiring, or half-way through a shorter lifetime (``iat`` to ``exp``;
  :func:`refresh_at`) -- the library never set it: a daemon kept an expired token. An expired id-token is refreshed
  here (:func:`refresh_oidc_token`), not by the library (which fetched the discovery document with TLS verification
  **off** when no IdP CA was configured, and had no timeout): TLS verified (the IdP CA from
  ``idp-certificate-authority[-data]``, else the default CAs), the discovery document and the token endpoint within
  :data:`EXEC_TIMEOUT_S` (the loader's ``exec_timeout_s``) in total, bodies capped (:data:`MAX_OIDC_BODY_BYTES`).
  The new id-token (and refresh-token) are stored in the kubeconfig as kubectl does; id-token, refresh-token and
  client-secret are secrets. A failure is an :class:`ExecCredentialError` naming the user and the issuer's host --
  never a token, a secret or what the IdP answered.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import math
import os
import selectors
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import kubernetes.client
import requests
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.exec_provider import ExecProvider
from kubernetes.config.kube_config import (
    EXPIRY_SKEW_PREVENTION_DELAY,
    KUBE_CONFIG_DEFAULT_LOCATION,
    ConfigNode,
    FileOrData,
    KubeConfigLoader,
    KubeConfigMerger,
    _create_temp_file_with_content,
    parse_rfc3339,
)

__all__ = ["EXEC_TIMEOUT_S", "MAX_EXEC_OUTPUT_BYTES", "MAX_OIDC_BODY_BYTES", "AuthProviderError",
           "ExecCredentialError", "load_kubeconfig", "refresh_oidc_token", "run_exec_plugin"]

log = logging.getLogger(__name__)

#: seconds an exec credential plugin has to print its ExecCredential (cloud CLIs take 1-10 s, a cold start more)
EXEC_TIMEOUT_S = 30.0
#: the most an exec plugin may print (a credential with a client certificate and key is a few KiB)
MAX_EXEC_OUTPUT_BYTES = 1 << 20
_KILL_WAIT_S = 5.0  # after SIGKILL: how long to wait for the plugin to be reaped
#: the most an OIDC IdP may answer (a discovery document or a token response is a few KiB)
MAX_OIDC_BODY_BYTES = 1 << 20


class ExecCredentialError(OSError):
    """A kubeconfig ``exec`` credential plugin failed, timed out or printed no usable ``ExecCredential`` -- or an
    ``oidc`` auth-provider's id-token could not be refreshed."""


class AuthProviderError(ConfigException):  # type: ignore[misc]
    """A kubeconfig user's ``auth-provider`` that cannot be used (``gcp``/``azure``: removed from kubectl in 1.26;
    a malformed ``oidc`` section). The message names the user, never the provider's config values."""


#: auth-providers kubectl and client-go removed in 1.26, and the exec plugin that replaces each
_REMOVED_AUTH_PROVIDERS = {
    "gcp": "the gke-gcloud-auth-plugin exec plugin instead (gcloud components install gke-gcloud-auth-plugin, then "
           "gcloud container clusters get-credentials CLUSTER rewrites the kubeconfig user to use it)",
    "azure": "the kubelogin exec plugin instead (install kubelogin -- az aks install-cli --, then kubelogin "
             "convert-kubeconfig -l azurecli rewrites the kubeconfig user to use it)",
}


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


# ------------------------------------------------------------------------------------------------ oidc auth-provider


def _url_host(url: Any) -> str | None:
    """``host[:port]`` of an ``http(s)`` URL (never its userinfo); None when ``url`` is not one."""
    if not isinstance(url, str):
        return None
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host + (f":{port}" if port else "")


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT; None when ``token`` is not shaped as one by the library's checks (URL-safe characters,
    three parts, a possible base64url length) -- the library then ignores the auth-provider, and so does this
    loader. Raises ValueError when the payload is not base64url JSON (the library's traceback)."""
    if any(c in token for c in "=+/"):
        return None
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) % 4 == 1:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)).decode("utf-8"))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise ValueError("its payload is not base64url JSON") from None
    if not isinstance(claims, dict):
        raise ValueError("its payload is not a JSON object")
    return claims


def _jwt_expiry(claims: dict[str, Any]) -> datetime.datetime | None:
    """The ``exp`` claim as an aware datetime (None: the token has none and never expires, as for the library)."""
    exp = claims.get("exp")
    if exp is None:
        return None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise ValueError("its exp claim is not a number")
    try:
        return datetime.datetime.fromtimestamp(exp, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError("its exp claim is not a valid time") from None


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def refresh_at(expiry: datetime.datetime, issued: datetime.datetime) -> datetime.datetime:
    """When a credential valid until ``expiry``, issued at ``issued``, is renewed: the library's five minutes
    before ``expiry`` (``EXPIRY_SKEW_PREVENTION_DELAY``), or half-way through its lifetime when that is later.

    The library's rule alone renews a credential that lives five minutes or less (Keycloak's default access- and
    id-token lifespan is 5 minutes) before *every* API call: an IdP round trip or an exec plugin's run per call.
    Half the lifetime keeps a refresh at most every half lifetime, with half of it left as the margin; client-go
    renews an oidc id-token 10 s before it expires, an exec credential when it has expired."""
    life = expiry - issued
    skew = min(EXPIRY_SKEW_PREVENTION_DELAY, max(datetime.timedelta(0), life / 2))
    return expiry - skew


def _jwt_issued(claims: dict[str, Any], expiry: datetime.datetime) -> datetime.datetime | None:
    """The ``iat`` claim (OpenID Connect requires it in an id-token) as an aware datetime, if it is a usable time
    not after ``expiry``; else None."""
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
        return None
    try:
        issued = datetime.datetime.fromtimestamp(iat, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return issued if issued <= expiry else None


def _token_like(value: Any) -> bool:
    """A non-empty string that can go into an HTTP header and a kubeconfig as it is (printable ASCII, no space)."""
    return isinstance(value, str) and bool(value) and all(33 <= ord(c) < 127 for c in value)


_OAUTH_ERRORS = frozenset({"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                           "unsupported_grant_type", "invalid_scope"})


def _oauth_error(body: bytes) -> str:
    """`` (invalid_grant...)`` when a token endpoint's error answer carries one of RFC 6749's error codes (a fixed
    vocabulary: nothing else of the answer is ever shown), else ``""``."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    code = data.get("error") if isinstance(data, dict) else None
    if not isinstance(code, str) or code not in _OAUTH_ERRORS:
        return ""
    return f" ({code}: the refresh-token was refused; log in again)" if code == "invalid_grant" else f" ({code})"


def refresh_oidc_token(issuer_url: str, *, client_id: str, client_secret: str | None, refresh_token: str,
                       verify: str | bool = True, timeout_s: float = EXEC_TIMEOUT_S,
                       what: str = "oidc id-token refresh") -> tuple[str, str | None]:
    """A new ``(id_token, refresh_token or None)`` from an OIDC IdP, as kubectl's oidc auth-provider gets them.

    GET ``{issuer_url}/.well-known/openid-configuration`` for its ``token_endpoint``, then POST it
    ``grant_type=refresh_token`` with the client's credentials in HTTP basic auth (RFC 6749 2.3.1; without a
    ``client_secret``, a public client: ``client_id`` in the form). TLS is always verified: ``verify`` is True (the
    default CAs) or a PEM CA bundle's path. Both requests together have ``timeout_s`` seconds (name lookup, connect,
    TLS, answers); no redirect is followed; answers are capped at :data:`MAX_OIDC_BODY_BYTES`. Every token and the
    client secret are registered as secrets. Raises :class:`ExecCredentialError` (``what``, then why: never a
    token, a secret or the IdP's answer -- only RFC 6749's error code)."""
    from fleetpilot.agent.deadline import DeadlineExceededError, DeadlineGuard
    from fleetpilot.agent.prom import TrackingAdapter, register_secret, tls_reason

    if verify is not True and not (isinstance(verify, str) and verify):
        raise ValueError("verify must be True or a CA bundle path: TLS to an IdP is never left unverified")
    if not 0 < timeout_s < float("inf"):
        raise ValueError(f"timeout_s must be a positive finite number of seconds, got {timeout_s!r}")
    register_secret(refresh_token)
    register_secret(client_secret)
    if _url_host(issuer_url) is None:
        raise ExecCredentialError(f"{what}: idp-issuer-url is not an http(s) URL")
    discovery = issuer_url.strip().rstrip("/") + "/.well-known/openid-configuration"
    guard = DeadlineGuard()
    session = requests.Session()
    adapter = TrackingAdapter(guard)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "fleetpilot"
    session.headers["Accept"] = "application/json"
    deadline = time.monotonic() + float(timeout_s)
    step = ["its discovery document"]

    def fetch(method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        left = max(0.001, deadline - time.monotonic())
        # verify per request: a session's own is overridden by $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE (requests#3829)
        resp = session.request(method, url, timeout=(left, left), stream=True, allow_redirects=False, verify=verify,
                               **kwargs)
        try:
            body = bytearray()
            for chunk in resp.iter_content(1 << 16):
                body += chunk
                if len(body) > MAX_OIDC_BODY_BYTES:
                    raise ExecCredentialError(f"{what}: {step[0]} is larger than {MAX_OIDC_BODY_BYTES} bytes")
            status = resp.status_code
        finally:
            resp.close()
        if status != 200:
            extra = _oauth_error(bytes(body)) if method == "POST" else ""
            raise ExecCredentialError(f"{what}: {step[0]} answered HTTP {status}{extra}")
        try:
            data = json.loads(bytes(body).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ExecCredentialError(f"{what}: {step[0]} is not JSON") from None
        if not isinstance(data, dict):
            raise ExecCredentialError(f"{what}: {step[0]} is not a JSON object")
        return data

    def whole() -> tuple[str, str | None]:
        endpoint = fetch("GET", discovery).get("token_endpoint")
        if _url_host(endpoint) is None:
            raise ExecCredentialError(f"{what}: its discovery document has no http(s) token_endpoint")
        if urllib.parse.urlsplit(discovery).scheme.lower() == "https" and \
                urllib.parse.urlsplit(endpoint.strip()).scheme.lower() != "https":
            raise ExecCredentialError(f"{what}: its token_endpoint is plain http while the issuer is https (the "
                                      "refresh-token is never sent unencrypted)")
        step[0] = "its token endpoint"
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        auth = None
        if client_secret:
            auth = (urllib.parse.quote_plus(client_id), urllib.parse.quote_plus(client_secret))
        else:
            form["client_id"] = client_id
        answer = fetch("POST", endpoint.strip(), data=form, auth=auth)
        for key in ("id_token", "refresh_token", "access_token"):
            register_secret(answer[key] if isinstance(answer.get(key), str) else None)
        if answer.get("id_token") in (None, ""):
            raise ExecCredentialError(f"{what}: its token endpoint answered without an id_token")
        if not _token_like(answer["id_token"]):
            raise ExecCredentialError(f"{what}: its token endpoint answered an id_token that is not a token")
        new_refresh = answer.get("refresh_token")
        return answer["id_token"], (new_refresh if _token_like(new_refresh) else None)

    try:
        return guard.call(whole, float(timeout_s), what)
    except ExecCredentialError:
        raise
    except (DeadlineExceededError, requests.exceptions.Timeout):
        raise ExecCredentialError(f"{what}: no complete answer from {step[0]} within {timeout_s:g}s") from None
    except requests.exceptions.SSLError as exc:
        raise ExecCredentialError(
            f"{what}: TLS to the IdP failed ({tls_reason(exc)}); if it uses a private CA, put it in the "
            "auth-provider's idp-certificate-authority-data (base64 PEM) or idp-certificate-authority (a file)") \
            from None
    except requests.exceptions.ConnectionError:
        raise ExecCredentialError(f"{what}: cannot connect to {step[0]}") from None
    except (requests.exceptions.RequestException, ValueError, TypeError, UnicodeError) as exc:
        raise ExecCredentialError(f"{what}: the request for {step[0]} failed ({type(exc).__name__})") from None
    finally:
        session.close()


class _BoundedLoader(KubeConfigLoader):  # type: ignore[misc]
    """The library's loader with its ``exec`` step bounded and failing loudly (at load and on refresh)."""

    def __init__(self, *args: Any, exec_timeout_s: float,
                 clock: Callable[[], datetime.datetime] = _utcnow, **kwargs: Any) -> None:
        self._exec_timeout_s = float(exec_timeout_s)
        self._oidc_lock = threading.Lock()  # one refresh at a time (a rotated refresh-token is good for one use)
        self._clock = clock
        self._issued: tuple[str, datetime.datetime] | None = None  # (credential, when it was issued or first seen)
        self._renew_at: datetime.datetime | None = None  # when the credential in use is renewed (refresh_at)
        super().__init__(*args, **kwargs)

    # -- when a credential is renewed --------------------------------------------------------------------------

    def _issued_at(self, credential: str, issued: datetime.datetime | None = None) -> datetime.datetime:
        """When ``credential`` was issued: ``issued`` if known (an id-token's ``iat``), else when this loader first
        saw it (a credential seen again keeps its first sighting, so its lifetime is not restarted on reload)."""
        if issued is None:
            issued = self._issued[1] if self._issued is not None and self._issued[0] == credential \
                else self._clock()
        self._issued = (credential, issued)
        return issued

    def _due(self, expiry: datetime.datetime, issued: datetime.datetime) -> bool:
        return refresh_at(expiry, issued) <= self._clock()

    def _set_expiry(self, expiry: datetime.datetime | None, issued: datetime.datetime) -> None:
        if expiry is None:
            self.__dict__.pop("expiry", None)  # never expires: the hook never reloads it
            self._renew_at = None
        else:
            self.expiry = expiry
            self._renew_at = refresh_at(expiry, issued)

    def _set_config(self, client_configuration: Any) -> None:
        """The library's, with its refresh hook's rule replaced by :func:`refresh_at` (the library reloads the
        credential before every call once it is within five minutes of expiring: every call, for a 5-min token)."""
        super()._set_config(client_configuration)
        if "token" not in self.__dict__:
            return

        def _refresh_api_key(configuration: Any) -> None:
            if "expiry" in self.__dict__:
                renew = self._renew_at if self._renew_at is not None else self.expiry - EXPIRY_SKEW_PREVENTION_DELAY
                if renew <= self._clock():
                    self._load_authentication()
            self._set_config(configuration)

        client_configuration.refresh_api_key_hook = _refresh_api_key

    def _user_name(self) -> Any:
        return self._current_context["context"].safe_get("user")

    # -- auth-provider: gcp and azure refused, oidc bounded and verified ----------------------------------------

    def _load_auth_provider_token(self) -> str | None:
        if "auth-provider" not in self._user:
            return None
        provider = self._user["auth-provider"]
        if not isinstance(provider, ConfigNode) or not isinstance(provider.value, dict) or "name" not in provider:
            return None
        name = provider["name"]
        if isinstance(name, str) and name in _REMOVED_AUTH_PROVIDERS:
            raise AuthProviderError(f"kubeconfig user {self._user_name()!r}: the {name!r} auth-provider was removed "
                                    f"from kubectl and client-go in Kubernetes 1.26 and is not supported; use "
                                    f"{_REMOVED_AUTH_PROVIDERS[name]}")
        if name == "oidc":
            return self._load_oid_token(provider)
        return None  # any other name: ignored, as the library does

    def _load_oid_token(self, provider: Any) -> str | None:
        """The library's rules (an id-token shaped as a JWT, not yet due for renewal -- :func:`refresh_at` -- or
        without ``exp``: used as it is), plus the expiry set for the refresh hook, and a bounded, verified refresh
        (:meth:`_refresh_oidc`)."""
        from fleetpilot.agent.prom import register_secret

        if "config" not in provider:
            return None
        config = provider["config"]
        who = f"kubeconfig user {self._user_name()!r}: oidc auth-provider"
        if not isinstance(config, ConfigNode) or not isinstance(config.value, dict):
            raise AuthProviderError(f"{who}: its config is not a mapping")
        values = config.value
        for key in ("id-token", "refresh-token", "client-secret"):
            register_secret(values[key] if isinstance(values.get(key), str) else None)
        if not self._oidc_lock.acquire(timeout=self._exec_timeout_s + _KILL_WAIT_S):
            raise ExecCredentialError(f"{who}: another refresh of its id-token did not finish")
        try:
            token = values.get("id-token")
            if token is not None and not isinstance(token, str):
                raise AuthProviderError(f"{who}: its id-token is not a string")
            if token:
                try:
                    claims = _jwt_claims(token)
                    if claims is None:
                        return None  # not shaped as a JWT: the library ignores the auth-provider
                    expiry = _jwt_expiry(claims)
                except ValueError as exc:
                    raise AuthProviderError(f"{who}: its id-token is not a valid JWT ({exc})") from None
                if expiry is None:
                    return self._use_id_token(token, None, self._issued_at(token))  # never expires
                issued = self._issued_at(token, _jwt_issued(claims, expiry))
                if not self._due(expiry, issued):
                    return self._use_id_token(token, expiry, issued)  # valid: no network call
            token, expiry, issued = self._refresh_oidc(provider)
            return self._use_id_token(token, expiry, self._issued_at(token, issued))
        finally:
            self._oidc_lock.release()

    def _use_id_token(self, token: str, expiry: datetime.datetime | None, issued: datetime.datetime) -> str:
        self.token = f"Bearer {token}"
        self._set_expiry(expiry, issued)  # the refresh hook reloads it at refresh_at(expiry, issued)
        return str(self.token)

    def _refresh_oidc(self, provider: Any) -> tuple[str, datetime.datetime | None,  # type: ignore[override]
                                                    datetime.datetime | None]:
        """Replaces the library's (TLS unverified without an IdP CA, no timeout, expiry never set): a new id-token
        from the IdP (:func:`refresh_oidc_token`), stored with the new refresh-token into the kubeconfig (persisted
        as kubectl does). Raises :class:`ExecCredentialError` (an OSError: during a run, a temporary failure)."""
        values = provider["config"].value
        issuer = values.get("idp-issuer-url")
        host = _url_host(issuer)
        what = f"kubeconfig user {self._user_name()!r}: oidc id-token refresh" + (f" at {host}" if host else "")
        if host is None:
            raise ExecCredentialError(f"{what}: idp-issuer-url is not an http(s) URL")
        refresh_token = values.get("refresh-token")
        if not _token_like(refresh_token):
            state = "has expired" if values.get("id-token") else "is missing"
            raise ExecCredentialError(f"{what}: the id-token {state} and there is no usable refresh-token to renew "
                                      "it (log in again)")
        client_id, client_secret = values.get("client-id"), values.get("client-secret")
        if not isinstance(client_id, str) or not client_id:
            raise ExecCredentialError(f"{what}: the auth-provider has no client-id")
        if client_secret is not None and not isinstance(client_secret, str):
            raise ExecCredentialError(f"{what}: the auth-provider's client-secret is not a string")
        id_token, new_refresh = refresh_oidc_token(
            issuer, client_id=client_id, client_secret=client_secret or None, refresh_token=refresh_token,
            verify=self._oidc_verify(values, what), timeout_s=self._exec_timeout_s, what=what)
        try:
            claims = _jwt_claims(id_token)
            if claims is None:
                raise ValueError("not shaped as a JWT")
            expiry = _jwt_expiry(claims)
        except ValueError:
            raise ExecCredentialError(f"{what}: the IdP answered an id_token that is not a valid JWT") from None
        issued = None if expiry is None else _jwt_issued(claims, expiry)
        values["id-token"] = id_token
        if new_refresh:
            values["refresh-token"] = new_refresh
        if self._config_persister:
            try:
                self._config_persister()
            except OSError as exc:  # a read-only kubeconfig (a mounted Secret): the new tokens live in memory
                log.warning("%s: the new id-token is used but could not be saved to the kubeconfig (%s)", what,
                            exc.strerror or type(exc).__name__)
        log.info("%s: a new id-token%s", what, "" if expiry is None else f", valid until {expiry:%Y-%m-%dT%H:%M:%SZ}")
        return id_token, expiry, issued

    def _oidc_verify(self, values: dict[str, Any], what: str) -> str | bool:
        """The IdP CA bundle's path (``idp-certificate-authority-data``, base64 PEM, else ``idp-certificate-
        authority``, a file), or True: the default CAs. Never False."""
        if values.get("idp-certificate-authority-data"):
            source = "idp-certificate-authority-data"
            try:
                pem = base64.b64decode("".join(str(values[source]).split()), validate=True)
            except (binascii.Error, ValueError):
                raise ExecCredentialError(f"{what}: {source} is not base64") from None
            try:
                ca = _create_temp_file_with_content(pem, self._temp_file_path)
            except OSError as exc:
                raise ExecCredentialError(f"{what}: cannot write {source} to a file "
                                          f"({exc.strerror or type(exc).__name__})") from None
        elif values.get("idp-certificate-authority"):
            source = "idp-certificate-authority"
            ca = str(values[source])  # as the library and kubectl take it: a path as given
        else:
            return True
        try:
            ssl.create_default_context(cafile=ca)
        except (OSError, ValueError) as exc:  # missing, unreadable, or no PEM certificate in it
            raise ExecCredentialError(f"{what}: {source} is not a usable PEM CA bundle "
                                      f"({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
        return ca

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
                # issued now: the plugin just ran (a token it cached is renewed by it when it needs to be)
                self._set_expiry(parse_rfc3339(status["expirationTimestamp"]), self._clock())
        except ExecCredentialError:
            raise
        except Exception as exc:  # noqa: BLE001 -- a bad timestamp or unwritable temp file: one line, no values
            raise ExecCredentialError(f"{what} returned an unusable ExecCredential ({type(exc).__name__})") \
                from None
        return True


def load_kubeconfig(config_file: str | None, client_configuration: kubernetes.client.Configuration, *,
                    exec_timeout_s: float = EXEC_TIMEOUT_S,
                    clock: Callable[[], datetime.datetime] = _utcnow) -> None:
    """``kubernetes.config.load_kube_config(config_file, client_configuration=...)`` with a bounded ``exec``
    plugin (at load and on every token refresh): :class:`ExecCredentialError` when it fails or times out.
    A credential with an expiry is renewed before the first API call from :func:`refresh_at` on (``clock``: the
    aware UTC time it reads)."""
    if not (0 < exec_timeout_s < float("inf")):
        raise ValueError(f"exec_timeout_s must be a positive finite number of seconds, got {exec_timeout_s!r}")
    merged = KubeConfigMerger(config_file if config_file is not None else KUBE_CONFIG_DEFAULT_LOCATION)
    if merged.config is None:
        raise ConfigException("Invalid kube-config file. No configuration found.")
    loader = _BoundedLoader(config_dict=merged.config, config_base_path=None, config_persister=merged.save_changes,
                            exec_timeout_s=exec_timeout_s, clock=clock)
    loader.load_and_set(client_configuration)
