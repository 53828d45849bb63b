"""Prometheus in: run the goal's PromQL once per control interval and build the common :class:`Reading`.

:class:`PrometheusSource` asks Prometheus (through ``prometheus-api-client``'s ``PrometheusConnect.custom_query``)
for every query in :class:`~simulations.goal.PrometheusQueries`, each an instant vector with one series per
``model_name`` (the vLLM label; configurable), and turns the answers into the same
:class:`~policies.base.Reading` the simulator produces:

* ``arrival_rps``: the goal's ``arrival_rate`` query (completions per second by default) plus the growth of the
  waiting queue since the previous reading -- under overload completions saturate at capacity and the queue is
  where the excess arrivals go. Only growth is added (a draining queue is not subtracted: the completion rate's
  window and the queue's interval differ, and a low estimate while draining would invite a scale-down);
* ``in_flight`` / ``queued``: ``running`` / ``waiting``; p95 TTFT and e2e latency in **milliseconds** (the
  queries answer in seconds); mean prompt/generated tokens per request from the token-rate queries;
* ``ready`` / ``starting`` / ``desired`` come from Kubernetes, not Prometheus: the caller passes them in;
* class rates per route: an optional per-route query (``class_rate_query``, one series per ``route_label``), else
  derived from the model rates and the weights in force (least squares over the routes' model shares, clipped at
  zero; exact when routes do not share models);
* ``Reading.stale`` names every input that was missing, older than ``stale_after_intervals`` control intervals,
  NaN/infinite or garbage (negative, unparsable, absurdly large). Latency NaN while a model serves nothing is
  not stale (there is nothing to measure), nor TTFT NaN in a window with completions but no prompt tokens (vLLM
  counts both TTFT and prompt tokens at a request's first token: only ends of requests fell in the window).
  Sample age comes from ``freshness_query`` (the newest raw sample's ``timestamp()`` per model) compared with
  the query's evaluation time, so clocks need not agree. When that query
  answers nothing at all (it names a metric this server does not have), age is not checked and ``last_notes``
  says so; a model missing from a non-empty answer is stale.

Every failure to get an answer -- connection refused, timeout, HTTP 5xx, a body that is not the expected JSON --
raises :class:`~simulations.errors.TemporaryError`; an HTTP 4xx (the server rejected the PromQL) raises
:class:`~simulations.errors.PermanentError`. Nothing else escapes.

Access as operators have it (:class:`PrometheusAccess`, CLI flags from :func:`add_access_arguments`):

* TLS is **verified by default** (system CAs, or ``--prometheus-ca-file``); ``--insecure-skip-tls-verify`` turns
  it off only when asked, and :attr:`PrometheusSource.tls_verified` reports it for metrics and audit;
* a bearer token read from a file and re-read when the file changes (a projected ServiceAccount token rotates),
  basic auth with the password in a file (or in the URL's userinfo, which is then taken out of the URL),
  extra headers (``X-Scope-OrgID`` for multi-tenant Mimir/Cortex, API keys of managed services), client certs;
* a **total deadline per request** (connect, TLS handshake, headers and body together): a watchdog shuts the
  socket down when it passes, so a body trickling at 1 byte/s is cut at the deadline, not per socket read;
  bodies are capped at :data:`MAX_BODY_BYTES`;
* secrets (the token, the password, header values, URL userinfo) are replaced by ``***`` in every message this
  module produces (:func:`redact`), and :func:`install_log_redaction` extends that to every log record.

Ambiguous answers -- more than one series for the same model after the goal's label matchers (prod and staging
both exporting ``model_name="llama"``) -- are never "last one wins": the model's input is stale
(``<model>.<query>.ambiguous``) so the daemon falls back, and :attr:`PrometheusSource.last_ambiguous` names the
labels that tell the series apart.
"""

from __future__ import annotations

import argparse
import base64
import logging
import math
import os
import re
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import requests
import requests.adapters
import requests.auth
from urllib3.util.retry import Retry

from fleetpilot.agent.deadline import DeadlineExceededError as TotalDeadlineExceeded
from fleetpilot.agent.deadline import DeadlineGuard
from fleetpilot.policies.base import ModelReading, Reading
from fleetpilot.simulations.errors import PermanentError, TemporaryError, UserError
from fleetpilot.simulations.goal import GoalSpec
from fleetpilot.simulations.routing import RoutingMap

__all__ = [
    "DEFAULT_FRESHNESS_QUERY",
    "MAX_BODY_BYTES",
    "MAX_HISTORY_POINTS",
    "FleetState",
    "PrometheusAccess",
    "PrometheusSource",
    "QueryClient",
    "access_from_args",
    "add_access_arguments",
    "check_http_url",
    "install_log_redaction",
    "make_session",
    "redact",
    "redact_url",
    "register_secret",
    "register_url_secrets",
    "split_userinfo",
]

log = logging.getLogger(__name__)

DEFAULT_FRESHNESS_QUERY = "max by (model_name) (timestamp(vllm:num_requests_running))"
#: the metric whose scrape targets :meth:`PrometheusSource.discover_scrape_interval` looks up (vLLM always exports it)
SCRAPE_METRIC = "vllm:num_requests_running"
#: a reading's sample counts as stale past this many scrape intervals (one missed scrape is not stale)
STALE_SCRAPES = 2.5
#: Prometheus' rule of thumb: a rate()'s range holds at least this many scrape intervals
RANGE_SCRAPES = 4
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}
#: a PromQL range selector or subquery: ``[5m]``, ``[1m30s]``, ``[5m:30s]`` (its range part)
_RANGE_SELECTOR = re.compile(r"\[((?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y))+)(?::[^\]]*)?\]")


def duration_s(text: str) -> float | None:
    """Seconds of a Prometheus / Go duration (``30s``, ``1m30s``, ``500ms``); None if it is not one."""
    text = str(text).strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    total = sum(float(n) * _DURATION_S[u] for n, u in parts)
    return total if math.isfinite(total) and total > 0 else None


def widen_ranges(query: str, step_s: float) -> str:
    """``query`` with every range selector shorter than ``step_s`` widened to it (``rate(x[1m])`` at a 5-min step
    -> ``rate(x[300s])``): each step's value is then the step's own average, not its last minute's. Subqueries and
    ranges at least a step long are left as written."""

    def repl(m: re.Match[str]) -> str:
        d = duration_s(m.group(1))
        subquery = ":" in m.group(0)
        return f"[{step_s:g}s]" if not subquery and d is not None and d < step_s - 1e-9 else m.group(0)

    return _RANGE_SELECTOR.sub(repl, query)


