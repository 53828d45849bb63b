"""Total deadlines for blocking HTTP calls made through urllib3 (``requests`` for Prometheus, the official
``kubernetes`` client for the API server).

Socket timeouts bound each *read*, not the request: a server trickling its headers or body one byte at a time never
trips them, and the daemon's interval never ends. :class:`DeadlineGuard` fixes that for every connection of a
urllib3 ``PoolManager`` it is installed on (:meth:`DeadlineGuard.install`): :meth:`DeadlineGuard.call` runs a
function with a watchdog timer that, at the deadline, shuts down the sockets the *calling thread* is using -- which
wakes a blocked ``recv`` at once (``close`` would not) -- and then raises :class:`DeadlineExceededError`.

A TCP connect in progress has no socket to shut down yet (urllib3 hands it over only once connected), so the
connect phase is bounded by the time left instead: each address tried gets ``min(connect timeout, time left)``,
and none is tried past the deadline. Name resolution (``getaddrinfo``, which has no timeout of its own: a resolver
that never answers holds it for the resolver's retries, ~10-30 s, or longer behind nsswitch plugins) runs in a
helper thread the call waits for only until its deadline (:func:`_resolve`; at most ``_MAX_LOOKUPS`` such lookups
run at once, a lookup past its caller's deadline finishes in the background). One call thus takes at most its
deadline plus a small constant, also for a resolver that never answers, a server that never answers a SYN, a host
with several unreachable addresses, or a call without a connect timeout.

:func:`install_kube_deadline` applies it to a ``kubernetes.client.ApiClient``: every API call is bounded by the
``_request_timeout`` it passes (or a default), as a total.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family

__all__ = ["DeadlineExceededError", "DeadlineGuard", "install_kube_deadline"]

T = TypeVar("T")


class DeadlineExceededError(TimeoutError):
    """The call's total deadline passed; its connection was shut down."""


