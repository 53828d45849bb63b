"""Fault scenarios of issue 11 (reliability and security) against the daemon: a Prometheus that trickles its answer,
that answers for the wrong TLS name, that returns several series per model; credentials that must not leak; a goal
hot-reloaded with an alias bomb. Each runs the real daemon one interval at a time in fake time against the
Kubernetes API emulator (the shared ``rig`` of test_daemon_faults.py), with real loopback servers for the faults.
Rows land in docs/faults.md (group "daemon: reliability and security").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fleetpilot.agent.daemon", reason="agent/daemon.py is not there yet")

from fleetpilot.agent.prom import PrometheusAccess, PrometheusSource, install_log_redaction  # noqa: E402
from fleetpilot.simulations.goal import GoalSpec, load_goal  # noqa: E402
from harness import FakeClock, FakePrometheusAPI, Rig, SafetyMonitor, seed_cluster  # noqa: E402
from testbed.k8s_emulator import K8sEmulator  # noqa: E402
from testbed.prometheus import reply_json, serve_in_thread  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GOAL_PATH = REPO / "examples" / "goals" / "two-model-routed.yaml"
BIG, SMALL = "llama-3-70b", "llama-3-8b"
START = 10
GROUP = "daemon: reliability and security"


@pytest.fixture(scope="module")
def goal() -> GoalSpec:
    return load_goal(GOAL_PATH)


@pytest.fixture
def rig(goal: GoalSpec, tmp_path: Path) -> Iterator[Rig]:
    clock = FakeClock()
    prom = FakePrometheusAPI(goal.model_names, now=clock).start()
    with K8sEmulator(clock=clock) as emu:
        seed_cluster(emu, goal, {BIG: START, SMALL: START})
        monitor = SafetyMonitor(goal, clock).attach(emu)
        r = Rig(goal, emu, clock, prom.url, tmp_path, monitor)
        r.prom = prom  # type: ignore[attr-defined]
        yield r
        assert not monitor.violations, monitor.violations
    prom.stop()


def step(rig: Rig, daemon: Any) -> Any:
    rec = daemon.run_once()
    rig.clock.advance(rig.goal.control_interval_s)
    return rec


def healthy_then(rig: Rig, source: PrometheusSource) -> tuple[Any, dict[str, int]]:
    """A daemon that first runs one healthy interval (the fake Prometheus), then reads from ``source``."""
    d = rig.daemon("a")
    rec = step(rig, d)
    assert rec.active == "policy"
    before = rig.replicas()
    _set_source(d, source)
    return d, before


def _set_source(d: Any, source: PrometheusSource) -> None:
    deps = getattr(d, "deps", None)
    if deps is not None and hasattr(deps, "source"):
        try:
            deps.source = source
        except (AttributeError, TypeError):  # frozen deps: rebuild with the new source
            import dataclasses

            d.deps = dataclasses.replace(deps, source=source)
    if hasattr(d, "source"):
        d.source = source
    loop = getattr(d, "loop", None)
    if loop is not None and hasattr(loop, "source"):
        loop.source = source


# ------------------------------------------------------------------------------------------------ servers


class _Trickle:
    """Answers headers at once, then the body one byte per ``step_s`` (forever, in effect)."""

    def __init__(self, step_s: float = 0.2) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.step_s = step_s
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            th = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            th.start()
            self.threads.append(th)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                body = b'{"status":"success","data":{"resultType":"vector","result":[]}}' + b" " * 100_000
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\n\r\n")
                for i in range(len(body)):
                    if self.stop.wait(self.step_s):
                        return
                    conn.sendall(body[i:i + 1])
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for th in self.threads:
            th.join(timeout=5)


class _Ambiguous(BaseHTTPRequestHandler):
    """Every query answers two series per model: namespace=prod (the real load) and namespace=staging (idle)."""

    now = staticmethod(time.time)

    def do_GET(self) -> None:  # noqa: N802
        import urllib.parse

        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("query", [""])[0]
        result = []
        for m in (BIG, SMALL):
            if "timestamp(" in q:
                result.append({"metric": {"model_name": m}, "value": [self.now(), str(self.now() - 1)]})
                continue
            result.append({"metric": {"model_name": m, "namespace": "prod"}, "value": [self.now(), "1000"]})
            result.append({"metric": {"model_name": m, "namespace": "staging"}, "value": [self.now(), "0"]})
        reply_json(self, json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode())

    def log_message(self, *args: Any) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> Iterator[str]:
    return serve_in_thread(server, join_s=5.0)


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("attacker.example"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    c, k = tmp / "c.pem", tmp / "k.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


# ------------------------------------------------------------------------------------------------ scenarios


@pytest.mark.fault(group=GROUP, scenario="Prometheus answers a body trickling at 1 byte per 0.2 s",
                   expected="the request is cut at its total deadline; the same interval falls back (audit names the "
                   "timeout), no scale-down; the interval completes")
def test_trickling_prometheus_is_cut(rig: Rig, record_property: Any) -> None:
    srv = _Trickle()
    try:
        src = PrometheusSource(srv.url, rig.goal, clock=rig.clock, timeout_s=0.5)
        d, before = healthy_then(rig, src)
        t0 = time.monotonic()
        rec = step(rig, d)
        took = time.monotonic() - t0
        assert rec.active == "fallback" and "deadline" in (rec.fallback_reason or ""), rec.fallback_reason
        assert rig.replicas() == before
        assert took < 30, f"interval took {took:.1f}s"  # the trickled body alone would take 20,000 s
        record_property("observed", f"{rec.fallback_reason[:90]}; interval {took:.2f}s real")
    finally:
        srv.close()


@pytest.mark.fault(group=GROUP, scenario="Prometheus over https with a self-signed certificate for another name",
                   expected="TLS verification fails (verified by default): fallback naming TLS, its numbers never "
                   "drive scaling")
def test_untrusted_tls_is_refused(rig: Rig, tmp_path: Path, record_property: Any) -> None:
    cert, key = _self_signed(tmp_path)

    class Evil(_Ambiguous):
        pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    for hostport in _serve(server):
        src = PrometheusSource(f"https://{hostport}", rig.goal, clock=rig.clock, timeout_s=2.0)
        d, before = healthy_then(rig, src)
        rec = step(rig, d)
        assert rec.active == "fallback" and "TLS verification failed" in (rec.fallback_reason or "")
        assert rig.replicas() == before
        record_property("observed", rec.fallback_reason[:120])


@pytest.mark.fault(group=GROUP, scenario="two series per model (prod and staging export the same model_name)",
                   expected="ambiguous -> stale: fallback, no scale-down; the audit names the labels that differ")
def test_ambiguous_series_fall_back(rig: Rig, record_property: Any) -> None:
    _Ambiguous.now = staticmethod(rig.clock)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ambiguous)
    for hostport in _serve(server):
        src = PrometheusSource(f"http://{hostport}", rig.goal, clock=rig.clock, timeout_s=2.0)
        d, before = healthy_then(rig, src)
        rec = step(rig, d)
        assert rec.active == "fallback", rec
        assert rig.replicas() == before
        text = json.dumps(rec.to_json())
        assert "ambiguous" in text
        assert "namespace" in json.dumps(src.last_ambiguous) and "staging" in json.dumps(src.last_ambiguous)
        assert any("ambiguous" in e and "namespace" in e for e in rec.errors), rec.errors  # named in the audit
        from prometheus_client import generate_latest

        metric = [ln for ln in generate_latest(d.metrics.registry).decode().splitlines()
                  if ln.startswith("fleetpilot_prometheus_ambiguous_series{")]
        assert any('labels="namespace"' in ln and ln.endswith(" 1.0") for ln in metric), metric
        record_property("observed", f"{rec.fallback_reason[:80]}; {next(iter(src.last_ambiguous.values()))[:80]}")


@pytest.mark.fault(group=GROUP, scenario="Prometheus URL carries a password; bearer token from a file",
                   expected="the password and the token appear in no audit record, log line or error")
def test_credentials_never_leak(rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                record_property: Any) -> None:
    caplog.set_level(logging.DEBUG)
    install_log_redaction(logging.getLogger())
    password, token = "pw-LEAK-CHECK-8c1f", "tok-LEAK-CHECK-77e2"
    from harness import dead_url

    url = dead_url().replace("http://", f"http://ops:{password}@")
    src = PrometheusSource(url, rig.goal, clock=rig.clock, timeout_s=0.5)
    d, _ = healthy_then(rig, src)
    rec1 = step(rig, d)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    access = PrometheusAccess(dead_url(), timeout_s=0.5, bearer_token_file=str(token_file))
    _set_source(d, PrometheusSource(access.url, rig.goal, clock=rig.clock, access=access))
    rec2 = step(rig, d)
    assert rec1.active == rec2.active == "fallback"
    d.close()
    texts = [p.read_text() for p in tmp_path.glob("audit-*.jsonl")]
    texts += [json.dumps(rec1.to_json()), json.dumps(rec2.to_json()), caplog.text, src.url, repr(access)]
    for secret in (password, token):
        for t in texts:
            assert secret not in t
    record_property("observed", f"fallback reason: {rec1.fallback_reason[:100]}")


@pytest.mark.fault(group=GROUP, scenario="goal hot-reloaded with a 342-byte YAML alias bomb (9^9 values expanded)",
                   expected="the reload is refused at once (alias budget) with file:line; the daemon keeps the last "
                   "good goal and its intervals keep completing")
def test_alias_bomb_reload_is_refused(rig: Rig, tmp_path: Path, record_property: Any) -> None:
    from fleetpilot.agent.goal_reload import GoalReloader

    goal_file = tmp_path / "goal.yaml"
    goal_file.write_text(GOAL_PATH.read_text())
    reloader = GoalReloader(str(goal_file), lambda g: None)
    bomb = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9))
    goal_file.write_text(bomb)
    assert len(bomb) < 600
    t0 = time.monotonic()
    new_goal, _, error = reloader.check(rig.goal)
    took = time.monotonic() - t0
    assert new_goal is None and error and "alias" in error and "lol" not in error
    assert took < 5, took  # the expansion would be 9**9 values: minutes and gigabytes
    d = rig.daemon("a")
    assert step(rig, d).active == "policy"  # the daemon itself is untouched
    record_property("observed", f"{error.replace(str(tmp_path), '$TMP')[:160]}; {took * 1e3:.0f} ms")


class _TrickleKube(_Trickle):
    """An API server that answers every request with headers at once and a body at one byte per 0.2 s."""


@pytest.mark.fault(group=GROUP, scenario="Kubernetes API server trickles every answer (1 byte per 0.2 s)",
                   expected="each call is cut at its total deadline (not per socket read); state unknown -> no write; "
                   "the interval completes and the audit names the timeouts")
def test_trickling_kube_api_is_cut(rig: Rig, record_property: Any) -> None:
    srv = _TrickleKube()
    try:
        d = rig.daemon("a", api_host=srv.url, leader=False, attempts=1)
        before = rig.replicas()
        t0 = time.monotonic()
        rec = step(rig, d)
        took = time.monotonic() - t0
        assert rig.replicas() == before
        assert any("deadline" in e for e in rec.errors), rec.errors
        assert took < 60, f"interval took {took:.1f}s"  # one trickled answer alone would take 20,000 s
        record_property("observed", f"interval {took:.1f}s real; {len(rec.errors)} errors, e.g. {rec.errors[0][:90]}")
    finally:
        srv.close()


@pytest.mark.fault(group=GROUP, scenario="a Deployment and an HTTPRoute without the opt-in marker fleetpilot.io/managed",
                   expected="neither is touched (refused like a foreign object, the reason in the audit); the opted-in "
                   "model is still scaled")
def test_objects_without_opt_in_are_refused(rig: Rig, record_property: Any) -> None:
    from harness import ScriptedPolicy

    def unmark(plural: str, ns: str, name: str) -> None:
        def mutate(obj: dict[str, Any]) -> None:
            (obj["metadata"].get("annotations") or {}).pop("fleetpilot.io/managed", None)
            (obj["metadata"].get("labels") or {}).pop("fleetpilot.io/managed", None)

        rig.emu.objects.update(plural, ns, name, mutate)

    small = rig.goal.model(SMALL).deployment
    route = next(r for r in rig.goal.routes if r.http_route is not None)
    unmark("deployments", small.namespace, small.name)
    unmark("httproutes", route.http_route.namespace, route.http_route.name)
    a, b = route.models[0], route.models[1]
    d = rig.daemon("a", policy=ScriptedPolicy({BIG: START - 2, SMALL: START - 2}, weights={route.name: {a: 0.9, b: 0.1}}))
    d.ownership.require_opt_in = True
    seq = rig.emu.requests[-1].seq if rig.emu.requests else 0
    rec = step(rig, d)
    writes = [r for r in rig.emu.requests if r.seq > seq and r.method in ("PATCH", "PUT") and r.status < 400]
    assert rig.replicas()[SMALL] == START and rig.replicas()[BIG] == START - 2
    assert not [w for w in writes if SMALL in w.path or w.path.endswith(f"/httproutes/{route.http_route.name}")], \
        [w.path for w in writes]
    assert "not opted in" in rec.foreign[SMALL] and "fleetpilot.io/managed" in rec.foreign[SMALL]
    assert any(route.name in k for k in rec.foreign)
    record_property("observed", rec.foreign[SMALL][:120])
