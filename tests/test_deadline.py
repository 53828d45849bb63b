"""Total deadlines on Kubernetes API calls (agent/deadline.py): a server trickling its answer is cut at the call's
deadline, where per-read socket timeouts never fire; normal calls through the emulator are unaffected."""

from __future__ import annotations

import socket
import threading

import kubernetes
import pytest

from fleetpilot.agent.deadline import DeadlineExceededError, install_kube_deadline
from testbed.k8s_emulator import K8sEmulator


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
