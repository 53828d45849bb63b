"""The real Prometheus binary scraping a tiny prometheus_client exporter.

Without a ``prometheus`` binary these tests fail (CI installs it), unless ``FLEETPILOT_ALLOW_SKIP=1``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from testbed import prometheus as harness
from testbed.prometheus import PrometheusNotFoundError, PrometheusServer


def _require_prometheus() -> None:
    if shutil.which("prometheus") is None:
        message = "the 'prometheus' binary is not installed (apt-get install prometheus)"
        if os.environ.get("FLEETPILOT_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message + "; set FLEETPILOT_ALLOW_SKIP=1 to skip instead")


@pytest.fixture
def exporter() -> Iterator[tuple[str, Gauge]]:
    """A prometheus_client HTTP exporter on a free loopback port with one labelled gauge."""
    registry = CollectorRegistry()
    gauge = Gauge("fleetpilot_test_queue_depth", "Requests waiting (test)", ["model_name"], registry=registry)
    gauge.labels("llama").set(42.5)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", gauge
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.slow
def test_scrapes_an_exporter_and_reads_the_value_back(exporter: tuple[str, Gauge], tmp_path: Path) -> None:
    _require_prometheus()
    target, _ = exporter
    with PrometheusServer([target], scrape_interval_s=1, workdir=tmp_path) as prom:
        assert prom.running and prom.url.startswith("http://127.0.0.1:")
        result = prom.wait_for_series('fleetpilot_test_queue_depth{model_name="llama"}', timeout_s=30)
        assert len(result) == 1
        assert result[0]["metric"]["instance"] == target and result[0]["metric"]["job"] == "fleetpilot"
        assert float(result[0]["value"][1]) == 42.5
        assert prom.targets_health()[0]["health"] == "up"
        assert (tmp_path / "prometheus.yml").read_text() == prom.config_text()
        proc = prom._proc
    assert not prom.running and proc is not None and proc.returncode is not None
    with pytest.raises(RuntimeError):
        _ = prom.url


@pytest.mark.slow
def test_temporary_workdir_is_removed(tmp_path: Path) -> None:
    _require_prometheus()
    prom = PrometheusServer(["127.0.0.1:9"], scrape_interval_s=1).start()
    workdir = prom.workdir
    assert (workdir / "prometheus.yml").exists()
    prom.stop()
    prom.stop()  # idempotent
    assert not workdir.exists()


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    with pytest.raises(PrometheusNotFoundError, match="apt-get install prometheus"):
        PrometheusServer(["127.0.0.1:9"]).start()


def test_config_text() -> None:
    prom = PrometheusServer(["127.0.0.1:9400", "127.0.0.1:9401"], scrape_interval_s=0.5, job="fleet")
    text = prom.config_text()
    assert "scrape_interval: 500ms" in text
    assert 'targets: ["127.0.0.1:9400", "127.0.0.1:9401"]' in text
    assert 'job_name: "fleet"' in text
