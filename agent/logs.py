"""Logging set-up for the CLI: plain text (default) or one JSON object per line (``--log-format json``).

JSON lines carry ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``msg`` and, when present, ``exc``
(the formatted traceback as one string) plus any ``extra={...}`` fields passed to the log call -- what Loki,
Cloud Logging, Elasticsearch and ``kubectl logs | jq`` expect from a controller (klog's ``--logging-format=json``
has the same shape). Secrets are redacted by :func:`fleetpilot.agent.prom.install_log_redaction`, which works on
the record before any formatter sees it.

:class:`WarnOnce` keeps a repeated condition (a foreign HPA, a stale metric) from logging every interval: it logs
when the condition's text changes and once more when it clears.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["JsonFormatter", "LOG_FORMATS", "WarnOnce", "configure_logging"]

LOG_FORMATS = ("text", "json")
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, newline-free (embedded newlines are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure_logging(fmt: str = "text", level: str | int = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Install one handler on the root logger (replacing earlier ones of ours) and return it."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name("fleetpilot")
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "fleetpilot":
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class WarnOnce:
    """Log a condition when it appears or changes, and once when it clears -- not every interval.

    ``update(key, text)`` with ``text=None`` means the condition is gone. Returns True when something was logged.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING) -> None:
        self._log = logger
        self._level = level
        self._state: dict[str, str] = {}

    def update(self, key: str, text: str | None) -> bool:
        before = self._state.get(key)
        if text == before:
            return False
        if text is None:
            del self._state[key]
            self._log.info("cleared: %s", before)
            return True
        self._state[key] = text
        self._log.log(self._level, "%s", text)
        return True

    @property
    def active(self) -> dict[str, str]:
        """The conditions in force."""
        return dict(self._state)
