"""Run the real Prometheus server as a plain child process, for tests and the live testbed.

::

    with PrometheusServer(["127.0.0.1:9400"], scrape_interval_s=1, workdir=tmp_path) as prom:
        prom.wait_for_series('vllm:num_requests_waiting{model_name="llama"}', timeout_s=30)

The binary is found with ``shutil.which("prometheus")`` (Debian/Ubuntu package ``prometheus``); without it
:class:`PrometheusNotFoundError` is raised. Storage is a throw-away TSDB under ``workdir`` with short retention; the
lifecycle API is on so :meth:`PrometheusServer.reload` can re-read a changed config. Nothing reads wall time
except the polling helpers, whose clock and sleep can be injected.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

__all__ = ["PrometheusError", "PrometheusNotFoundError", "PrometheusServer", "find_prometheus", "free_port"]


class PrometheusError(RuntimeError):
    """Prometheus did not start, died, or did not answer as expected."""


class PrometheusNotFoundError(PrometheusError):
    """No ``prometheus`` binary on PATH."""


def find_prometheus() -> str:
    """The path of the ``prometheus`` binary, or :class:`PrometheusNotFoundError` with how to get it."""
    path = shutil.which("prometheus")
    if path is None:
        raise PrometheusNotFoundError(
            "the 'prometheus' binary is not on PATH; install it (Debian/Ubuntu: apt-get install prometheus)"
        )
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def serve_in_thread(server: Any, join_s: float = 10.0) -> Iterator[str]:
    """Serve ``server`` (an ``http.server`` server) in a daemon thread; yield its ``127.0.0.1:PORT``, then shut
    it down. Use as ``for hostport in serve_in_thread(server): ...`` or under ``pytest.fixture``."""
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=join_s)


def reply_json(handler: Any, body: bytes, status: int = 200) -> None:
    """Answer an ``http.server`` request with ``body`` as JSON (status, Content-Type, Content-Length, body)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def run_within(limit_s: float, fn: Callable[[], Any], what: str = "the call was not bounded"
               ) -> tuple[Any, BaseException | None, float]:
    """``fn()`` in a daemon thread: (value, the exception it raised, seconds it took). Fails the test if it is still
    running after ``limit_s`` (``what`` says why that matters) instead of hanging the suite."""
    box: dict[str, Any] = {}

    def target() -> None:
        t0 = time.monotonic()
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 -- handed to the test
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"still running after {limit_s}s: {what}"
    return box.get("value"), box.get("error"), float(box["elapsed"])


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


def _duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds as ``Ns``, anything else as whole milliseconds (``0.5s`` is invalid)."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