def shortest_range_s(queries: Sequence[str]) -> float | None:
    """The shortest range selector (``[1m]``...) in ``queries``, in seconds; None when they have none."""
    found = [d for q in queries for r in _RANGE_SELECTOR.findall(q) if (d := duration_s(r)) is not None]
    return min(found) if found else None
MAX_SANE_RATE = 1e6  # req/s or tokens/s above this is garbage
MAX_SANE_LATENCY_S = 1e5
MAX_HISTORY_POINTS = 10_000  # readings per warm-up (Prometheus answers at most 11,000 points per series and range)
DEFAULT_CLASS = "default"  # request class name for a goal without routes (the simulator's single-trace class)

REQUIRED = ("arrival_rate", "running", "waiting")
LATENCY = ("ttft_p95", "e2e_p95")
OPTIONAL = ("kv_cache_usage", "prompt_tokens_rate", "generation_tokens_rate")


MAX_BODY_BYTES = 64 << 20  # an instant-vector answer for a fleet is KiBs; a runaway body is cut here
MAX_SECRET_FILE_BYTES = 64 << 10
SECRET_REREAD_S = 60.0  # like client-go, re-read credential files at least this often even if unchanged
REDACTED = "***"

# ------------------------------------------------------------------------------------------------ secrets & redaction

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_WORD = re.compile(r"[^\s'\"<>`]+")  # a URL-like word in a message: up to whitespace or quotes
_AUTH_HEADER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}")
_MIN_SECRET_LEN = 4  # shorter values would redact innocent text ("1", "dev"); they are also too weak to matter


def register_secret(value: str | None) -> None:
    """Remember ``value`` as a secret: :func:`redact` (and the log filter) replace it with ``***`` from now on."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _SECRETS_LOCK:
            _SECRETS.add(value)
            quoted = urllib.parse.quote(value, safe="")
            if quoted != value:
                _SECRETS.add(quoted)


def split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme, userinfo, rest)`` of ``url``: ``scheme`` is ``"http://"`` or ``""`` (none given); ``userinfo``
    is everything between it and the **last** ``@`` (None without one) -- also when the password holds an
    unescaped ``/``, ``:`` or ``@``, which URL parsers read as the end of the host, so a password is never
    mistaken for a host or a path (and shown as one)."""
    m = _SCHEME.match(url)
    scheme = m.group(0) if m else ""
    rest = url[len(scheme):]
    at = rest.rfind("@")
    if at < 0:
        return scheme, None, rest
    return scheme, rest[:at], rest[at + 1:]


def register_url_secrets(url: str | None) -> bool:
    """Register the password of ``url``'s ``user:password@`` part (raw and percent-decoded) as a secret; True when
    ``url`` has a userinfo-like part at all (with or without a scheme, whatever it contains)."""
    if not url:
        return False
    _, userinfo, _ = split_userinfo(str(url))
    if userinfo is None:
        return False
    _, sep, password = userinfo.partition(":")
    if sep:
        register_secret(password)
        register_secret(urllib.parse.unquote(password))
        register_secret(userinfo)
    return True


def redact_url(url: str) -> str:
    """``url`` safe to show: its userinfo replaced by ``***`` (see :func:`split_userinfo`), secrets redacted."""
    scheme, userinfo, rest = split_userinfo(str(url))
    return redact(scheme + rest if userinfo is None else f"{scheme}{REDACTED}@{rest}")


def _redact_word(m: re.Match[str]) -> str:
    word = m.group(0)
    at = word.rfind("@")
    if at <= 0:
        return word
    scheme = _SCHEME.search(word, 0, at)
    if scheme is not None:  # scheme://anything@host: everything up to the last @ is userinfo
        return word if scheme.end() == at else word[:scheme.end()] + REDACTED + word[at:]
    if ":" in word[:at]:  # no scheme: user:password@host (an e-mail address has no ':' before its @)
        return REDACTED + word[at:]
    return word


