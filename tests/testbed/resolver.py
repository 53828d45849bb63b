"""A system resolver that never answers, for tests of name lookups bounded by a call's deadline.

Installed over ``socket.getaddrinfo`` (pytest's ``monkeypatch``): names under ``.dead.test`` block until
:meth:`DeadResolver.release` is set (a resolver that never answers: glibc waits for its retries, nsswitch plugins may
wait longer), then fail as a resolver timing out does; names under ``.gone.test`` fail at once as an unknown name
does; every other name resolves as before. It counts the lookups it holds.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any


class DeadResolver:
    def __init__(self, real: Callable[..., list[Any]]) -> None:
        self.real = real
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.held = 0
        self.most = 0

    def __call__(self, host: object, port: object, *args: object, **kwargs: object) -> list[Any]:
        if isinstance(host, str) and host.endswith(".gone.test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if isinstance(host, str) and host.endswith(".dead.test"):
            with self.lock:
                self.held += 1
                self.most = max(self.most, self.held)
            try:
                self.release.wait(60)
            finally:
                with self.lock:
                    self.held -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return self.real(host, port, *args, **kwargs)

    def drain(self, timeout_s: float = 10.0) -> None:
        """Let every held lookup return (before the real resolver is put back); fails if one does not."""
        self.release.set()
        end = time.monotonic() + timeout_s
        while self.held and time.monotonic() < end:
            self.release.wait(0.01)
        assert self.held == 0, f"{self.held} lookups still held"
