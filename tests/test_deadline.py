"""Total deadlines on Kubernetes API calls (agent/deadline.py): a server trickling its answer is cut at the call's
deadline, where per-read socket timeouts never fire; normal calls through the emulator are unaffected.

Also answers that end with their connection (``Connection: close``, HTTP/1.0): ``http.client`` hands the socket
over to the response (``conn.sock = None``), and the deadline must still cut it -- for Prometheus queries
(``--prometheus-timeout``, ``fleetpilot trace import``) and Kubernetes calls alike.
"""

from __future__ import annotations

import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import kubernetes
import pytest
import requests
import urllib3

from fleetpilot.agent.deadline import DeadlineExceededError, DeadlineGuard, install_kube_deadline
from fleetpilot.agent.prom import PrometheusAccess, PrometheusSource, make_session
from fleetpilot.simulations.errors import TemporaryError
from fleetpilot.simulations.goal import load_goal
from testbed.k8s_emulator import K8sEmulator
from testbed.prometheus import run_within
from testbed.resolver import DeadResolver


class _Trickle:
    def __init__(self, phase: str) -> None:
        self.phase = phase
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sent = 0
        self.total = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            body = b'{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"x"}}' + b" " * 2000
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            fast, slow = (head, body) if self.phase == "body" else (b"", head + body)
            self.total = len(fast) + len(slow)
            try:
                conn.sendall(fast)
                self.sent = len(fast)
                for i in range(len(slow)):
                    if self.stop.wait(0.05):
                        return
                    conn.sendall(slow[i:i + 1])
                    self.sent += 1
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.t.join(timeout=10)


def _client(host: str) -> kubernetes.client.ApiClient:
    cfg = kubernetes.client.Configuration()
    cfg.host = host
    cfg.retries = False
    return kubernetes.client.ApiClient(cfg)


@pytest.mark.parametrize("phase", ["body", "headers"])
def test_trickling_api_server_is_cut_at_the_total_deadline(phase: str) -> None:
    srv = _Trickle(phase)
    try:
        api = _client(srv.url)
        install_kube_deadline(api)
        with pytest.raises(DeadlineExceededError, match="total deadline"):
            kubernetes.client.CoreV1Api(api).read_namespace("x", _request_timeout=0.5)
        assert srv.sent < srv.total  # the full answer takes 100+ s at this pace
    finally:
        srv.close()


def test_normal_calls_are_unchanged() -> None:
    with K8sEmulator() as emu:
        emu.add_deployment("inference", "m", replicas=3)
        api = _client(emu.url)
        guard = install_kube_deadline(api, default_s=5.0)
        assert install_kube_deadline(api) is guard  # idempotent
        apps = kubernetes.client.AppsV1Api(api)
        for _ in range(3):  # connections are reused from the pool and stay tracked
            assert apps.read_namespaced_deployment_scale("m", "inference", _request_timeout=2.0).spec.replicas == 3
        apps.patch_namespaced_deployment_scale("m", "inference", {"spec": {"replicas": 4}})
        assert emu.replicas("inference", "m") == 4


# ------------------------------------------------------------------------------------------------ answers that close

EMPTY = b'{"status":"success","data":{"resultType":"vector","result":[]}}'
NAMESPACE = b'{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"x"}}'


