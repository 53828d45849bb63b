"""Prometheus access as operators have it (agent/prom.py): verified TLS, credentials from files, total deadlines,
ambiguous series, redaction. Real loopback sockets: an HTTPS endpoint with certificates made here, a server that
trickles its answer, and a bearer-token proxy in front of the real Prometheus.

Regression tests for issue 11 (TLS never verified; a 1 byte/s body froze the loop; a password in the URL leaked;
several series per model read as "last one wins") and issue 12 item 4.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import math
import shutil
import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpilot.agent.prom import PrometheusAccess, PrometheusSource, install_log_redaction, make_session, redact
from fleetpilot.simulations.errors import PermanentError, TemporaryError, UserError
from fleetpilot.simulations.goal import parse_goal
from needs import missing_tool
from testbed.prometheus import reply_json, serve_in_thread

GOAL = parse_goal("""
apiVersion: fleetpilot/v1
kind: GoalSpec
name: access
slo: {target_ms: 500}
control_interval_s: 15
models:
  - name: m
    deployment: {namespace: inference, name: m}
    cost_per_hour: 2
    max_replicas: 10
""", "access.yaml")

ANSWER = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"model_name": "m"}, "value": [1_767_225_600.0, "3"]}]}}).encode()


# ------------------------------------------------------------------------------------------------ certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: Any, issuer: x509.Name, issuer_key: Any, *, ca: bool, sans: list[Any]) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False),
                            critical=True)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("fleetpilot test CA", ca_key, _name("fleetpilot test CA"), ca_key, ca=True, sans=[])
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for label, sans in (("good", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                        ("other", [x509.DNSName("prometheus.other.example")])):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"{label} server", key, ca.subject, ca_key, ca=False, sans=sans)
        out[f"{label}.crt"] = d / f"{label}.crt"
        out[f"{label}.key"] = d / f"{label}.key"
        out[f"{label}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{label}.key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return out


class _Answer(BaseHTTPRequestHandler):
    seen_auth: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        type(self).seen_auth.append(self.headers.get("Authorization"))
        reply_json(self, ANSWER)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> Iterator[str]:
    return serve_in_thread(server, join_s=5.0)


@pytest.fixture(params=["good", "other"])
def https_server(request: pytest.FixtureRequest, pki: dict[str, Path]) -> Iterator[tuple[str, str]]:
    label = request.param
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki[f"{label}.crt"], pki[f"{label}.key"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    for hostport in _serve(server):
        yield label, f"https://{hostport}"


def _source(url: str, **access: Any) -> PrometheusSource:
    a = PrometheusAccess.from_url(url, timeout_s=access.pop("timeout_s", 3.0), **access)
    return PrometheusSource(url, GOAL, clock=lambda: 1_767_225_600.0, access=a, freshness_query=None)


def test_tls_is_verified_by_default(https_server: tuple[str, str]) -> None:
    _, url = https_server
    src = _source(url)
    assert src.tls_verified
    with pytest.raises(TemporaryError, match="TLS verification failed"):
        src.read()


def test_ca_file_trusts_the_right_name_only(https_server: tuple[str, str], pki: dict[str, Path]) -> None:
    label, url = https_server
    src = _source(url, ca_file=str(pki["ca"]))
    if label == "good":
        r = src.read()
        assert r.models["m"].in_flight == 3.0
    else:  # signed by the trusted CA, but for another name: must be refused
        with pytest.raises(TemporaryError, match="TLS verification failed"):
            src.read()


def test_insecure_skip_verify_only_when_asked_and_reported(https_server: tuple[str, str]) -> None:
    _, url = https_server
    src = _source(url, insecure_skip_tls_verify=True)
    assert src.read().models["m"].in_flight == 3.0
    assert src.tls_verified is False


def test_access_validation_is_one_line(tmp_path: Path, pki: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="--prometheus-ca-file"):
        PrometheusAccess("https://p:9090", ca_file=str(tmp_path / "missing.pem")).validate()
    with pytest.raises(UserError, match="contradict"):
        PrometheusAccess("https://p:9090", ca_file=str(pki["ca"]), insecure_skip_tls_verify=True).validate()
    with pytest.raises(UserError, match="regular file"):
        PrometheusAccess("https://p:9090", bearer_token_file=str(tmp_path)).validate()
    with pytest.raises(UserError, match="timeout"):
        PrometheusAccess("https://p:9090", timeout_s=math.inf).validate()
    with pytest.raises(UserError, match="header"):
        PrometheusAccess("https://p:9090", headers=(("Bad Name", "x"),)).validate()


# ------------------------------------------------------------------------------------------------ total deadline


class _Trickler:
    """A TCP server that answers one byte at a time (headers or body), and counts what it managed to send."""

    def __init__(self, phase: str, step_s: float = 0.05) -> None:
        self.phase, self.step_s = phase, step_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sent = 0
        self.total = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        self.sock.settimeout(10)
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            body = b'{"status":"success","data":{"resultType":"vector","result":[]}}' + b" " * 2000
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            fast, slow = (head, body) if self.phase == "body" else (b"", head + body)
            self.total = len(fast) + len(slow)
            try:
                conn.sendall(fast)
                self.sent = len(fast)
                for i in range(len(slow)):
                    if self.stopped.wait(self.step_s):
                        return
                    conn.sendall(slow[i:i + 1])
                    self.sent += 1
            except OSError:  # the client cut the connection: what we want
                return

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
        self.thread.join(timeout=10)


@pytest.mark.parametrize("phase", ["body", "headers"])
def test_a_trickling_answer_is_cut_at_the_total_deadline(phase: str) -> None:
    srv = _Trickler(phase)
    try:
        src = _source(srv.url, timeout_s=0.5)
        with pytest.raises(TemporaryError, match="total deadline"):
            src.read()
        # the whole answer would take total*step_s = 100+ s; the request gave up long before its end
        assert srv.sent < srv.total
    finally:
        srv.close()


# ------------------------------------------------------------------------------------------------ credentials


class _AuthProxy(BaseHTTPRequestHandler):
    """In front of a real Prometheus: requires ``Authorization: Bearer <the current token>``, else 401."""

    token = ""
    upstream = ""
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        got = self.headers.get("Authorization", "")
        type(self).seen.append(got)
        if got != f"Bearer {type(self).token}":
            body = b'{"status":"error","error":"unauthorized"}'
            self.send_response(401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        with urllib.request.urlopen(type(self).upstream + self.path, timeout=10) as up:  # noqa: S310 - loopback
            body = up.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def real_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        missing_tool("the 'prometheus' binary is not installed (apt-get install prometheus)")
    from testbed.prometheus import PrometheusServer

    text = (b'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 7\n'
            b'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 1\n')

    class Exporter(BaseHTTPRequestHandler):  # classic text format (names with ':' kept as vLLM exports them)
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: Any) -> None:
            pass

    for target in _serve(ThreadingHTTPServer(("127.0.0.1", 0), Exporter)):
        with PrometheusServer([target], scrape_interval_s=1, workdir=tmp_path_factory.mktemp("prom")) as prom:
            prom.wait_for_series('vllm:num_requests_running{model_name="m"}', timeout_s=30)
            yield prom.url


@pytest.fixture
def auth_proxy(real_prometheus: str) -> Iterator[str]:
    _AuthProxy.upstream = real_prometheus
    _AuthProxy.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AuthProxy)
    for hostport in _serve(server):
        yield f"http://{hostport}"


def test_bearer_token_from_file_is_sent_reread_and_never_logged(
    auth_proxy: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    first, second = "tok-FIRST-7f3a9c1e5b", "tok-SECOND-0d2e4f6a8c"
    _AuthProxy.token = first
    token_file.write_text(first + "\n")
    caplog.set_level(logging.DEBUG)
    install_log_redaction(logging.getLogger())
    src = _source(auth_proxy, bearer_token_file=str(token_file))
    r = src.read()
    assert r.models["m"].in_flight == 7.0  # the real Prometheus' value, through the proxy
    assert _AuthProxy.seen[-1] == f"Bearer {first}"
    # the ServiceAccount token rotates: the file changes, the proxy accepts only the new one
    _AuthProxy.token = second
    token_file.write_text(second + "\n")
    assert src.read().models["m"].in_flight == 7.0
    assert _AuthProxy.seen[-1] == f"Bearer {second}"
    # a wrong token: refused, reported without the token
    token_file.write_text("tok-WRONG-11111111\n")
    with pytest.raises(PermanentError) as exc:
        src.read()
    assert "401" in str(exc.value)
    logging.getLogger("fleetpilot").warning("interval failed: %s (sent Bearer %s)", exc.value, second)
    for secret in (first, second, "tok-WRONG-11111111"):
        assert secret not in str(exc.value)
        assert secret not in caplog.text
        assert secret not in "".join(h.format(r) for h in logging.getLogger().handlers for r in caplog.records)


def test_no_token_is_a_clear_permanent_error(auth_proxy: str) -> None:
    _AuthProxy.token = "tok-REQUIRED-123456"
    with pytest.raises(PermanentError, match="credentials refused"):
        _source(auth_proxy).read()


def test_password_in_url_becomes_basic_auth_and_never_shows(tmp_path: Path) -> None:
    _Answer.seen_auth = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    for hostport in _serve(server):
        url = f"http://admin:s3cr3t-pass-WORD@{hostport}"
        src = _source(url)
        assert "s3cr3t" not in src.url and "admin" not in src.url
        assert src.read().models["m"].in_flight == 3.0
        assert _Answer.seen_auth[-1] is not None and _Answer.seen_auth[-1].startswith("Basic ")
    down = _source(url)  # the server is gone: the error names the URL without credentials
    with pytest.raises(TemporaryError) as exc:
        down.read()
    assert "s3cr3t-pass-WORD" not in str(exc.value) and "cannot connect" in str(exc.value)
    assert "s3cr3t-pass-WORD" not in redact(f"GET {url} failed")


def test_basic_auth_password_file_and_extra_headers(tmp_path: Path) -> None:
    seen: list[dict[str, str]] = []

    class H(_Answer):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(dict(self.headers))
            super().do_GET()

    pw = tmp_path / "pw"
    pw.write_text("pw-from-file-9876\n")
    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    for hostport in _serve(server):
        src = _source(f"http://{hostport}", basic_auth_user="reader", basic_auth_password_file=str(pw),
                      headers=(("X-Scope-OrgID", "team-a"),))
        src.read()
    import base64

    assert seen[-1]["Authorization"] == "Basic " + base64.b64encode(b"reader:pw-from-file-9876").decode()
    assert seen[-1]["X-Scope-OrgID"] == "team-a"
    assert "pw-from-file-9876" not in redact("password is pw-from-file-9876")


# ------------------------------------------------------------------------------------------------ ambiguous series


class _Fake:
    def __init__(self, answers: dict[str, list[dict[str, Any]]]) -> None:
        self.answers = answers

    def custom_query(self, query: str, params: dict | None = None, timeout: int | None = None) -> Any:
        return self.answers.get(query, [])


def test_two_series_for_one_model_are_ambiguous_not_last_one_wins() -> None:
    t = 1_767_225_600.0

    def series(v: float, **labels: str) -> dict[str, Any]:
        return {"metric": {"model_name": "m", **labels}, "value": [t, str(v)]}

    q = GOAL.prometheus
    answers = {q.arrival_rate: [series(5.0)], q.waiting: [series(0.0)],
               q.running: [series(1000.0, namespace="prod"), series(0.0, namespace="staging")]}
    src = PrometheusSource("http://x", GOAL, clock=lambda: t, client=_Fake(answers), freshness_query=None)
    r = src.read()
    assert "m.running.ambiguous" in r.stale
    assert math.isnan(r.models["m"].in_flight)  # never 0 (the last series) nor 1000 (the first)
    note = src.last_ambiguous["m.running"]
    assert "namespace" in note and "prod" in note and "staging" in note


def test_the_whole_read_has_a_budget() -> None:
    """Each query answers just inside its own deadline, but all of them together would take ~9x that: the read
    stops at its budget (an interval deadline), naming it."""
    t = [0.0]

    class Slow:
        calls = 0

        def custom_query(self, query: str, params: dict | None = None, timeout: float | None = None) -> Any:
            Slow.calls += 1
            t[0] += 0.9 * (timeout or 0)  # each answer uses 90 % of the time it was given
            return []

    src = PrometheusSource("http://x", GOAL, clock=lambda: 1_767_225_600.0, client=Slow(), timeout_s=2.0,
                           read_budget_s=5.0, monotonic=lambda: t[0], freshness_query=None)
    with pytest.raises(TemporaryError, match="interval deadline"):
        src.read()
    assert Slow.calls < len(src.queries)  # the rest of the queries were not sent
    assert t[0] <= 5.0 + 1e-9  # never past the budget: the last query got only what was left


def test_fleetpilot_run_never_prints_or_audits_credentials(tmp_path: Path) -> None:
    """End to end through the CLI: a password in the URL, a bearer token file and a secret header; one interval
    against unreachable endpoints (so every error path runs); the secrets appear in no output and no audit line,
    and the audit file is not world-readable."""
    import os
    import subprocess
    import sys

    from testbed.prometheus import free_port

    token = tmp_path / "token"
    token.write_text("tok-E2E-SECRET-5151\n")
    goal = tmp_path / "goal.yaml"
    goal.write_text(Path(__file__).resolve().parent.parent.joinpath("examples", "goals", "single-model.yaml")
                    .read_text())
    audit = tmp_path / "audit.jsonl"
    dead = free_port()
    for extra in (["--prometheus", f"http://ops:pw-E2E-SECRET-4242@127.0.0.1:{dead}"],
                  ["--prometheus", f"http://127.0.0.1:{dead}", "--prometheus-bearer-token-file", str(token),
                   "--prometheus-header", "X-Api-Key: key-E2E-SECRET-6363"]):
        r = subprocess.run([sys.executable, "-m", "fleetpilot", "run", "--goal", str(goal), "--once", "--kube-host",
                            f"http://127.0.0.1:{free_port()}", "--audit", str(audit), "--prometheus-timeout", "0.5",
                            "--log-level", "DEBUG", *extra], capture_output=True, text=True, timeout=180)
        assert r.returncode in (0, 2), r.stderr[-2000:]
        for secret in ("pw-E2E-SECRET-4242", "tok-E2E-SECRET-5151", "key-E2E-SECRET-6363"):
            assert secret not in r.stdout and secret not in r.stderr
    text = audit.read_text()
    assert text.count("\n") >= 2 and "prometheus" in text
    for secret in ("pw-E2E-SECRET-4242", "tok-E2E-SECRET-5151", "key-E2E-SECRET-6363"):
        assert secret not in text
    assert os.stat(audit).st_mode & 0o004 == 0, oct(os.stat(audit).st_mode)  # not world-readable


def test_the_ca_file_holds_when_requests_ca_bundle_is_set(https_server: tuple[str, str], pki: dict[str, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``$REQUESTS_CA_BUNDLE`` (set by many base images) replaced a session's CA file in requests (requests#3829):
    ``--prometheus-ca-file`` was ignored for every reader that goes through make_session (trace import too)."""
    label, url = https_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["good.crt"]))  # a bundle that does not hold the CA
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    session = make_session(PrometheusAccess.from_url(url, timeout_s=3.0, ca_file=str(pki["ca"])))
    if label == "good":
        assert session.get(url + "/api/v1/query", params={"query": "up"}).status_code == 200
        src = _source(url, ca_file=str(pki["ca"]))
        assert src.read().models["m"].in_flight == 3.0
    else:  # the CA file still decides: the other name stays refused
        with pytest.raises(requests.exceptions.SSLError):
            session.get(url + "/api/v1/query", params={"query": "up"})