def redact(text: str) -> str:
    """``text`` with every registered secret, URL userinfo and ``Bearer``/``Basic`` credential replaced by ``***``.

    Userinfo is everything between ``scheme://`` (or, without a scheme, the start of a ``user:password@host``
    word) and the last ``@`` of the word, so a password holding ``/``, ``:`` or ``@`` is redacted whole.
    """
    if not text:
        return text
    with _SECRETS_LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for sec in secrets:
        if sec in text:
            text = text.replace(sec, REDACTED)
    if "@" in text:
        text = _WORD.sub(_redact_word, text)
    return _AUTH_HEADER.sub(lambda m: m.group(1) + " " + REDACTED, text)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 -- a broken format string is not ours to fix here
            return True
        clean = redact(msg)
        if record.exc_info and record.exc_info[1] is not None:
            exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(exc_text)
        if clean != msg or record.args:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactingFilter()


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Redact secrets from every record reaching the handlers of ``logger`` (default: the root logger).

    Idempotent. Call after logging is configured (handlers exist); handlers added later are not covered.
    """
    lg = logger or logging.getLogger()
    for handler in lg.handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


# ------------------------------------------------------------------------------------------------ access settings


@dataclass(frozen=True)
class PrometheusAccess:
    """How to reach Prometheus: URL, TLS, credentials (from files), extra headers and the total deadline.

    ``url`` may carry ``user:password@``: it is split off into basic auth (:meth:`from_url`) and never used or
    shown again (:attr:`display_url`).
    """

    url: str
    timeout_s: float = 5.0
    ca_file: str | None = None
    insecure_skip_tls_verify: bool = False
    bearer_token_file: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: str | None = None
    basic_auth_password: str | None = field(default=None, repr=False)  # only from URL userinfo
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    client_cert_file: str | None = None
    client_key_file: str | None = None

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> PrometheusAccess:
        """Split ``user:password@`` out of ``url`` into basic auth; the password is registered as a secret.

        The userinfo is everything before the last ``@`` (:func:`split_userinfo`), with or without a scheme; it
        is registered as a secret before anything can fail, and every message shows it as ``***``. A ``/``, ``?``
        or ``#`` in it must be percent-encoded (unencoded they end the host for every HTTP client, so the password
        would be sent as a host name): that is a UserError naming ``--prometheus``.
        """
        url = str(url)
        scheme, userinfo, rest = split_userinfo(url)
        if userinfo is None:
            return cls(url=url, **kw)
        register_url_secrets(url)
        shown = f"{scheme}{REDACTED}@{rest}"
        if scheme.lower() not in ("http://", "https://"):
            raise UserError(redact(f"--prometheus must be an http:// or https:// URL with a host, got "
                                   f"{shown[:120]!r}"))
        bad = sorted({c for c in userinfo if c in "/?#\\" or c.isspace() or not c.isprintable()})
        if bad:
            what = ", ".join(repr(c) if c.isprintable() and not c.isspace() else f"U+{ord(c):04X}" for c in bad)
            raise UserError(redact(f"--prometheus: the credentials before '@' in {shown[:120]!r} hold {what}: "
                                   "percent-encode it (/ as %2F, ? as %3F, # as %23, @ as %40) or use "
                                   "--prometheus-basic-auth-user and --prometheus-basic-auth-password-file"))
        raw_user, _, raw_password = userinfo.partition(":")
        user = urllib.parse.unquote(raw_user)
        password = urllib.parse.unquote(raw_password)
        register_secret(password)
        _check_basic_user(user, "--prometheus (the user name before '@')")
        if kw.pop("basic_auth_user", None) or kw.get("bearer_token_file") or kw.get("basic_auth_password_file"):
            raise UserError("--prometheus URL carries user:password and another credential flag is set; use one")
        kw.pop("basic_auth_password", None)
        return cls(url=scheme + rest, basic_auth_user=user, basic_auth_password=password or None, **kw)

    @property
    def display_url(self) -> str:
        """The URL safe to log (no userinfo; it never has any after :meth:`from_url`)."""
        return redact_url(self.url.rstrip("/"))

    @property
    def tls_verified(self) -> bool:
        """False only for ``https`` with ``insecure_skip_tls_verify`` (plain http has no TLS to verify)."""
        return not (self.url.lower().startswith("https://") and self.insecure_skip_tls_verify)

    def validate(self) -> PrometheusAccess:
        """Check what can be checked before connecting; every problem is a one-line UserError naming the flag."""
        check_http_url(self.url, "--prometheus")
        if not (math.isfinite(self.timeout_s) and 0.01 <= self.timeout_s <= 600):
            raise UserError(f"--prometheus-timeout must be between 0.01 and 600 seconds, got {self.timeout_s:g}")
        for flag, path in (("--prometheus-ca-file", self.ca_file),
                           ("--prometheus-bearer-token-file", self.bearer_token_file),
                           ("--prometheus-basic-auth-password-file", self.basic_auth_password_file),
                           ("--prometheus-client-cert", self.client_cert_file),
                           ("--prometheus-client-key", self.client_key_file)):
            if path is not None:
                _check_secret_file(path, flag)
        if self.ca_file and self.insecure_skip_tls_verify:
            raise UserError("--prometheus-ca-file and --insecure-skip-tls-verify contradict each other; use one")
        if self.bearer_token_file and (self.basic_auth_user or self.basic_auth_password_file):
            raise UserError("use either a bearer token or basic auth for Prometheus, not both")
        if self.basic_auth_password_file and not self.basic_auth_user:
            raise UserError("--prometheus-basic-auth-password-file needs --prometheus-basic-auth-user")
        if self.basic_auth_user is not None:
            _check_basic_user(self.basic_auth_user, "--prometheus-basic-auth-user")
        if bool(self.client_cert_file) != bool(self.client_key_file):
            raise UserError("--prometheus-client-cert and --prometheus-client-key go together")
        for name, value in self.headers:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}", name):
                raise UserError(f"--prometheus-header: invalid header name {redact(name[:40])!r}")
            if any(c in value for c in "\r\n\0") or len(value) > 8192:
                raise UserError(f"--prometheus-header {name}: value must be one line of at most 8192 characters")
            if not _printable_ascii(value):
                raise UserError(f"--prometheus-header {name}: value must be printable ASCII (HTTP sends header "
                                "values as bytes; encode anything else, e.g. base64)")
            if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
                raise UserError(f"--prometheus-header: {name} is set by the HTTP client, not by a flag")
        return self


def _printable_ascii(text: str) -> bool:
    return all(" " <= c <= "~" or c == "\t" for c in text)


def _check_basic_user(user: str, flag: str) -> None:
    """A basic-auth user name travels as ``user:password`` in base64: printable ASCII and no ``:``."""
    if not _printable_ascii(user) or ":" in user:
        raise UserError(f"{flag}: a basic-auth user name must be printable ASCII without ':' "
                        f"(got {len(user)} characters, some outside that)")


def check_http_url(url: str, flag: str) -> str:
    """``url`` if it is an ``http(s)://`` URL with a host (and a valid port, brackets, no credentials, no spaces);
    else a one-line UserError naming ``flag`` that never shows a password. Returns the URL unchanged."""
    url = str(url)
    register_url_secrets(url)
    shown = redact_url(url)[:120]
    if any(c.isspace() or not c.isprintable() for c in url):
        raise UserError(f"{flag} must be a URL without spaces or control characters, got {shown!r}")
    if not url.lower().startswith(("http://", "https://")):
        raise UserError(f"{flag} must be an http:// or https:// URL with a host, got {shown!r}")
    if split_userinfo(url)[1] is not None:  # before parsing: a password holding '/' would read as host and port
        raise UserError(f"{flag}: credentials (user and password before '@') do not belong in this URL, "
                        f"got {shown!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        why = ("the port must be a number in 1..65535" if "port" in str(exc).lower()
               else "unbalanced [ ] around an IPv6 address" if "ipv6" in str(exc).lower() else "malformed")
        raise UserError(f"{flag}: not a valid URL ({why}), got {shown!r}") from None
    if not host:
        raise UserError(f"{flag} must be an http:// or https:// URL with a host, got {shown!r}")
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"{flag}: not a valid URL (the port must be a number in 1..65535), got {shown!r}")
    return url


def _check_secret_file(path: str, flag: str) -> None:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UserError(f"cannot read the file given to {flag}: {exc.strerror}", where=path) from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{flag} must name a regular file", where=path)
    if st.st_size > MAX_SECRET_FILE_BYTES and flag != "--prometheus-ca-file":
        raise UserError(f"{flag}: file larger than {MAX_SECRET_FILE_BYTES} bytes", where=path)
    if not os.access(path, os.R_OK):
        raise UserError(f"{flag}: file not readable by this user", where=path)


class _SecretFile:
    """A credential kept in a file: re-read when the file changes (or every SECRET_REREAD_S), cached otherwise."""

    def __init__(self, path: str, what: str, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path, self.what, self._mono = path, what, monotonic
        self._sig: tuple[int, int, int] | None = None
        self._read_at = -math.inf
        self._value = ""

    def get(self) -> str:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise TemporaryError(f"{self.what} file {self.path} unreadable: {exc.strerror}") from None
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        now = self._mono()
        if sig != self._sig or now - self._read_at >= SECRET_REREAD_S:
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SECRET_FILE_BYTES:
                raise TemporaryError(f"{self.what} file {self.path} is not a small regular file")
            try:
                with open(self.path, encoding="utf-8") as f:
                    value = f.read(MAX_SECRET_FILE_BYTES).strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise TemporaryError(f"{self.what} file {self.path} unreadable: {exc.__class__.__name__}") from None
            if not value or any(c in value for c in "\r\n\0"):
                raise TemporaryError(f"{self.what} file {self.path} is empty or not one line")
            register_secret(value)
            self._value, self._sig, self._read_at = value, sig, now
        return self._value


class _FileAuth(requests.auth.AuthBase):
    """``Authorization`` from files at every request: ``Bearer <token>`` or ``Basic user:password``."""

    def __init__(self, access: PrometheusAccess) -> None:
        self._token = _SecretFile(access.bearer_token_file, "bearer token") if access.bearer_token_file else None
        self._user = access.basic_auth_user
        self._password_file = (_SecretFile(access.basic_auth_password_file, "basic-auth password")
                               if access.basic_auth_password_file else None)
        self._password = access.basic_auth_password
        register_secret(self._password)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._token is not None:
            r.headers["Authorization"] = f"Bearer {self._token.get()}"
        elif self._user is not None:
            password = self._password_file.get() if self._password_file is not None else (self._password or "")
            # UTF-8 (RFC 7617's charset; what Prometheus' web config compares), not requests' latin-1, which
            # cannot encode every password and would fail inside the request
            token = base64.b64encode(f"{self._user}:{password}".encode()).decode("ascii")
            register_secret(token)
            r.headers["Authorization"] = f"Basic {token}"
        return r


# ------------------------------------------------------------------------------------------------ total deadline


class TrackingAdapter(requests.adapters.HTTPAdapter):
    """An adapter whose pools report their connections to a :class:`~fleetpilot.agent.deadline.DeadlineGuard`, so a
    request made inside :meth:`DeadlineGuard.call` ends at its deadline (name lookup, connect, TLS, answer); no
    retries. Prometheus sessions and the kubeconfig oidc refresh use it."""

    def __init__(self, guard: DeadlineGuard) -> None:
        self._guard = guard
        super().__init__(max_retries=Retry(total=0, raise_on_status=False))  # one retry layer: the daemon's

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self._guard.install(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        fresh = proxy not in self.proxy_manager
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        return self._guard.install(manager) if fresh else manager


class DeadlineExceeded(requests.exceptions.Timeout):
    """The request's total deadline passed (connect + TLS + headers + body)."""


