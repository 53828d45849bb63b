"""JSON logs and warn-once logging."""

from __future__ import annotations

import io
import json
import logging

from fleetpilot.agent.logs import WarnOnce, configure_logging


def test_json_lines_are_one_object_each() -> None:
    buf = io.StringIO()
    level = logging.getLogger().level
    handler = configure_logging("json", "INFO", buf)
    try:
        log = logging.getLogger("fleetpilot.test")
        log.warning("scaled %s from %d to %d\nsecond line", "llama", 2, 5, extra={"model": "llama"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(x) for x in lines)
    assert first["level"] == "warning" and first["logger"] == "fleetpilot.test"
    assert first["msg"] == "scaled llama from 2 to 5\nsecond line" and first["model"] == "llama"
    assert first["ts"].endswith("Z")
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_warn_once_logs_on_change_and_on_clear(caplog) -> None:  # noqa: ANN001
    w = WarnOnce(logging.getLogger("fleetpilot.test.once"))
    with caplog.at_level(logging.INFO, logger="fleetpilot.test.once"):
        assert w.update("foreign:llama", "HPA llama-hpa targets the Deployment")
        for _ in range(50):
            assert not w.update("foreign:llama", "HPA llama-hpa targets the Deployment")
        assert w.update("foreign:llama", "HPA llama-hpa and ScaledObject x target the Deployment")
        assert w.update("foreign:llama", None)
        assert not w.update("foreign:llama", None)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING, logging.INFO]
    assert w.active == {}
