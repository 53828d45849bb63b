"""A kubeconfig user's legacy ``auth-provider`` (agent/kube_exec.py, through make_api_client and the CLI).

The client library ran the ``gcp`` provider's ``cmd-path`` with no timeout (or needed google.auth), and refreshed an
``oidc`` id-token with TLS verification **off** when no IdP CA was configured, no timeout, and never during a run
(it never set the expiry the refresh hook looks at). Now: ``gcp`` / ``azure`` are refused with one line naming the
exec plugin that replaces them (as kubectl >= 1.26 does); ``oidc`` is refreshed at load and before the first call
after it expires, TLS verified, within the exec-plugin deadline, failures one line naming the user and the IdP's
host and never a token or secret.

Real kubeconfigs, a real IdP (a local HTTP or HTTPS server serving the discovery document and a token endpoint,
recording what it receives; it can hang, fail or answer garbage) and a real API server recording the credential of
each request. Every call that could hang runs under a hard limit (``run_within``), so a regression fails instead of
hanging.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from fleetpilot.agent.cli import main
from fleetpilot.agent.kube import make_api_client
from fleetpilot.agent.kube_exec import MAX_OIDC_BODY_BYTES, ExecCredentialError, load_kubeconfig
from fleetpilot.agent.prom import redact
from fleetpilot.simulations.errors import UserError
from testbed.api_recorder import AuthRecordingServer, UtcClock, serve_auth_recorder
from testbed.prometheus import reply_json, run_within, serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
GOAL_PATH = ROOT / "examples" / "goals" / "single-model.yaml"
TIMEOUT_S = 1.0
MARGIN_S = 8.0  # generous for a loaded machine; without the bound a hanging IdP holds the call for 60 s
USER = "alice"
CLIENT_ID = "fleetpilot-cli"
CLIENT_SECRET = "cs/SECRET+5678"  # '/' and '+': sent form-encoded in basic auth (RFC 6749 2.3.1), as kubectl does
REFRESH_TOKEN = "rt-SECRET-1234"
SKEW_S = 300.0  # the library's EXPIRY_SKEW_PREVENTION_DELAY: a token counts as expired 5 minutes before its exp


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt(**claims: Any) -> str:
    """An unsigned-looking JWT (the client never checks the signature; the API server would)."""
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    return f"{header}.{_b64url(json.dumps(claims).encode())}.c2lnbmF0dXJl"


EXPIRED = _jwt(sub=USER, exp=int(time.time()) - 3600, n="expired-SECRET")


def _secrets(*more: str) -> list[str]:
    return [CLIENT_SECRET, REFRESH_TOKEN, EXPIRED, "rt-NEW-SECRET", "at-SECRET", *more]


def _no_secrets(text: str, *more: str) -> None:
    for secret in _secrets(*more):
        assert secret not in text, text
    assert urllib.parse.quote(CLIENT_SECRET, safe="") not in text, text


# ------------------------------------------------------------------------------------------------ the IdP


class _QuickServer(ThreadingHTTPServer):
    """Shuts down within 50 ms (serve_forever's default poll of 0.5 s made each teardown half a second)."""

    daemon_threads = True

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        super().serve_forever(poll_interval)


class _IdPServer(_QuickServer):
    url: str
    modes: dict[str, str]
    seen: list[tuple[str, str, str | None, dict[str, str]]]
    issued: list[str]
    exp_in_s: float
    iat_age_s: float | None  # the issued id-token's iat is this long before now (None: no iat claim)
    clock: Callable[[], float]  # the IdP's time (epoch seconds) for the tokens it issues
    token_endpoint: str | None
    release: threading.Event

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused TLS handshake, a client that gave up on a huge answer: expected here


class _IdP(BaseHTTPRequestHandler):
    server: _IdPServer
    timeout = 20.0

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()  # in this thread: a client refusing the certificate ends only this request
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 -- http.server's name
        srv = self.server
        srv.seen.append(("GET", self.path, self.headers.get("Authorization"), {}))
        if self.path != "/.well-known/openid-configuration":
            reply_json(self, b'{"error":"not found"}', 404)
            return
        doc = {"issuer": srv.url, "token_endpoint": srv.token_endpoint or f"{srv.url}/token"}
        self._answer(srv.modes["discovery"], json.dumps(doc).encode())

    def do_POST(self) -> None:  # noqa: N802
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        srv.seen.append(("POST", self.path, self.headers.get("Authorization"), form))
        n = len(srv.issued) + 1
        now = srv.clock()
        iat = {} if srv.iat_age_s is None else {"iat": now - srv.iat_age_s}
        token = _jwt(sub=USER, **iat, exp=now + srv.exp_in_s, n=f"issued-{n}")
        body = {"id_token": token, "refresh_token": f"rt-NEW-SECRET-{n}", "access_token": f"at-SECRET-{n}",
                "token_type": "Bearer", "expires_in": 3600}
        self._answer(srv.modes["token"], json.dumps(body).encode(), issued=token)

    def _answer(self, mode: str, body: bytes, issued: str | None = None) -> None:
        srv = self.server
        if mode == "hang":
            srv.release.wait(60)
            return
        if mode == "500":
            reply_json(self, json.dumps({"error": "server_error", "echo": [REFRESH_TOKEN, CLIENT_SECRET]}).encode(),
                       500)
        elif mode == "garbage":
            reply_json(self, f"<html>not JSON {REFRESH_TOKEN} {CLIENT_SECRET}</html>".encode())
        elif mode == "no-id-token":
            reply_json(self, b'{"access_token":"at-SECRET-0","refresh_token":"rt-NEW-SECRET-0"}')
        elif mode == "huge":
            reply_json(self, b'{"pad":"' + b"x" * (MAX_OIDC_BODY_BYTES + 1) + b'"}')
        elif mode == "invalid_grant":
            reply_json(self, json.dumps({"error": "invalid_grant",
                                         "error_description": f"token {REFRESH_TOKEN} revoked"}).encode(), 400)
        elif mode == "no-endpoint":
            reply_json(self, json.dumps({"issuer": srv.url}).encode())
        else:
            if issued is not None:
                srv.issued.append(issued)
            reply_json(self, body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve_idp(tls: tuple[Path, Path] | None = None) -> Iterator[_IdPServer]:
    srv = _IdPServer(("127.0.0.1", 0), _IdP)
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    srv.url = f"{'https' if tls else 'http'}://127.0.0.1:{srv.server_address[1]}"
    srv.modes = {"discovery": "ok", "token": "ok"}
    srv.seen, srv.issued = [], []
    srv.exp_in_s = 3600.0
    srv.iat_age_s = 0.0
    srv.clock = time.time
    srv.token_endpoint = None
    srv.release = threading.Event()
    for _hostport in serve_in_thread(srv):
        try:
            yield srv
        finally:
            srv.release.set()  # a hanging handler returns, so the server shuts down at once


@pytest.fixture
def idp() -> Iterator[_IdPServer]:
    yield from _serve_idp()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    crypto = pytest.importorskip("cryptography")
    del crypto
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test IdP")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "idp.crt", folder / "idp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_idp(tls_files: tuple[Path, Path]) -> Iterator[_IdPServer]:
    yield from _serve_idp(tls_files)


# ------------------------------------------------------------------------------------------------ the API server


@pytest.fixture
def api_server() -> Iterator[AuthRecordingServer]:
    yield from serve_auth_recorder()


def _api_url(srv: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


# ------------------------------------------------------------------------------------------------ kubeconfigs


def _kubeconfig(tmp_path: Path, provider: dict[str, Any], server: str = "http://127.0.0.1:1") -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": USER}}],
        "users": [{"name": USER, "user": {"auth-provider": provider}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _oidc(idp: _IdPServer, id_token: str | None, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"idp-issuer-url": idp.url, "client-id": CLIENT_ID, "client-secret": CLIENT_SECRET,
                              "refresh-token": REFRESH_TOKEN}
    if id_token is not None:
        config["id-token"] = id_token
    config.update(extra)
    return {"name": "oidc", "config": {k: v for k, v in config.items() if v is not None}}


def _on_disk(path: Path) -> dict[str, Any]:
    """The oidc config of the kubeconfig file as it is on disk now."""
    return dict(yaml.safe_load(path.read_text())["users"][0]["user"]["auth-provider"]["config"])


def _load(path: Path, timeout_s: float = 5.0) -> tuple[Any, BaseException | None, float]:
    return run_within(timeout_s + MARGIN_S, lambda: make_api_client(str(path), exec_timeout_s=timeout_s),
                      "loading the kubeconfig was not bounded")


def _call(client: Any) -> tuple[Any, BaseException | None, float]:
    core = kubernetes.client.CoreV1Api(client)
    return run_within(TIMEOUT_S + MARGIN_S, lambda: core.read_namespace("x", _request_timeout=5.0),
                      "the API call (and its token refresh) was not bounded")


def _host(idp: _IdPServer) -> str:
    return f"127.0.0.1:{idp.server_address[1]}"


# ------------------------------------------------------------------------------------------------ oidc


@pytest.mark.parametrize("confidential", [True, False], ids=["client-secret", "public-client"])
def test_an_expired_id_token_is_refreshed_at_load(tmp_path: Path, idp: _IdPServer, api_server: AuthRecordingServer,
                                                  caplog: pytest.LogCaptureFixture, confidential: bool) -> None:
    caplog.set_level(logging.DEBUG)
    path = _kubeconfig(tmp_path, _oidc(idp, EXPIRED, **({} if confidential else {"client-secret": None})),
                       _api_url(api_server))
    client, err, _ = _load(path)
    assert err is None, err
    assert [(m, p) for m, p, _, _ in idp.seen] == [("GET", "/.well-known/openid-configuration"), ("POST", "/token")]
    _, _, auth, form = idp.seen[1]
    assert form["grant_type"] == "refresh_token" and form["refresh_token"] == REFRESH_TOKEN
    if confidential:  # basic auth, each part form-encoded first (RFC 6749 2.3.1), as kubectl sends it
        assert auth is not None and auth.startswith("Basic ") and "client_id" not in form
        user, _, password = base64.b64decode(auth.split()[1]).decode().partition(":")
        assert (urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)) == (CLIENT_ID, CLIENT_SECRET)
    else:  # a public client: no secret to send, its id in the form
        assert auth is None and form["client_id"] == CLIENT_ID
    new = idp.issued[0]
    for _ in range(2):  # refreshed once: the new token is good for an hour
        _, err, _ = _call(client)
        assert err is None, err
    assert api_server.seen == [f"Bearer {new}"] * 2
    assert len(idp.seen) == 2
    on_disk = _on_disk(path)  # persisted as kubectl does
    assert on_disk["id-token"] == new and on_disk["refresh-token"] == "rt-NEW-SECRET-1"
    for secret in (new, "rt-NEW-SECRET-1", REFRESH_TOKEN, CLIENT_SECRET):
        assert redact(f"x {secret} y") == "x *** y"
    _no_secrets(caplog.text, new)


@pytest.mark.parametrize("exp", ["in an hour", "none"])
def test_an_unexpired_id_token_makes_no_idp_call(tmp_path: Path, idp: _IdPServer, api_server: AuthRecordingServer,
                                                 exp: str) -> None:
    token = _jwt(sub=USER, exp=int(time.time()) + 3600) if exp != "none" else _jwt(sub=USER, n="no-exp")
    path = _kubeconfig(tmp_path, _oidc(idp, token), _api_url(api_server))
    before = path.read_bytes()
    client, err, _ = _load(path)
    assert err is None, err
    _, err, _ = _call(client)
    assert err is None, err
    assert api_server.seen == [f"Bearer {token}"]
    assert idp.seen == [] and path.read_bytes() == before
    assert redact(REFRESH_TOKEN) == "***" and redact(CLIENT_SECRET) == "***"  # secrets from the moment of loading


def _wait_until_expired(exp: float) -> None:
    """Until the library's refresh rule sees a token with this ``exp`` as expired (5 minutes before it)."""
    left = exp - SKEW_S - time.time() + 0.05
    if left > 0:
        threading.Event().wait(left)  # the condition is the clock itself


def test_a_token_expiring_during_a_run_is_refreshed_before_the_next_call(
        tmp_path: Path, idp: _IdPServer, api_server: AuthRecordingServer, caplog: pytest.LogCaptureFixture) -> None:
    """The library never set the expiry: a daemon kept sending an expired id-token. Then the refresh is bounded
    (a hanging IdP: an OSError for that call, no request without a credential) and a later call recovers."""
    caplog.set_level(logging.DEBUG)
    # tokens issued an hour before: long-lived, so the library's five minutes before exp is the refresh point
    # (refresh_at; half a lifetime shorter than ten minutes is tested below, on an injected clock)
    exp = time.time() + SKEW_S + 6.0  # valid for the load and the first call, even on a loaded machine
    token = _jwt(sub=USER, iat=time.time() - 3600, exp=exp)
    path = _kubeconfig(tmp_path, _oidc(idp, token), _api_url(api_server))
    idp.exp_in_s = SKEW_S + 1.0  # what the IdP issues expires (for the client) a second later
    idp.iat_age_s = 3600.0
    client, err, _ = run_within(TIMEOUT_S + MARGIN_S, lambda: make_api_client(str(path), exec_timeout_s=TIMEOUT_S))
    assert err is None, err
    _, err, _ = _call(client)
    assert err is None and idp.seen == [] and api_server.seen == [f"Bearer {token}"], err
    _wait_until_expired(exp)
    _, err, _ = _call(client)
    assert err is None, err
    assert len(idp.issued) == 1 and api_server.seen[-1] == f"Bearer {idp.issued[0]}"  # refreshed before the call
    assert _on_disk(path)["id-token"] == idp.issued[0]

    idp.modes["token"] = "hang"
    _wait_until_expired(time.time() + idp.exp_in_s)
    _, err, elapsed = _call(client)
    assert isinstance(err, ExecCredentialError) and isinstance(err, OSError), err
    msg = str(err)
    assert msg == (f"kubeconfig user '{USER}': oidc id-token refresh at {_host(idp)}: no complete answer from its "
                   f"token endpoint within 1s"), msg
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + MARGIN_S, elapsed
    assert len(api_server.seen) == 2  # no request went out with the expired token

    idp.modes["token"] = "ok"
    _, err, _ = _call(client)  # the next call refreshes again
    assert err is None, err
    assert api_server.seen[-1] == f"Bearer {idp.issued[-1]}" and len(idp.issued) == 2
    _no_secrets(caplog.text + msg, *idp.issued, token)


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.mark.parametrize("iat", [True, False], ids=["iat", "no-iat"])
def test_a_short_lived_id_token_is_renewed_half_way_not_before_every_call(
        tmp_path: Path, idp: _IdPServer, api_server: AuthRecordingServer, iat: bool) -> None:
    """Keycloak's default id-token lives 5 minutes. The library's rule (renew from five minutes before exp) made
    every API call of such a token an IdP round trip; the token is now renewed half-way through its lifetime
    (from its iat, or from when fleetpilot first saw it), and used until then."""
    clock = UtcClock()
    t0 = clock.epoch()
    idp.clock = clock.epoch  # one time for the IdP and the client, as on one real clock
    idp.exp_in_s = 120.0
    idp.iat_age_s = 0.0 if iat else None
    path = _kubeconfig(tmp_path, _oidc(idp, EXPIRED), _api_url(api_server))
    cfg = kubernetes.client.Configuration()
    _, err, _ = run_within(TIMEOUT_S + MARGIN_S, lambda: load_kubeconfig(str(path), cfg, exec_timeout_s=5.0,
                                                                            clock=clock))
    assert err is None, err
    client = kubernetes.client.ApiClient(cfg)
    assert len(idp.issued) == 1  # the expired token, refreshed at load
    claims = _claims(idp.issued[0])
    issued = float(claims["iat"]) if iat else t0
    renew = float(claims["exp"]) - min(SKEW_S, (float(claims["exp"]) - issued) / 2)
    assert renew - issued == pytest.approx(60.0 if iat else (claims["exp"] - t0) / 2, abs=1e-6)
    for _ in range(3):
        _, err, _ = _call(client)
        assert err is None, err
    clock.at(renew - 1.0)
    _, err, _ = _call(client)
    assert err is None, err
    assert len(idp.issued) == 1 and api_server.seen == [f"Bearer {idp.issued[0]}"] * 4  # one token, four calls
    clock.at(renew + 1.0)
    _, err, _ = _call(client)
    assert err is None, err
    assert len(idp.issued) == 2 and api_server.seen[-1] == f"Bearer {idp.issued[1]}"  # renewed before the call
    _, err, _ = _call(client)
    assert err is None and len(idp.issued) == 2, err  # and the new one is used, not renewed again at once


def test_a_read_only_kubeconfig_keeps_the_new_tokens_in_memory(idp: _IdPServer, api_server: AuthRecordingServer,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A kubeconfig mounted read-only (a Secret): kubectl fails the refresh; the daemon uses the new tokens, warns."""
    from fleetpilot.agent.kube_exec import _BoundedLoader

    caplog.set_level(logging.DEBUG)  # an earlier test may have left the root logger above WARNING

    def read_only() -> None:
        raise PermissionError(13, "Read-only file system", "/etc/kube/config")

    config = json.loads(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": _api_url(api_server)}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": USER}}],
        "users": [{"name": USER, "user": {"auth-provider": _oidc(idp, EXPIRED)}}]}))
    cfg = kubernetes.client.Configuration()
    loader = _BoundedLoader(config_dict=config, config_base_path=None, config_persister=read_only,
                            exec_timeout_s=5.0)
    _, err, _ = run_within(5.0 + MARGIN_S, lambda: loader.load_and_set(cfg))
    assert err is None, err
    _, err, _ = _call(kubernetes.client.ApiClient(cfg))
    assert err is None, err
    assert api_server.seen == [f"Bearer {idp.issued[0]}"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"kubeconfig user '{USER}': oidc id-token refresh at {_host(idp)}: the new id-token is used "
                        "but could not be saved to the kubeconfig (Read-only file system)"], warnings
    _no_secrets(caplog.text, idp.issued[0])


def test_a_hanging_idp_is_cut_at_load(tmp_path: Path, idp: _IdPServer) -> None:
    idp.modes["discovery"] = "hang"
    path = _kubeconfig(tmp_path, _oidc(idp, EXPIRED))
    before = path.read_bytes()
    _, err, elapsed = _load(path, TIMEOUT_S)
    assert isinstance(err, UserError), err
    assert str(err) == (f"{path}: cannot load Kubernetes configuration: kubeconfig user '{USER}': oidc id-token "
                        f"refresh at {_host(idp)}: no complete answer from its discovery document within 1s")
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + MARGIN_S, elapsed
    assert path.read_bytes() == before


@pytest.mark.parametrize(("where", "mode", "expected"), [
    ("discovery", "500", "its discovery document answered HTTP 500"),
    ("discovery", "garbage", "its discovery document is not JSON"),
    ("discovery", "no-endpoint", "its discovery document has no http(s) token_endpoint"),
    ("token", "500", "its token endpoint answered HTTP 500"),
    ("token", "invalid_grant", "its token endpoint answered HTTP 400 (invalid_grant: the refresh-token was refused; "
                               "log in again)"),
    ("token", "garbage", "its token endpoint is not JSON"),
    ("token", "no-id-token", "its token endpoint answered without an id_token"),
    ("token", "huge", f"its token endpoint is larger than {MAX_OIDC_BODY_BYTES} bytes"),
])
def test_an_idp_failure_is_one_line_without_secrets(tmp_path: Path, idp: _IdPServer, caplog: pytest.LogCaptureFixture,
                                                    where: str, mode: str, expected: str) -> None:
    caplog.set_level(logging.DEBUG)
    idp.modes[where] = mode
    path = _kubeconfig(tmp_path, _oidc(idp, EXPIRED))
    before = path.read_bytes()
    _, err, _ = _load(path)
    assert isinstance(err, UserError), err
    msg = str(err)
    assert msg == (f"{path}: cannot load Kubernetes configuration: kubeconfig user '{USER}': oidc id-token refresh "
                   f"at {_host(idp)}: {expected}"), msg
    _no_secrets(msg + caplog.text)
    assert path.read_bytes() == before


def test_a_failed_refresh_through_the_cli_is_one_line_exit_2(tmp_path: Path, idp: _IdPServer,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    idp.modes["token"] = "500"
    path = _kubeconfig(tmp_path, _oidc(idp, EXPIRED))
    code, err, _ = run_within(5.0 + MARGIN_S, lambda: main(["handover", "--goal", str(GOAL_PATH), "--kubeconfig",
                                                            str(path), "--kube-exec-timeout", "5"]))
    assert err is None, err
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert f"kubeconfig user '{USER}': oidc id-token refresh at {_host(idp)}: its token endpoint answered HTTP 500" \
        in stderr
    _no_secrets(stderr)


@pytest.mark.parametrize(("problem", "expected"), [
    ("payload", "its id-token is not a valid JWT (its payload is not base64url JSON)"),
    ("exp", "its id-token is not a valid JWT (its exp claim is not a number)"),
    ("no-refresh-token", "the id-token has expired and there is no usable refresh-token to renew it (log in again)"),
    ("no-id-token", "the id-token is missing and there is no usable refresh-token to renew it (log in again)"),
    ("issuer", "oidc id-token refresh: idp-issuer-url is not an http(s) URL"),
    ("ca-data", "is not base64"),
    ("ca-file", "idp-certificate-authority is not a usable PEM CA bundle"),
])
def test_a_malformed_oidc_section_is_one_line(tmp_path: Path, idp: _IdPServer, problem: str, expected: str) -> None:
    """The library's KeyError / JSON / TypeError tracebacks, or a silent fall-through: one line, no network call."""
    token, extra = EXPIRED, {}
    if problem == "payload":
        token = f"{EXPIRED.split('.')[0]}.{_b64url(b'not json')}.c2ln"
    elif problem == "exp":
        token = _jwt(sub=USER, exp="tomorrow")
    elif problem in ("no-refresh-token", "no-id-token"):
        extra = {"refresh-token": None}
        token = EXPIRED if problem == "no-refresh-token" else None
    elif problem == "issuer":
        extra = {"idp-issuer-url": "ftp://idp.example"}
    elif problem == "ca-data":
        extra = {"idp-certificate-authority-data": "not base64 at all!"}
    else:
        (tmp_path / "not-a-ca.pem").write_text("hello")
        extra = {"idp-certificate-authority": str(tmp_path / "not-a-ca.pem")}
    path = _kubeconfig(tmp_path, _oidc(idp, token, **extra))
    _, err, _ = _load(path)
    assert isinstance(err, UserError) and "\n" not in str(err), err
    assert f"kubeconfig user '{USER}': oidc" in str(err) and expected in str(err), err
    _no_secrets(str(err))
    assert idp.seen == []


@pytest.mark.parametrize("ca", [None, "data", "file"])
def test_an_https_idp_is_verified(tmp_path: Path, tls_idp: _IdPServer, tls_files: tuple[Path, Path],
                                  api_server: AuthRecordingServer, ca: str | None) -> None:
    """The library turned TLS verification off without an IdP CA: a self-signed IdP is now refused, and accepted
    when the kubeconfig names its CA."""
    extra = {} if ca is None else \
        {"idp-certificate-authority-data": base64.b64encode(tls_files[0].read_bytes()).decode()} if ca == "data" else \
        {"idp-certificate-authority": str(tls_files[0])}
    path = _kubeconfig(tmp_path, _oidc(tls_idp, EXPIRED, **extra), _api_url(api_server))
    client, err, _ = _load(path)
    if ca is None:
        assert isinstance(err, UserError), err
        assert str(err).startswith(
            f"{path}: cannot load Kubernetes configuration: kubeconfig user '{USER}': oidc id-token refresh at "
            f"{_host(tls_idp)}: TLS to the IdP failed (certificate verify failed)"), err
        assert "idp-certificate-authority-data" in str(err) and "\n" not in str(err)
        assert tls_idp.seen == []  # nothing was sent: the refresh-token never left
        return
    assert err is None, err
    _, err, _ = _call(client)
    assert err is None, err
    assert api_server.seen == [f"Bearer {tls_idp.issued[0]}"]


def test_an_https_issuer_never_sends_the_refresh_token_over_http(tmp_path: Path, tls_idp: _IdPServer,
                                                                tls_files: tuple[Path, Path], idp: _IdPServer) -> None:
    tls_idp.token_endpoint = f"{idp.url}/token"  # a discovery document pointing at plain http
    path = _kubeconfig(tmp_path, _oidc(tls_idp, EXPIRED, **{"idp-certificate-authority": str(tls_files[0])}))
    _, err, _ = _load(path)
    assert isinstance(err, UserError) and "its token_endpoint is plain http while the issuer is https" in str(err)
    assert idp.seen == []


# ------------------------------------------------------------------------------------------------ gcp, azure


GCP = {"name": "gcp", "config": {"access-token": "ya29.gcp-SECRET-9999", "cmd-path": "/usr/bin/gcloud-SECRET-path",
                                 "cmd-args": "config config-helper --format=json", "expiry": "2000-01-01T00:00:00Z",
                                 "expiry-key": "{.credential.token_expiry}",
                                 "token-key": "{.credential.access_token}"}}
AZURE = {"name": "azure", "config": {"access-token": "az-access-SECRET-1", "refresh-token": "az-refresh-SECRET-2",
                                     "client-id": "80faf920-1908-4b52-b5ef-a8e7bedfc67a",
                                     "tenant-id": "tenant-SECRET-3", "apiserver-id": "6dae42f8", "expires-on": "0"}}


@pytest.mark.parametrize("command", ["handover", "run"])
@pytest.mark.parametrize(("provider", "needles"), [
    (GCP, ("the 'gcp' auth-provider was removed from kubectl", "gke-gcloud-auth-plugin",
           "gcloud components install gke-gcloud-auth-plugin", "gcloud container clusters get-credentials CLUSTER")),
    (AZURE, ("the 'azure' auth-provider was removed from kubectl", "kubelogin",
             "kubelogin convert-kubeconfig -l azurecli")),
], ids=["gcp", "azure"])
def test_removed_auth_providers_are_refused_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], provider: dict[str, Any], needles: tuple[str, ...],
        command: str) -> None:
    path = _kubeconfig(tmp_path, provider)
    argv = ["handover", "--goal", str(GOAL_PATH), "--kubeconfig", str(path)] if command == "handover" else \
        ["run", "--goal", str(GOAL_PATH), "--policy", "hpa", "--once", "--warmup", "0", "--kubeconfig", str(path),
         "--prometheus", "http://127.0.0.1:1"]
    code, err, _ = run_within(MARGIN_S * 3, lambda: main(argv), "the CLI did not end")
    assert err is None, err
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert f"kubeconfig user '{USER}'" in stderr, stderr
    for needle in needles:
        assert needle in stderr, stderr
    for value in provider["config"].values():  # none of the provider's settings (tokens, the command) is shown
        if len(value) > 8:
            assert value not in stderr, value