class PrometheusServer:
    """A Prometheus process scraping ``targets`` (``host:port`` strings) every ``scrape_interval_s`` seconds.

    ``workdir`` holds ``prometheus.yml``, ``data/`` and ``prometheus.log`` (a temporary directory, removed on
    :meth:`stop`, when not given). ``extra_args`` go on the command line as given.
    """

    def __init__(
        self,
        targets: Sequence[str],
        scrape_interval_s: float = 1,
        workdir: str | os.PathLike[str] | None = None,
        *,
        job: str = "fleetpilot",
        metrics_path: str = "/metrics",
        retention: str = "2h",
        startup_timeout_s: float = 30.0,
        extra_args: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if scrape_interval_s <= 0:
            raise ValueError("scrape_interval_s must be > 0")
        self.targets = list(targets)
        self.scrape_interval_s = scrape_interval_s
        self.job = job
        self.metrics_path = metrics_path
        self.retention = retention
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self._clock = clock
        self._sleep = sleep
        self._given_workdir = Path(workdir) if workdir is not None else None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._workdir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self.port: int | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (only while running)."""
        if self.port is None:
            raise RuntimeError("Prometheus is not running; call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def workdir(self) -> Path:
        """The directory with the config, the TSDB and the log."""
        if self._workdir is None:
            raise RuntimeError("Prometheus is not running; call start() first")
        return self._workdir

    @property
    def config_path(self) -> Path:
        """The generated ``prometheus.yml``."""
        return self.workdir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        """Prometheus' stdout and stderr."""
        return self.workdir / "prometheus.log"

    def config_text(self) -> str:
        """The YAML configuration for the current targets."""
        interval = _duration(self.scrape_interval_s)
        targets = ", ".join(_yaml_str(t) for t in self.targets)
        return (
            "global:\n"
            f"  scrape_interval: {interval}\n"
            f"  scrape_timeout: {interval}\n"
            f"  evaluation_interval: {interval}\n"
            "scrape_configs:\n"
            f"  - job_name: {_yaml_str(self.job)}\n"
            f"    metrics_path: {_yaml_str(self.metrics_path)}\n"
            "    static_configs:\n"
            f"      - targets: [{targets}]\n"
        )

    def start(self) -> Self:
        """Write the config, start Prometheus on a free loopback port and wait until ``/-/ready`` answers 200."""
        if self._proc is not None:
            return self
        binary = find_prometheus()
        if self._given_workdir is not None:
            self._workdir = self._given_workdir
            self._workdir.mkdir(parents=True, exist_ok=True)
        else:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="fleetpilot-prometheus-")
            self._workdir = Path(self._tmpdir.name)
        self.config_path.write_text(self.config_text())
        (self.workdir / "data").mkdir(exist_ok=True)
        last_error = ""
        for _ in range(3):  # the free port may be taken between picking and binding: try again on another
            self.port = free_port()
            cmd = [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--storage.tsdb.retention.time={self.retention}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
                *self.extra_args,
            ]
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._proc = subprocess.Popen(
                cmd, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            try:
                self._wait_ready()
                return self
            except PrometheusError as exc:
                last_error = str(exc)
                self._terminate()
        self.stop()
        raise PrometheusError(f"Prometheus did not become ready: {last_error}")

    def _wait_ready(self) -> None:
        deadline = self._clock() + self.startup_timeout_s
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited early; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self._clock() > deadline:
                raise PrometheusError(f"no answer from /-/ready within {self.startup_timeout_s}s")
            self._sleep(0.1)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Terminate Prometheus (SIGTERM, then SIGKILL after 10 s) and remove a temporary workdir."""
        self._terminate()
        self.port = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of Prometheus' log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, RuntimeError):
            return "(no log)"

    def reload(self, targets: Sequence[str] | None = None) -> None:
        """Rewrite the config (optionally with new targets) and ask Prometheus to reload it."""
        if targets is not None:
            self.targets = list(targets)
        self.config_path.write_text(self.config_text())
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10) as resp:
            if resp.status != 200:
                raise PrometheusError(f"reload answered {resp.status}")

    # --- queries ----------------------------------------------------------------------------------------------------

    def query(self, promql: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Run an instant query; returns ``data.result`` (for a vector: ``[{"metric": {...}, "value": [t, "v"]}]``)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:
                payload = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"query {promql!r} failed: HTTP {exc.code} {exc.read()[:500]!r}") from exc
        if payload.get("status") != "success":
            raise PrometheusError(f"query {promql!r} failed: {payload.get('error')}")
        result = payload["data"]["result"]
        return result if isinstance(result, list) else [{"metric": {}, "value": result}]

    def wait_for_series(self, query: str, timeout_s: float = 30.0, poll_s: float = 0.25) -> list[dict[str, Any]]:
        """Poll ``query`` until it returns at least one series; returns the result or raises after ``timeout_s``."""
        deadline = self._clock() + timeout_s
        while True:
            if not self.running:
                raise PrometheusError(f"prometheus is not running; log tail:\n{self.log_tail()}")
            result = self.query(query)
            if result:
                return result
            if self._clock() > deadline:
                raise PrometheusError(f"no series for {query!r} within {timeout_s}s (targets: {self.targets})")
            self._sleep(poll_s)

    def targets_health(self) -> list[dict[str, Any]]:
        """The active targets as ``/api/v1/targets`` reports them (``health``, ``lastError``, ``scrapeUrl``...)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as resp:
            return list(json.load(resp)["data"]["activeTargets"])