class _Server:
    """A loopback HTTP server answering ``body`` to every request, one connection at a time.

    ``style``: ``close`` (HTTP/1.1, ``Connection: close``, no Content-Length: the body ends with the connection),
    ``http10`` (an HTTP/1.0 answer, which always ends its connection) or ``keep-alive`` (HTTP/1.1 with
    Content-Length; the connection serves the next request). ``trickle_s``: None sends the body at once, else one
    byte per ``trickle_s`` (waiting on an Event, so :meth:`close` stops it at once). ``gone`` is set when the client
    has cut the connection in the middle of an answer; the times of requests and cuts are recorded.
    """

    def __init__(self, style: str, body: bytes = EMPTY, trickle_s: float | None = None) -> None:
        self.style, self.body, self.trickle_s = style, body, trickle_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.accepted = 0
        self.requests: list[float] = []
        self.gone_at: list[float] = []
        self.bytes_sent = 0
        self.gone = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _run(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            while not self.stop.is_set():
                if not sel.select(timeout=0.1):
                    continue
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                self.accepted += 1
                with conn:
                    self._serve(conn)

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return False
            if not chunk:
                return False
            data += chunk
        return True

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        while not self.stop.is_set() and self._read_request(conn):
            self.requests.append(time.monotonic())
            if self.style == "close":
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            else:
                version = b"HTTP/1.0" if self.style == "http10" else b"HTTP/1.1"
                head = (version + b" 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                        + str(len(self.body)).encode() + b"\r\n\r\n")
            try:
                conn.sendall(head)
                if self.trickle_s is None:
                    conn.sendall(self.body)
                else:
                    for i in range(len(self.body)):
                        if self.stop.wait(self.trickle_s):
                            return
                        conn.sendall(self.body[i:i + 1])
                        self.bytes_sent += 1
            except OSError:  # the client cut the connection
                self.gone_at.append(time.monotonic())
                self.gone.set()
                return
            if self.style != "keep-alive":
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.sock.close()


Make = Callable[..., "_Server"]


@pytest.fixture
def servers() -> Iterator[Make]:
    made: list[_Server] = []

    def make(style: str, body: bytes = EMPTY, trickle_s: float | None = None) -> _Server:
        made.append(_Server(style, body, trickle_s))
        return made[-1]

    yield make
    for srv in made:
        srv.close()


DEADLINE_S = 1.0
MARGIN_S = 5.0  # generous: the cut itself takes milliseconds; without it the answer would take ~100 s
PAD = b" " * 500  # 500 bytes at 0.2 s/byte: ~100 s, far beyond the deadline (a regression fails, it never hangs)


@pytest.mark.parametrize("style", ["close", "http10", "keep-alive"])
def test_a_prometheus_query_is_cut_at_its_total_deadline_also_when_the_answer_closes(servers: Make, style: str) -> None:
    srv = servers(style, EMPTY + PAD, trickle_s=0.2)
    session = make_session(PrometheusAccess(srv.url, timeout_s=DEADLINE_S))
    t0 = time.monotonic()
    with pytest.raises(requests.exceptions.Timeout, match="total deadline"):
        session.get(srv.url + "/api/v1/query", params={"query": "up"}, timeout=DEADLINE_S)
    elapsed = time.monotonic() - t0
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + MARGIN_S, elapsed
    assert srv.gone.wait(MARGIN_S), "the server never saw the connection cut"
    assert srv.gone_at[0] - srv.requests[0] < DEADLINE_S + MARGIN_S
    assert srv.bytes_sent < len(EMPTY + PAD)


@pytest.mark.parametrize("style", ["close", "http10"])
def test_the_source_reports_the_deadline_for_an_answer_that_closes(servers: Make, style: str) -> None:
    goal = load_goal(Path(__file__).resolve().parent.parent / "examples" / "goals" / "single-model.yaml")
    srv = servers(style, EMPTY + PAD, trickle_s=0.2)
    src = PrometheusSource(srv.url, goal, clock=lambda: 1_767_225_600.0, freshness_query=None,
                           access=PrometheusAccess(srv.url, timeout_s=DEADLINE_S))
    t0 = time.monotonic()
    with pytest.raises(TemporaryError, match="total deadline"):
        src.read()
    assert time.monotonic() - t0 < DEADLINE_S + MARGIN_S
    assert srv.gone.wait(MARGIN_S)


@pytest.mark.parametrize("style", ["close", "http10", "keep-alive"])
def test_prompt_answers_still_work_and_keep_alive_reuses_its_connection(servers: Make, style: str) -> None:
    srv = servers(style, EMPTY + b" " * 100_000)  # larger than a socket buffer: read in several recvs
    session = make_session(PrometheusAccess(srv.url, timeout_s=5.0))
    for _ in range(3):
        resp = session.get(srv.url + "/api/v1/query", params={"query": "up"}, timeout=5.0)
        assert resp.status_code == 200 and resp.json()["status"] == "success"
    assert len(srv.requests) == 3
    assert srv.accepted == (1 if style == "keep-alive" else 3)
    assert not srv.gone.is_set()


def test_the_body_cap_still_holds_for_an_answer_that_closes(servers: Make) -> None:
    srv = servers("close", EMPTY + b" " * 300_000)
    session = make_session(PrometheusAccess(srv.url, timeout_s=5.0))
    session.max_body_bytes = 100_000
    with pytest.raises(requests.exceptions.ContentDecodingError, match="larger than 100000 bytes"):
        session.get(srv.url + "/api/v1/query", timeout=5.0)


@pytest.mark.parametrize("style", ["close", "http10"])
def test_a_kubernetes_call_is_cut_also_when_the_answer_closes(servers: Make, style: str) -> None:
    srv = servers(style, NAMESPACE + PAD, trickle_s=0.2)
    api = _client(srv.url)
    install_kube_deadline(api)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceededError, match="total deadline"):
        kubernetes.client.CoreV1Api(api).read_namespace("x", _request_timeout=DEADLINE_S)
    assert time.monotonic() - t0 < DEADLINE_S + MARGIN_S
    assert srv.gone.wait(MARGIN_S)


def test_trace_import_honours_prometheus_timeout_when_the_answer_closes(servers: Make, tmp_path: Path) -> None:
    """The reviewer's reproduction: ``fleetpilot trace import`` against a server that sends ``Connection: close``
    and trickles the body gives up at ``--prometheus-timeout`` (exit 2, one line), instead of for as long as the
    server trickles."""
    srv = servers("close", EMPTY + PAD, trickle_s=0.2)
    r = subprocess.run([sys.executable, "-m", "fleetpilot", "trace", "import", "--prometheus", srv.url,
                        "--prometheus-timeout", str(DEADLINE_S), "--range", "1h", "--out", str(tmp_path / "ti.csv")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.count("\n") == 1 and "DeadlineExceeded" in r.stderr, r.stderr
    assert srv.gone.wait(MARGIN_S)
    assert srv.gone_at[0] - srv.requests[0] < DEADLINE_S + MARGIN_S
    assert not (tmp_path / "ti.csv").exists()


# ------------------------------------------------------------------------------------------------ a connect that hangs

class _Unaccepting:
    """A loopback listener whose accept queue is full and never drained: a further connect stays in SYN_SENT (the
    kernel drops its SYNs) until the client gives up -- a server that never answers, without any network.

    Backlog 0 and connections made until the listener reports its queue full (``TCP_INFO`` of a listening socket:
    ``tcpi_unacked`` is the accept queue's length, ``tcpi_sacked`` its limit; full when longer than the limit)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.fillers: list[socket.socket] = []
        end = time.monotonic() + 10
        while not self.full():
            assert time.monotonic() < end and len(self.fillers) < 64, "the accept queue never filled"
            self.fillers.append(socket.create_connection(self.sock.getsockname(), timeout=5))

    def full(self) -> bool:
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        queued, limit = struct.unpack_from("II", info, 24)
        return queued > limit

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for c in self.fillers:
            c.close()
        self.sock.close()


@pytest.fixture
def unaccepting() -> Iterator[_Unaccepting]:
    if not sys.platform.startswith("linux"):
        pytest.skip("a full accept queue drops SYNs on Linux")
    srv = _Unaccepting()
    yield srv
    srv.close()


def _timed(fn: Callable[[], object], limit_s: float) -> tuple[BaseException | None, float]:
    """(the exception ``fn`` raised, seconds it took); fails the test if it is still running after ``limit_s`` (the
    connect was not bounded) instead of hanging for the kernel's SYN retries."""
    _, err, elapsed = run_within(limit_s, fn, "the connect was not bounded by the deadline")
    return err, elapsed


CONNECT_MARGIN_S = 1.5  # the deadline plus this: far below the 60 s connect timeout / the kernel's ~2 min of SYNs


def test_a_connect_is_bounded_by_the_time_left_not_the_connect_timeout(unaccepting: _Unaccepting) -> None:
    """A 60 s connect timeout inside a 1 s deadline: the call ends at the deadline (before: after 60 s)."""
    guard = DeadlineGuard()
    pm = guard.install(urllib3.PoolManager())
    err, elapsed = _timed(lambda: guard.call(
        lambda: pm.request("GET", unaccepting.url + "/", retries=False, timeout=urllib3.Timeout(connect=60, read=60)),
        DEADLINE_S, "GET /"), DEADLINE_S + MARGIN_S)
    assert isinstance(err, DeadlineExceededError), err
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + CONNECT_MARGIN_S, elapsed
    assert unaccepting.full()  # the listener never took the connection: it was the connect that waited


def test_a_kubernetes_call_without_a_timeout_connects_within_its_deadline(unaccepting: _Unaccepting) -> None:
    """No ``_request_timeout``: no connect timeout at all, the kernel's SYN retries (~2 min) bounded the connect."""
    api = _client(unaccepting.url)
    install_kube_deadline(api, default_s=DEADLINE_S)
    err, elapsed = _timed(lambda: kubernetes.client.CoreV1Api(api).read_namespace("x"), DEADLINE_S + MARGIN_S)
    assert isinstance(err, DeadlineExceededError), err
    assert elapsed < DEADLINE_S + CONNECT_MARGIN_S, elapsed


def test_a_prometheus_query_connects_within_its_deadline(unaccepting: _Unaccepting) -> None:
    session = make_session(PrometheusAccess(unaccepting.url, timeout_s=DEADLINE_S))
    err, elapsed = _timed(lambda: session.get(unaccepting.url + "/api/v1/query", params={"query": "up"}),
                          DEADLINE_S + MARGIN_S)
    assert isinstance(err, requests.exceptions.Timeout) and "total deadline" in str(err), err
    assert elapsed < DEADLINE_S + CONNECT_MARGIN_S, elapsed


def test_several_unreachable_addresses_share_the_deadline(unaccepting: _Unaccepting,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with five addresses, none answering: urllib3 gives each the whole connect timeout (5x); the time
    left is shared instead."""
    real = socket.getaddrinfo

    def five(host: object, port: object, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        if host == "api.fleet.test":
            return real("127.0.0.1", unaccepting.port, socket.AF_INET, socket.SOCK_STREAM) * 5
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", five)
    guard = DeadlineGuard()
    pm = guard.install(urllib3.PoolManager())
    url = f"http://api.fleet.test:{unaccepting.port}/"
    err, elapsed = _timed(lambda: guard.call(
        lambda: pm.request("GET", url, retries=False, timeout=urllib3.Timeout(connect=60, read=60)),
        DEADLINE_S, "GET /"), DEADLINE_S + MARGIN_S)
    assert isinstance(err, DeadlineExceededError), err
    assert elapsed < DEADLINE_S + CONNECT_MARGIN_S, elapsed


def test_a_connect_within_the_deadline_still_works(servers: Make) -> None:
    """The bounded connect changes nothing for a server that answers (one address or several)."""
    srv = servers("keep-alive", NAMESPACE)
    guard = DeadlineGuard()
    pm = guard.install(urllib3.PoolManager())
    for _ in range(2):
        r = guard.call(lambda: pm.request("GET", srv.url + "/", retries=False, timeout=urllib3.Timeout(connect=60)),
                       5.0, "GET /")
        assert r.status == 200 and r.data == NAMESPACE
    assert guard.remaining() is None  # outside a call: no deadline


def test_a_resolver_that_never_answers_is_bounded_by_the_deadline(dead_resolver: DeadResolver) -> None:
    """Before: getaddrinfo ran in the calling thread with no timeout, so the call took as long as the resolver."""
    guard = DeadlineGuard()
    pm = guard.install(urllib3.PoolManager())
    err, elapsed = _timed(lambda: guard.call(
        lambda: pm.request("GET", "http://api.dead.test:6443/", retries=False, timeout=urllib3.Timeout(connect=60)),
        DEADLINE_S, "GET /"), DEADLINE_S + MARGIN_S)
    assert isinstance(err, DeadlineExceededError), err
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + CONNECT_MARGIN_S, elapsed
    assert dead_resolver.held == 1  # the lookup itself is still waiting, in the background


def test_kubernetes_and_prometheus_calls_are_bounded_by_a_dead_resolver(dead_resolver: DeadResolver) -> None:
    api = _client("http://api.dead.test:6443")
    install_kube_deadline(api, default_s=DEADLINE_S)
    err, elapsed = _timed(lambda: kubernetes.client.CoreV1Api(api).read_namespace("x"), DEADLINE_S + MARGIN_S)
    assert isinstance(err, DeadlineExceededError), err
    assert elapsed < DEADLINE_S + CONNECT_MARGIN_S, elapsed
    url = "http://prometheus.dead.test:9090"
    session = make_session(PrometheusAccess(url, timeout_s=DEADLINE_S))
    err, elapsed = _timed(lambda: session.get(url + "/api/v1/query", params={"query": "up"}), DEADLINE_S + MARGIN_S)
    assert isinstance(err, requests.exceptions.Timeout) and "total deadline" in str(err), err
    assert elapsed < DEADLINE_S + CONNECT_MARGIN_S, elapsed


def test_stuck_lookups_are_bounded_in_number(dead_resolver: DeadResolver) -> None:
    """More calls than lookup threads, all on a dead resolver: each still ends at its deadline, and no more than
    ``_MAX_LOOKUPS`` lookups are ever held (threads and memory stay bounded)."""
    from fleetpilot.agent import deadline

    guard = DeadlineGuard()
    pm = guard.install(urllib3.PoolManager())
    short = 0.2
    for i in range(deadline._MAX_LOOKUPS + 3):  # noqa: SLF001
        err, elapsed = _timed(lambda i=i: guard.call(  # type: ignore[misc]
            lambda: pm.request("GET", f"http://n{i}.dead.test/", retries=False), short, "GET /"), short + MARGIN_S)
        assert isinstance(err, DeadlineExceededError), err
        assert elapsed < short + CONNECT_MARGIN_S, elapsed
    assert dead_resolver.most == deadline._MAX_LOOKUPS  # noqa: SLF001


def test_an_unknown_name_fails_at_once_as_urllib3_names_it(dead_resolver: DeadResolver) -> None:
    guard = DeadlineGuard()
    pm = guard.install(urllib3.PoolManager())
    start = time.monotonic()
    with pytest.raises(urllib3.exceptions.NameResolutionError, match="api.gone.test"):
        guard.call(lambda: pm.request("GET", "http://api.gone.test/", retries=False), 30.0, "GET /")
    assert time.monotonic() - start < 5.0
    with pytest.raises(urllib3.exceptions.NameResolutionError, match="api.gone.test"):  # outside a call: urllib3's
        pm.request("GET", "http://api.gone.test/", retries=False)


def test_an_address_literal_needs_no_lookup_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.1 / ::1 (an in-cluster API server's usual address): answered in the calling thread."""
    from fleetpilot.agent import deadline

    def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a lookup thread was started for an address literal")

    monkeypatch.setattr(deadline.threading, "Thread", no_thread)
    assert deadline._resolve("127.0.0.1", 80, socket.AF_UNSPEC, 1.0)[0][4][0] == "127.0.0.1"  # noqa: SLF001
    assert deadline._resolve("::1", 80, socket.AF_UNSPEC, 1.0)[0][4][0] == "::1"  # noqa: SLF001
    for _ in range(deadline._MAX_LOOKUPS + 1):  # noqa: SLF001 -- a thread that cannot start gives its permit back
        with pytest.raises(AssertionError, match="lookup thread"):
            deadline._resolve("localhost", 80, socket.AF_UNSPEC, 1.0)  # noqa: SLF001