class DeadlineGuard:
    """Tracks connections in use per thread and cuts them when a call's total deadline passes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, set[Any]] = {}
        self._cut: set[int] = set()  # threads whose current call's deadline has passed
        self._deadlines: dict[int, float] = {}  # thread -> time.monotonic() deadline of its current call

    # -- tracking -----------------------------------------------------------------------------------------------------

    def add(self, conn: Any) -> None:
        with self._lock:
            self._active.setdefault(threading.get_ident(), set()).add(conn)

    def discard(self, conn: Any) -> None:
        with self._lock:
            for conns in self._active.values():
                conns.discard(conn)

    def cut(self, thread_id: int) -> None:
        """Shut down every socket ``thread_id`` is using (a blocked recv returns at once).

        That is each tracked connection's ``sock`` and the socket its last response reads from: for an answer that
        ends with the connection (``Connection: close``, HTTP/1.0) ``http.client`` sets ``conn.sock = None`` and
        the socket lives on inside the response, so ``conn.sock`` alone would leave a trickling body uncut. Sockets
        a connection of this thread opens or reads from after the cut are shut down at once (:meth:`_late`).
        """
        with self._lock:
            self._cut.add(thread_id)
            conns = list(self._active.get(thread_id, ()))
        for conn in conns:
            _shutdown(getattr(conn, "sock", None))
            _shutdown(getattr(conn, _RESPONSE_SOCK, None))

    def remaining(self) -> float | None:
        """Seconds left before the calling thread's current call's deadline (None: not inside :meth:`call`)."""
        with self._lock:
            deadline = self._deadlines.get(threading.get_ident())
        return None if deadline is None else deadline - time.monotonic()

    def _late(self, sock: Any) -> None:
        """A socket came into use after this thread's deadline passed: shut it down too."""
        with self._lock:
            late = threading.get_ident() in self._cut
        if late:
            _shutdown(sock)

    def pool_classes(self) -> dict[str, type]:
        """urllib3 pool classes that report the connections they hand out (and their sockets) to this guard."""
        guard = self

        def tracked_conn(base: type) -> type:
            class Connection(base):  # type: ignore[misc, valid-type]
                def _new_conn(self) -> socket.socket:
                    """The TCP connect, each address tried within the call's time left (no socket exists to shut
                    down while it is in progress)."""
                    left = guard.remaining()
                    if left is None:
                        return super()._new_conn()
                    try:
                        infos = _resolve(self._dns_host.strip("[]"), self.port, allowed_gai_family(), left)
                    except _LookupTimeoutError as exc:
                        raise ConnectTimeoutError(self, f"Name resolution of {self.host} did not finish within "
                                                        "the call's total deadline") from exc
                    except socket.gaierror as exc:
                        raise NameResolutionError(self.host, self, exc) from exc  # as urllib3 names it
                    except (OSError, UnicodeError):
                        infos = []
                    addresses = list(dict.fromkeys(str(i[4][0]) for i in infos))
                    if not addresses or any(len(i[4]) > 3 and i[4][3] for i in infos):  # unresolved, or scoped
                        return self._bounded_new_conn(None)  # urllib3 resolves (and names the error) itself
                    last: Exception | None = None
                    for address in addresses:
                        try:
                            return self._bounded_new_conn(address)
                        except (ConnectTimeoutError, NewConnectionError) as exc:
                            last = exc
                    assert last is not None
                    raise last

                def _bounded_new_conn(self, address: str | None) -> socket.socket:
                    """``super()._new_conn()`` (to ``address``, else the host) with the connect timeout cut to the
                    time left; past the deadline, a ConnectTimeoutError without trying."""
                    left = guard.remaining()
                    if left is not None and left <= 0:
                        raise ConnectTimeoutError(self, f"Connection to {self.host} not tried: the call's total "
                                                        "deadline passed")
                    saved_timeout, saved_host = self.timeout, self._dns_host
                    if left is not None:
                        ok = isinstance(saved_timeout, int | float) and math.isfinite(saved_timeout)
                        self.timeout = min(float(saved_timeout), left) if ok else left
                    if address is not None:
                        self._dns_host = address
                    try:
                        return super()._new_conn()
                    finally:
                        self.timeout, self._dns_host = saved_timeout, saved_host

                def connect(self) -> None:
                    super().connect()
                    guard._late(self.sock)  # noqa: SLF001 -- connected after the cut: no request on it

                def getresponse(self, *args: Any, **kwargs: Any) -> Any:
                    # remember the socket before http.client may hand it over to the response (conn.sock = None)
                    setattr(self, _RESPONSE_SOCK, self.sock)
                    guard._late(self.sock)  # noqa: SLF001
                    return super().getresponse(*args, **kwargs)

            Connection.__name__ = Connection.__qualname__ = f"Tracked{base.__name__}"
            return Connection

        def tracked(base: type) -> type:
            class Pool(base):  # type: ignore[misc, valid-type]
                ConnectionCls = tracked_conn(base.ConnectionCls)

                def _get_conn(self, timeout: float | None = None) -> Any:
                    conn = super()._get_conn(timeout)
                    guard.add(conn)
                    return conn

                def _put_conn(self, conn: Any) -> None:
                    if conn is not None:
                        guard.discard(conn)
                    super()._put_conn(conn)

            return Pool

        return {"http": tracked(HTTPConnectionPool), "https": tracked(HTTPSConnectionPool)}

    def install(self, pool_manager: Any) -> Any:
        """Make ``pool_manager`` (a urllib3 PoolManager or ProxyManager) create tracked pools; returns it."""
        pool_manager.pool_classes_by_scheme = self.pool_classes()
        pool_manager.clear()  # pools made before this point would not be tracked
        return pool_manager

    # -- bounded calls ------------------------------------------------------------------------------------------------

    def call(self, fn: Callable[[], T], total_s: float, what: str = "call") -> T:
        """``fn()`` with a total deadline of ``total_s`` seconds: connect, TLS, headers and body together."""
        fired = threading.Event()
        me = threading.get_ident()
        deadline = time.monotonic() + max(0.0, float(total_s))
        with self._lock:
            self._deadlines[me] = deadline

        def cut() -> None:
            fired.set()
            self.cut(me)

        watchdog = threading.Timer(max(0.0, float(total_s)), cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            result = fn()
        except Exception as exc:
            if fired.is_set() or time.monotonic() >= deadline:  # e.g. a connect cut to the time left
                raise DeadlineExceededError(f"{what}: no complete answer within the total deadline of {total_s:g}s") \
                    from exc
            raise
        finally:
            watchdog.cancel()
            watchdog.join(timeout=5.0)  # a cut still running must not outlive the call (nor mark the next one)
            with self._lock:
                self._cut.discard(me)
                self._deadlines.pop(me, None)
        if fired.is_set():
            raise DeadlineExceededError(f"{what}: no complete answer within the total deadline of {total_s:g}s")
        return result


class _LookupTimeoutError(Exception):
    """A name lookup did not answer within the time its caller had left."""


#: name lookups that may run at once in helper threads (a resolver that never answers holds each for its retries)
_MAX_LOOKUPS = 8
_LOOKUPS = threading.BoundedSemaphore(_MAX_LOOKUPS)


def _resolve(host: str, port: int, family: int, left_s: float) -> list[Any]:
    """``socket.getaddrinfo(host, port, family, SOCK_STREAM)``, waited for at most ``left_s`` seconds.

    The lookup runs in a daemon thread: ``getaddrinfo`` cannot be interrupted, so a lookup past the deadline is left
    to finish (or fail) in the background and its answer dropped. At most ``_MAX_LOOKUPS`` run at once; a caller
    that cannot start one within ``left_s`` (all of them stuck on a dead resolver) times out too, so memory and
    threads stay bounded. Raises what ``getaddrinfo`` raises, or :class:`_LookupTimeoutError`."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    else:  # an address literal: no resolver involved, nothing to wait for
        return list(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
    end = time.monotonic() + float(left_s)
    if left_s <= 0 or not _LOOKUPS.acquire(timeout=float(left_s)):
        raise _LookupTimeoutError(host)
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
            box["error"] = exc
        finally:
            _LOOKUPS.release()
            done.set()

    try:
        threading.Thread(target=run, name="fleetpilot-resolve", daemon=True).start()
    except BaseException:  # no thread (RuntimeError: can't start new thread): the permit is not held by anyone
        _LOOKUPS.release()
        raise
    if not done.wait(max(0.0, end - time.monotonic())):
        raise _LookupTimeoutError(host)
    if "error" in box:
        raise box["error"]
    return list(box["infos"])


_RESPONSE_SOCK = "_fleetpilot_response_sock"  # on a tracked connection: the socket its last response reads from


def _shutdown(sock: Any) -> None:
    """``shutdown(SHUT_RDWR)``: wakes a recv blocked in another thread (``close`` would not). A socket already closed
    has no descriptor any more (-1), so this never touches a descriptor number reused by someone else."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


def _total(timeout: Any, default_s: float) -> float:
    if timeout is None:
        return default_s
    if isinstance(timeout, tuple | list):
        parts = [float(x) for x in timeout if x is not None]
        return sum(parts) if parts else default_s  # connect + read: the most one attempt was allowed before
    return float(timeout)


def install_kube_deadline(api_client: Any, default_s: float = 30.0) -> DeadlineGuard:
    """Bound every call of a ``kubernetes.client.ApiClient`` by a total deadline (its ``_request_timeout`` or
    ``default_s``); a call past it raises :class:`DeadlineExceededError` (a ``TimeoutError``). Idempotent."""
    rest = api_client.rest_client
    existing = getattr(rest, "_fleetpilot_guard", None)
    if existing is not None:
        return existing
    guard = DeadlineGuard()
    guard.install(rest.pool_manager)
    original = rest.request

    @functools.wraps(original)
    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        total = _total(kwargs.get("_request_timeout"), default_s)

        def whole() -> Any:
            resp = original(method, url, *args, **kwargs)
            read = getattr(resp, "read", None)
            if callable(read) and kwargs.get("_preload_content", True) is not False:
                read()  # the client reads the body after request() returns: read it here, inside the deadline
            return resp

        return guard.call(whole, total, f"{method} {url.split('?')[0]}")

    rest.request = request
    rest._fleetpilot_guard = guard  # noqa: SLF001
    return guard
