"""A Kubernetes API server stand-in that records the credential each request carries (tests of kubeconfig
credentials: exec plugins, auth-providers). Every GET is answered with one Namespace; ``seen`` lists each request's
``Authorization`` header in order. :class:`UtcClock` is the aware UTC clock a test injects into the kubeconfig loader
(``load_kubeconfig(..., clock=)``) to move a credential's lifetime by hand."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from testbed.prometheus import reply_json, serve_in_thread

NAMESPACE = b'{"kind":"Namespace","apiVersion":"v1","metadata":{"name":"x"}}'


class _Recorder(BaseHTTPRequestHandler):
    server: AuthRecordingServer

    def do_GET(self) -> None:  # noqa: N802 -- http.server's name
        self.server.seen.append(self.headers.get("Authorization"))
        reply_json(self, NAMESPACE)

    def log_message(self, *args: Any) -> None:
        pass


class AuthRecordingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.seen: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve_forever(self, poll_interval: float = 0.05) -> None:  # a teardown within 50 ms, not 0.5 s
        super().serve_forever(poll_interval)


def serve_auth_recorder() -> Iterator[AuthRecordingServer]:
    """An :class:`AuthRecordingServer` served in a thread for the ``with``/fixture's duration."""
    srv = AuthRecordingServer()
    for _hostport in serve_in_thread(srv):
        yield srv


class UtcClock:
    """An injected aware UTC clock, moved by hand (starts at the real time)."""

    def __init__(self) -> None:
        self.now = datetime.datetime.now(tz=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.timestamp()

    def at(self, epoch_s: float) -> None:
        self.now = datetime.datetime.fromtimestamp(epoch_s, tz=datetime.UTC)