class DeadlineSession(requests.Session):
    """A ``requests.Session`` whose every request has a **total** deadline and a capped body.

    ``timeout`` (seconds, a number) is the budget for the whole request. The body is streamed into memory up to
    ``max_body_bytes``; a watchdog timer shuts the socket down at the deadline, which interrupts a read blocked on
    a trickling server, and the request raises :class:`DeadlineExceeded` (a ``requests`` Timeout).
    """

    def __init__(self, access: PrometheusAccess, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        super().__init__()
        self.default_timeout_s = float(access.timeout_s)
        self.max_body_bytes = int(max_body_bytes)
        self._guard = DeadlineGuard()
        adapter = TrackingAdapter(self._guard)
        self.mount("http://", adapter)
        self.mount("https://", adapter)
        if access.insecure_skip_tls_verify:
            self.verify = False
        else:
            self.verify = access.ca_file or True
        if access.client_cert_file:
            self.cert = (access.client_cert_file, access.client_key_file)
        self.auth = _FileAuth(access)
        self.headers["User-Agent"] = "fleetpilot"
        for name, value in access.headers:
            self.headers[name] = value
            register_secret(value)

    def remount(self, prefix: str) -> None:
        """Put the tracking adapter back on ``prefix`` (``PrometheusConnect`` mounts its own on its URL)."""
        self.mount(prefix, self.get_adapter("http://") if prefix.startswith("http:") else self.get_adapter("https://"))

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        budget = kwargs.pop("timeout", None)
        if isinstance(budget, tuple):
            budget = max(x for x in budget if x is not None) if any(x is not None for x in budget) else None
        total = float(budget) if budget else self.default_timeout_s
        kwargs["stream"] = True
        kwargs["timeout"] = (total, total)
        # per request: a session's own ``verify`` (--prometheus-ca-file) loses to $REQUESTS_CA_BUNDLE /
        # $CURL_CA_BUNDLE otherwise (requests#3829); a CA bundle from the environment still applies to verify=True
        if kwargs.get("verify") is None:
            kwargs["verify"] = self.verify

        def whole() -> requests.Response:
            resp = super(DeadlineSession, self).request(method, url, *args, **kwargs)
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_content(chunk_size=1 << 16):
                size += len(chunk)
                if size > self.max_body_bytes:
                    resp.close()
                    raise requests.exceptions.ContentDecodingError(
                        f"response body larger than {self.max_body_bytes} bytes")
                chunks.append(chunk)
            resp._content = b"".join(chunks)  # noqa: SLF001 -- what Response.content would have read
            resp._content_consumed = True  # noqa: SLF001
            return resp

        try:
            return self._guard.call(whole, total, "prometheus")
        except TotalDeadlineExceeded:
            raise DeadlineExceeded(f"no complete answer within the total deadline of {total:g}s") from None


def make_session(access: PrometheusAccess) -> DeadlineSession:
    """The HTTP session for ``access`` (TLS, credentials, headers, total deadline); for other Prometheus readers."""
    return DeadlineSession(access.validate())


def add_access_arguments(p: argparse.ArgumentParser, *, url_default: str | None = None) -> None:
    """Add ``--prometheus`` and the access flags (TLS, credentials, headers, timeout) to a sub-command's parser."""
    g = p.add_argument_group("Prometheus access")
    g.add_argument("--prometheus", default=url_default or os.environ.get("FLEETPILOT_PROMETHEUS",
                                                                         "http://127.0.0.1:9090"),
                   help="Prometheus base URL (https verified by default; user:password@ is moved to basic auth "
                        "and never logged)")
    g.add_argument("--prometheus-timeout", type=float, default=5.0,
                   help="total seconds per query: connect, TLS, headers and body together (default 5)")
    g.add_argument("--prometheus-ca-file", help="PEM CA bundle to verify Prometheus' certificate")
    g.add_argument("--insecure-skip-tls-verify", action="store_true",
                   help="do not verify Prometheus' TLS certificate (shown in metrics and audit; avoid)")
    g.add_argument("--prometheus-bearer-token-file",
                   help="file holding a bearer token, re-read when it changes (e.g. "
                        "/var/run/secrets/kubernetes.io/serviceaccount/token)")
    g.add_argument("--prometheus-basic-auth-user", help="basic-auth user name")
    g.add_argument("--prometheus-basic-auth-password-file", help="file holding the basic-auth password")
    g.add_argument("--prometheus-header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="extra HTTP header on every query (repeatable), e.g. 'X-Scope-OrgID: team-a'")
    g.add_argument("--prometheus-client-cert", help="PEM client certificate (mutual TLS)")
    g.add_argument("--prometheus-client-key", help="PEM client key (mutual TLS)")


def access_from_args(args: argparse.Namespace) -> PrometheusAccess:
    """The validated :class:`PrometheusAccess` from :func:`add_access_arguments`' flags (UserError if wrong)."""
    headers = []
    for raw in getattr(args, "prometheus_header", None) or []:
        name, sep, value = str(raw).partition(":")
        if not sep or not name.strip():
            raise UserError("--prometheus-header must look like 'Name: value' (no ':' found; the value is not "
                            "shown, it may be a secret)")
        headers.append((name.strip(), value.strip()))
        register_secret(value.strip())
    timeout = float(args.prometheus_timeout)
    access = PrometheusAccess.from_url(
        str(args.prometheus), timeout_s=timeout, ca_file=args.prometheus_ca_file,
        insecure_skip_tls_verify=bool(args.insecure_skip_tls_verify),
        bearer_token_file=args.prometheus_bearer_token_file, basic_auth_user=args.prometheus_basic_auth_user,
        basic_auth_password_file=args.prometheus_basic_auth_password_file, headers=tuple(headers),
        client_cert_file=args.prometheus_client_cert, client_key_file=args.prometheus_client_key)
    return access.validate()


class _RangeCache:
    """A :class:`QueryClient` answering instant queries at past times from one range query per PromQL.

    The first ``custom_query(q, params={"time": t})`` for ``q`` fetches ``query_range(q, start, end, step)``;
    every later one is answered from it (a range query's step at ``t`` is the instant query evaluated at ``t``).
    Times between the steps, or series absent at a step, answer an empty vector."""

    def __init__(self, client: Any, start_s: float, end_s: float, step_s: float) -> None:
        self._client = client
        self.start_s, self.end_s, self.step_s = float(start_s), float(end_s), float(step_s)
        self._cache: dict[str, dict[int, list[dict[str, Any]]]] = {}

    def _key(self, t: float) -> int:
        return int(round((float(t) - self.start_s) / self.step_s))

    def custom_query(self, query: str, params: dict | None = None, timeout: Any = None) -> Any:
        t = float((params or {})["time"])
        if query not in self._cache:
            self._cache[query] = self._fetch(query, timeout)
        k = self._key(t)
        if abs(self.start_s + k * self.step_s - t) > 1e-3 * self.step_s:
            return []
        return self._cache[query].get(k, [])

    def _fetch(self, query: str, timeout: Any) -> dict[int, list[dict[str, Any]]]:
        import datetime as dt

        utc = dt.UTC
        result = self._client.custom_query_range(
            query, start_time=dt.datetime.fromtimestamp(self.start_s, utc),
            end_time=dt.datetime.fromtimestamp(self.end_s, utc), step=f"{self.step_s:g}",  # float seconds: "7.5"
            timeout=timeout)  # (a duration string with a fraction, "7.5s", is not valid PromQL duration syntax)
        if not isinstance(result, list):
            raise TemporaryError(f"expected a range vector (matrix), got {type(result).__name__}")
        steps: dict[int, list[dict[str, Any]]] = {}
        for item in result:
            if not isinstance(item, dict) or not isinstance(item.get("values"), list):
                raise TemporaryError(f"malformed range series {str(item)[:120]}")
            for pair in item["values"]:
                try:
                    ts = float(pair[0])
                except (TypeError, ValueError, IndexError):
                    raise TemporaryError(f"malformed range sample {str(pair)[:60]}") from None
                steps.setdefault(self._key(ts), []).append({"metric": item.get("metric"), "value": pair})
        return steps


class QueryClient(Protocol):
    """What the source needs from ``PrometheusConnect`` (tests inject fakes)."""

    def custom_query(self, query: str, params: dict | None = None, timeout: int | None = None) -> Any: ...


@dataclass(frozen=True)
class FleetState:
    """What Kubernetes says about one model's Deployment: desired (``spec.replicas``) and ready replicas."""

    desired: int
    ready: int


@dataclass(frozen=True)
class _Vector:
    """One query's answer: value per model (NaN = garbage or ambiguous) and the evaluation time Prometheus reported.

    ``ambiguous`` maps a model to a short description of the labels telling its several series apart.
    """

    values: dict[str, float] = field(default_factory=dict)
    garbage: tuple[str, ...] = ()
    eval_ts: float | None = None
    ambiguous: dict[str, str] = field(default_factory=dict)


class PrometheusSource:
    """Reads the goal's metrics from Prometheus at ``url`` once per control interval.

    ``clock`` (epoch seconds) stamps readings and times queue growth; ``timeout_s`` is the **total** deadline of
    each HTTP request. ``access`` (TLS, credentials, headers; :class:`PrometheusAccess`) replaces ``url`` and
    ``timeout_s`` when given. ``client`` replaces the ``PrometheusConnect`` built from them (tests). ``interval_s``
    defaults to the goal's control interval. Queries run one after another; a failure of any required query fails
    the whole read. ``read_budget_s`` (default: one interval, at least ``timeout_s``) bounds all the queries of
    one read together (``monotonic`` times it): each query gets what is left, and a read past it fails with an
    "interval deadline" TemporaryError, so the daemon falls back within the interval.
    """

    def __init__(
        self,
        url: str,
        goal: GoalSpec,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
        *,
        client: QueryClient | None = None,
        interval_s: float | None = None,
        label: str = "model_name",
        freshness_query: str | None = DEFAULT_FRESHNESS_QUERY,
        stale_after_intervals: float = 2.0,
        class_rate_query: str | None = None,
        route_label: str = "route",
        queue_growth: bool = True,
        access: PrometheusAccess | None = None,
        read_budget_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if access is None:
            if not (math.isfinite(timeout_s) and timeout_s > 0):
                raise ValueError("timeout_s must be a finite number > 0")
            access = PrometheusAccess.from_url(url, timeout_s=timeout_s)
        self.access = access
        self.url = access.display_url  # for messages: never carries credentials
        self.goal = goal
        self.clock = clock
        self.timeout_s = float(access.timeout_s)
        self.interval_s = float(interval_s or goal.control_interval_s)
        # all queries of one read together: at most one interval (never less than one query's deadline); past it
        # the read fails and the daemon falls back, and the next interval starts on time
        self.read_budget_s = float(read_budget_s or max(self.timeout_s, self.interval_s))
        self._monotonic = monotonic
        self._read_started: float | None = None
        self._at: float | None = None  # evaluation time of a past reading (history), None: now
        self.label = label
        self.freshness_query = freshness_query
        self.stale_after_s = stale_after_intervals * self.interval_s
        self.class_rate_query = class_rate_query
        self.route_label = route_label
        self.queue_growth = queue_growth
        if client is None:
            from prometheus_api_client import PrometheusConnect

            # no retries inside the client: the daemon owns backoff (and its sleep is injected); TLS verified unless
            # asked otherwise; the session enforces the total deadline and adds credentials from files
            session = make_session(access)
            base = access.url.rstrip("/")
            client = PrometheusConnect(url=base, retry=Retry(total=0, raise_on_status=False), session=session,
                                       timeout=self.timeout_s)
            session.remount(base)
            self._session: DeadlineSession | None = session
        else:
            self._session = None  # an injected client: no targets API to read (discover_scrape_interval: None)
        self._client = client
        self.scrape_interval_s: float | None = None  # set by apply_scrape_interval
        self.last_ambiguous: dict[str, str] = {}
        self._prev_queue: dict[str, tuple[float, float]] = {}  # model -> (t, waiting)
        self.last_raw: dict[str, dict[str, float]] = {}
        self.last_ages: dict[str, float] = {}
        self.last_notes: list[str] = []
        self.queries = {
            name: getattr(goal.prometheus, name) for name in (*REQUIRED, *LATENCY, *OPTIONAL)
        }

    # --- scrape interval ------------------------------------------------------------------------------------------

    def discover_scrape_interval(self) -> float | None:
        """The longest scrape interval Prometheus is configured with for the targets that export
        :data:`SCRAPE_METRIC` (their ``job`` labels, matched against ``/api/v1/targets``), in seconds; None where
        it cannot be read -- no such series yet, a Prometheus-compatible store without the targets API (Thanos,
        Mimir, managed services), any error or timeout (each request within ``timeout_s``): the caller keeps its
        default. Never raises."""
        if self._session is None:
            return None
        try:
            jobs = {r["metric"].get("job") for r in self._client.custom_query(
                f"count by (job) ({SCRAPE_METRIC})", timeout=self.timeout_s)  # type: ignore[arg-type]
                if isinstance(r, dict) and isinstance(r.get("metric"), dict)} - {None}
            if not jobs:
                return None
            resp = self._session.get(self.access.url.rstrip("/") + "/api/v1/targets", params={"state": "active"},
                                     timeout=self.timeout_s)
            if resp.status_code != 200:
                return None
            targets = resp.json()["data"]["activeTargets"]
            found = [duration_s(t.get("scrapeInterval", "")) for t in targets
                     if isinstance(t, dict) and isinstance(t.get("labels"), dict) and t["labels"].get("job") in jobs]
        except Exception as exc:  # noqa: BLE001 -- best effort: the configured default stands
            log.debug("scrape interval not discovered: %s", redact(f"{type(exc).__name__}: {str(exc)[:200]}"))
            return None
        found = [x for x in found if x is not None]
        return max(found) if found else None

    def apply_scrape_interval(self, scrape_s: float) -> str | None:
        """Fit the reader to a Prometheus that scrapes the vLLM pods every ``scrape_s`` seconds: a sample counts as
        stale only past :data:`STALE_SCRAPES` scrapes (and never sooner than ``stale_after_intervals`` control
        intervals), so one missed scrape is not a stale reading. Returns a warning when the goal's queries average
        over fewer than :data:`RANGE_SCRAPES` scrapes (one missed scrape can then leave a rate empty: that
        interval falls back), else None."""
        if not (math.isfinite(scrape_s) and scrape_s > 0):
            raise ValueError(f"scrape interval must be a positive number of seconds, got {scrape_s!r}")
        self.scrape_interval_s = float(scrape_s)
        self.stale_after_s = max(self.stale_after_s, STALE_SCRAPES * self.scrape_interval_s)
        short = shortest_range_s([*self.queries.values(), self.class_rate_query or ""])
        if short is None or short >= RANGE_SCRAPES * self.scrape_interval_s - 1e-9:
            return None
        need = math.ceil(RANGE_SCRAPES * self.scrape_interval_s / 60.0)
        return (f"Prometheus scrapes the vLLM pods every {self.scrape_interval_s:g}s but the goal's queries average "
                f"over as little as {short:g}s, under {RANGE_SCRAPES} scrapes: one missed scrape can leave a rate "
                f"empty and that interval falls back; widen the ranges in the goal's prometheus queries to at least "
                f"[{need}m]")

    # --- queries --------------------------------------------------------------------------------------------------

    def _query(self, name: str, promql: str, key: str | None = None) -> _Vector:
        key = key or self.label
        timeout = self.timeout_s
        if self._read_started is not None:  # the whole read has a budget too: each query gets what is left of it
            left = self.read_budget_s - (self._monotonic() - self._read_started)
            if left <= 0.01:
                raise TemporaryError(f"prometheus {name}: interval deadline: the reads of this interval took more "
                                     f"than {self.read_budget_s:g}s (the rest of the queries were not sent)")
            timeout = min(timeout, left)
        try:
            if self._at is None:
                result = self._client.custom_query(promql, timeout=timeout)  # type: ignore[arg-type]
            else:  # a past reading: the instant query evaluated at that time
                result = self._client.custom_query(promql, params={"time": self._at},
                                                   timeout=timeout)  # type: ignore[arg-type]
        except requests.exceptions.Timeout:
            raise TemporaryError(f"prometheus {name}: timeout: no complete answer within {timeout:g}s "
                                 f"(total deadline) from {self.url}") from None
        except requests.exceptions.SSLError as exc:
            raise TemporaryError(f"prometheus {name}: TLS verification failed for {self.url} "
                                 f"({tls_reason(exc)}; trust its CA with --prometheus-ca-file)") from None
        except requests.exceptions.ConnectionError:
            raise TemporaryError(f"prometheus {name}: cannot connect to {self.url}") from None
        except TemporaryError as exc:  # a credential file that cannot be read right now
            raise TemporaryError(redact(f"prometheus {name}: {exc}")) from None
        except ValueError as exc:  # bad JSON (requests' JSONDecodeError is a ValueError)
            raise TemporaryError(redact(f"prometheus {name}: answer is not JSON ({str(exc)[:120]})")) from None
        except (KeyError, TypeError) as exc:
            raise TemporaryError(redact(f"prometheus {name}: answer without data.result ({exc!r})"[:300])) from None
        except requests.exceptions.RequestException as exc:
            raise TemporaryError(redact(f"prometheus {name}: {type(exc).__name__}: {str(exc)[:300]}")) from None
        except Exception as exc:  # noqa: BLE001 -- PrometheusApiClientException and anything else the client raises
            text = redact(str(exc)[:2000])[:300]
            code = _http_code(text)
            if code in (401, 403):
                raise PermanentError(f"prometheus {name}: HTTP {code}: credentials refused or missing "
                                     f"(--prometheus-bearer-token-file / basic auth)") from None
            if code is not None and 400 <= code < 500 and code not in (408, 429):
                raise PermanentError(f"prometheus {name}: query rejected ({text})") from None
            raise TemporaryError(f"prometheus {name}: {type(exc).__name__}: {text}") from None
        return self._parse(name, result, key)

    @property
    def tls_verified(self) -> bool:
        """False when TLS to Prometheus is not verified (``--insecure-skip-tls-verify``): export and audit it."""
        return self.access.tls_verified

    def _parse(self, name: str, result: Any, key: str) -> _Vector:
        if not isinstance(result, list):
            raise TemporaryError(f"prometheus {name}: expected an instant vector, got {type(result).__name__}")
        values: dict[str, float] = {}
        garbage: list[str] = []
        eval_ts: float | None = None
        seen: dict[str, list[dict[str, Any]]] = {}
        for item in result:
            if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
                raise TemporaryError(redact(f"prometheus {name}: malformed series {str(item)[:120]}"))
            label = item["metric"].get(key)
            if label is None:
                continue  # a series without the label (e.g. someone else's server) is not ours
            seen.setdefault(str(label), []).append(item["metric"])
            if len(seen[str(label)]) > 1:
                continue  # ambiguous: decided below, never "last one wins"
            pair = item.get("value")
            try:
                ts, raw = float(pair[0]), pair[1]  # type: ignore[index]
                value = float(raw)
                eval_ts = ts if eval_ts is None else max(eval_ts, ts)
            except (TypeError, ValueError, IndexError):
                garbage.append(str(label))
                values[str(label)] = math.nan
                continue
            values[str(label)] = value
        ambiguous = {m: _describe_ambiguity(key, series) for m, series in seen.items() if len(series) > 1}
        for m in ambiguous:
            values[m] = math.nan
        return _Vector(values, tuple(garbage), eval_ts, ambiguous)

    # --- the reading ----------------------------------------------------------------------------------------------

    def history(
        self,
        times: Sequence[float],
        state: Mapping[str, FleetState] | None = None,
        weights: Mapping[str, Mapping[str, float]] | None = None,
    ) -> list[Reading]:
        """The readings the source would have made at the past ``times`` (evenly spaced, oldest first; the daemon's
        warm-up), from **one range query per PromQL** (``query_range`` with the spacing as its step: each step is
        that instant query evaluated then; the first time is rounded to a whole second and the rest keep their
        spacing). ``state`` and ``weights`` as in :meth:`read`, the same for every
        reading (Kubernetes keeps no replica history). Every query may use its whole deadline (a range query is
        heavier than an instant one). Raises like :meth:`read`; at most :data:`MAX_HISTORY_POINTS` times."""
        times = [float(t) for t in times]
        if not times:
            return []
        if len(times) > MAX_HISTORY_POINTS:
            raise UserError(f"history: at most {MAX_HISTORY_POINTS} readings (Prometheus' points per range query), "
                            f"got {len(times)}")
        step = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else self.interval_s
        if not (math.isfinite(step) and step > 0):
            raise UserError("history: times must be increasing and evenly spaced")
        t0 = float(round(times[0]))  # the range API takes whole seconds: the steps are t0 + k * step
        times = [t0 + k * step for k in range(len(times))]
        live, budget = self._client, self.read_budget_s
        self._client = _RangeCache(live, t0, times[-1] + 0.5 * step, step)
        self.read_budget_s = self.timeout_s * (len(self.queries) + 2)
        try:
            return [self.read(state, weights, at=t) for t in times]
        finally:
            self._client, self.read_budget_s = live, budget

    def read(
        self,
        state: Mapping[str, FleetState] | None = None,
        weights: Mapping[str, Mapping[str, float]] | None = None,
        *,
        at: float | None = None,
    ) -> Reading:
        """One :class:`Reading` of the last control interval (``at``: of the interval ending at that past time).

        ``state`` gives desired/ready replicas per model from Kubernetes (missing: the model's min replicas, all
        ready); ``weights`` the routing weights in force (missing: the goal's defaults).
        Raises :class:`TemporaryError` / :class:`PermanentError` as described in the module docstring.
        """
        now = self.clock() if at is None else float(at)
        self.last_ambiguous = {}
        self._read_started = self._monotonic()
        self._at = None if at is None else float(at)
        try:
            answers = {name: self._query(name, q) for name, q in self.queries.items()}
            fresh = self._query("freshness", self.freshness_query) if self.freshness_query else None
        finally:
            self._read_started = None
            self._at = None
        self.last_raw = {k: dict(v.values) for k, v in answers.items()}
        self.last_notes = [] if fresh is None or fresh.values else [
            f"freshness query answered nothing, sample age not checked: {self.freshness_query}"]
        stale: list[str] = []
        ambiguous: dict[str, str] = {}
        models: dict[str, ModelReading] = {}
        weights = _weights(self.goal, weights)
        for spec in self.goal.models:
            m = spec.name
            st = (state or {}).get(m) or FleetState(spec.min_replicas, spec.min_replicas)

            def get(name: str, m: str = m) -> float:
                vec = answers[name]
                if m in vec.ambiguous:
                    stale.append(f"{m}.{name}.ambiguous")
                    ambiguous[f"{m}.{name}"] = vec.ambiguous[m]
                    return math.nan
                if m in vec.garbage:
                    stale.append(f"{m}.{name}")
                    return math.nan
                x = vec.values.get(m, math.nan)
                if name in REQUIRED:
                    if not (math.isfinite(x) and 0 <= x <= MAX_SANE_RATE):
                        stale.append(f"{m}.{name}")
                        return math.nan
                    return x
                if name in LATENCY:
                    if x == math.inf:  # the quantile is in the +Inf bucket: at least the timeout
                        return max(self.goal.slo.timeout_s, 1.0)
                    if x < 0 or x > MAX_SANE_LATENCY_S:
                        stale.append(f"{m}.{name}")
                        return math.nan
                    return x  # NaN: nothing observed (decided below)
                return x if math.isfinite(x) and 0 <= x <= MAX_SANE_RATE else math.nan

            completions = get("arrival_rate")
            running = get("running")
            waiting = get("waiting")
            ttft_s = get("ttft_p95")
            e2e_s = get("e2e_p95")
            prompt = get("prompt_tokens_rate")
            gen = get("generation_tokens_rate")
            if fresh is not None and m in fresh.ambiguous:
                stale.append(f"{m}.age.ambiguous")
                ambiguous[f"{m}.freshness"] = fresh.ambiguous[m]
            elif fresh is not None and fresh.values:  # an empty answer: the query does not fit this server
                ts = fresh.values.get(m, math.nan)
                evaluated = fresh.eval_ts if fresh.eval_ts is not None else now
                age = evaluated - ts if math.isfinite(ts) else math.inf
                self.last_ages[m] = age
                if age > self.stale_after_s:
                    stale.append(f"{m}.age")
            serving = math.isfinite(completions) and completions > 1e-9
            # vLLM observes TTFT and counts the prompt tokens at a request's first token, a completion at its end:
            # a window with completions but no prompt tokens holds only ends of requests (nothing to measure)
            ends_only = math.isfinite(prompt) and prompt <= 0.0
            if serving and not ends_only and not math.isfinite(ttft_s):
                stale.append(f"{m}.ttft_p95")
            arrival = completions
            if self.queue_growth and math.isfinite(waiting):
                prev = self._prev_queue.get(m)
                if prev is not None and math.isfinite(arrival) and 0 < now - prev[0] <= 3 * self.interval_s:
                    arrival += max(0.0, (waiting - prev[1]) / (now - prev[0]))
                self._prev_queue[m] = (now, waiting)
            tin = prompt / completions if serving and math.isfinite(prompt) and not ends_only else math.nan
            tout = gen / completions if serving and math.isfinite(gen) else math.nan
            models[m] = ModelReading(
                arrival_rps=arrival,
                in_flight=running,
                queued=waiting,
                ttft_p95_ms=ttft_s * 1e3 if math.isfinite(ttft_s) else math.nan,
                e2e_p95_ms=e2e_s * 1e3 if math.isfinite(e2e_s) else math.nan,
                ready=int(st.ready),
                starting=max(0, int(st.desired) - int(st.ready)),
                desired=int(st.desired),
                input_tokens=tin,
                output_tokens=tout,
            )
        class_rates = self._class_rates(models, weights, stale)
        self.last_ambiguous = ambiguous
        self.last_notes += [f"ambiguous {k}: {v}" for k, v in ambiguous.items()]
        return Reading(
            t_s=now,
            models=models,
            class_rates=class_rates,
            weights=weights,
            ttft_p95_ms=_fleet_latency(models, "ttft_p95_ms"),
            e2e_p95_ms=_fleet_latency(models, "e2e_p95_ms"),
            dropped=0.0,
            stale=tuple(dict.fromkeys(stale)),
        )

    def _class_rates(
        self, models: Mapping[str, ModelReading], weights: Mapping[str, Mapping[str, float]], stale: list[str]
    ) -> dict[str, float]:
        goal = self.goal
        if not goal.routes:
            r = next(iter(models.values())).arrival_rps
            return {DEFAULT_CLASS: r}
        if self.class_rate_query:
            vec = self._query("class_rate", self.class_rate_query, key=self.route_label)
            out = {}
            for route in goal.routes:
                x = vec.values.get(route.name, math.nan)
                if not math.isfinite(x) or x < 0:
                    stale.append(f"route.{route.name}.rate")
                    x = math.nan
                out[route.name] = x
            return out
        return derive_class_rates(goal, {m: r.arrival_rps for m, r in models.items()}, weights)


def derive_class_rates(
    goal: GoalSpec, model_rates: Mapping[str, float], weights: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Per-route offered rate from per-model rates: solve ``model_rate = sum_r class_rate[r] * share[r, m]``.

    Least squares, clipped at zero; routes that do not share models are recovered exactly. NaN model rates
    make every route that uses the model NaN.
    """
    routes = goal.routes
    names = list(goal.model_names)
    # share[r, m] by the one routing rule (weights in force, else the goal's; all-zero weights split evenly)
    a = RoutingMap(goal, [r.name for r in routes], strict=False).shares(weights).T
    y = np.array([model_rates.get(m, math.nan) for m in names], dtype=float)
    ok = np.isfinite(y)
    out: dict[str, float] = {}
    if ok.any():
        sol, *_ = np.linalg.lstsq(a[ok], y[ok], rcond=None)
    else:
        sol = np.full(len(routes), math.nan)
    for j, route in enumerate(routes):
        uses_bad = any(not ok[names.index(m)] for m in route.models)
        out[route.name] = math.nan if uses_bad else max(0.0, float(sol[j]))
    return out


def _weights(goal: GoalSpec, weights: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    out = {r.name: dict(zip(r.models, r.weights, strict=True)) for r in goal.routes}
    for k, v in (weights or {}).items():
        if k in out:
            out[k] = {m: float(x) for m, x in v.items()}
    return out


def _fleet_latency(models: Mapping[str, ModelReading], attr: str) -> float:
    """Fleet p95 approximated by the traffic-weighted worst model (an upper bound on the mixture's p95)."""
    vals = [getattr(r, attr) for r in models.values() if math.isfinite(getattr(r, attr))]
    return max(vals) if vals else math.nan


def _describe_ambiguity(key: str, series: list[dict[str, Any]]) -> str:
    """'3 series for model_name="x" differ in namespace (prod, staging, ...)': bounded, for audit and metrics."""
    names = sorted({k for s in series for k in s} - {key})
    differ = [k for k in names if len({str(s.get(k, "")) for s in series}) > 1]
    parts = []
    for k in differ[:3]:
        vals = list(dict.fromkeys(str(s.get(k, ""))[:40] for s in series))
        parts.append(f"{k[:40]} ({', '.join(vals[:4])}{', ...' if len(vals) > 4 else ''})")
    label = str(series[0].get(key, ""))[:60]
    what = "; ".join(parts) or "no other label (the query returns duplicates)"
    return redact(f"{len(series)} series for {key}={label!r} differ in {what}; add a label matcher to the goal's "
                  "prometheus queries")


def tls_reason(exc: BaseException) -> str:
    """The reason a TLS handshake failed, from a fixed list (never the rest of the error text)."""
    text = str(exc)
    for marker in ("certificate verify failed", "hostname mismatch", "self-signed certificate", "wrong version number",
                   "unable to get local issuer certificate", "certificate has expired"):
        if marker in text.lower():
            return marker
    return "handshake failed"


def _http_code(text: str) -> int | None:
    marker = "HTTP Status Code "
    i = text.find(marker)
    if i < 0:
        return None
    digits = text[i + len(marker):i + len(marker) + 3]
    return int(digits) if digits.isdigit() else None
