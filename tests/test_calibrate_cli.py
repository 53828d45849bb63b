"""``fleetpilot calibrate`` without a Prometheus process: a fake range-query client answering PromQL by metric name
from a step-time model with known coefficients (old and new vLLM metric names), and the command's refusals.
The real-Prometheus end-to-end test is tests/test_calibrate_live.py."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from fleetpilot.agent.calibrate import (
    DEFAULT_COLD_START_QUERY,
    Settings,
    apply_patch,
    calibrate,
    parse_duration,
    parse_time,
    patch_dict,
)
from fleetpilot.agent.cli import main
from fleetpilot.simulations.calibration import predict_itl
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal

REPO = Path(__file__).resolve().parent.parent
GOAL = REPO / "examples" / "goals" / "single-model.yaml"
TRUE = (7.0e-3, 0.05e-6, 20e-6, 15e-6)  # t0, kv, seq, prefill (s)
END = 1_800_000_000.0


class FakeProm:
    """Raw samples of 2 pods scraped every 15 s for an hour; each minute has its own load, from a known model.

    Answers calibrate's instant range-vector queries (``METRIC{...}[3600s]``) by metric name and the cold-start
    query; ``drop`` removes metrics, ``reset`` restarts a counter (process restart) halfway.
    """

    SCRAPE = 15.0

    def __init__(self, *, old_names: bool = False, drop: tuple[str, ...] = (), negative_gauge: bool = False,
                 cold: tuple[float, ...] = (88.0, 91.0, 95.0), minutes: int = 60, reset: str = "",
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.old, self.drop, self.cold = old_names, drop, cold
        per = int(60 / self.SCRAPE)
        k = minutes * per  # scrape intervals
        self.ts = END - self.SCRAPE * np.arange(k + 1)[::-1]

        def minutely(lo: float, hi: float) -> np.ndarray:
            return np.repeat(rng.uniform(lo, hi, (2, minutes)), per, axis=1)

        n, prompt, gen = minutely(2, 120), minutely(200, 3000), minutely(100, 600)
        started = minutely(0.5, 5) * self.SCRAPE  # requests per interval
        t0, kv, seq, pf = TRUE
        step = predict_itl(t0, kv, seq, pf, n, prompt + gen / 2, started * prompt / self.SCRAPE)
        ttft = 0.004 + step + pf * prompt

        def counter(per_interval: np.ndarray) -> np.ndarray:
            return np.concatenate([np.zeros((2, 1)), np.cumsum(per_interval, axis=1)], axis=1)

        def gauge(x: np.ndarray) -> np.ndarray:
            return np.concatenate([x[:, :1], x], axis=1)  # the sample at the end of each interval

        itl = "vllm:time_per_output_token_seconds" if old_names else "vllm:inter_token_latency_seconds"
        kvm = "vllm:gpu_cache_usage_perc" if old_names else "vllm:kv_cache_usage_perc"
        self.table = {
            f"{itl}_sum": counter(n * self.SCRAPE), f"{itl}_count": counter(n * self.SCRAPE / step),
            "vllm:num_requests_running": gauge(n) * (-1 if negative_gauge else 1),
            "vllm:num_requests_waiting": gauge(np.zeros_like(n)),
            "vllm:prompt_tokens_total": counter(started * prompt),
            "vllm:generation_tokens_total": counter(started * gen),
            "vllm:request_success_total": counter(started),
            "vllm:time_to_first_token_seconds_sum": counter(started * ttft),
            "vllm:time_to_first_token_seconds_count": counter(started),
            kvm: gauge(np.minimum(1.0, n * (prompt + gen / 2) / 400_000)),
        }
        if reset:
            c = self.table[reset]
            half = c.shape[1] // 2
            c[:, half:] -= c[:, half:half + 1] - 1.0  # the process restarted: the counter starts again near 0
        self.queries: list[str] = []

    def custom_query(self, query: str, params: dict | None = None) -> list:
        self.queries.append(query)
        if "kube_pod" in query:
            if any("kube_pod" in d for d in self.drop):
                return []
            return [{"metric": {"pod": f"p{i}"}, "value": [END, str(c)]} for i, c in enumerate(self.cold)]
        assert 'model_name="llama-3-8b"' in query and query.endswith("s]"), query
        name = query.split("{", 1)[0]
        if name not in self.table or any(d in name for d in self.drop):
            return []
        v = self.table[name]
        return [{"metric": {"__name__": name, "pod": f"llama-3-8b-abc-{i}"},
                 "values": [[t, str(x)] for t, x in zip(self.ts, v[i], strict=True)]} for i in range(2)]


def _settings(**kw: object) -> Settings:
    base = dict(model="llama-3-8b", served_name="llama-3-8b", range_s=3600.0, step_s=60.0, end=END,
                source="http://prom.test")
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("old", [False, True], ids=["new-names", "old-names"])
def test_fit_from_vllm_metrics_recovers_the_model(old: bool) -> None:
    prom = FakeProm(old_names=old)
    r = calibrate(prom, load_goal(GOAL), _settings())
    assert r.itl_metric == ("vllm:time_per_output_token_seconds" if old else "vllm:inter_token_latency_seconds")
    assert r.fit.t0_s == pytest.approx(TRUE[0], rel=0.01)
    assert r.fit.kv_s_per_token == pytest.approx(TRUE[1], rel=0.01)
    assert r.fit.seq_s == pytest.approx(TRUE[2], rel=0.02)
    assert r.fit.prefill_s_per_token == pytest.approx(TRUE[3], rel=0.01)
    assert r.fit.ttft_constant_s == pytest.approx(0.004, rel=0.02)
    assert r.cold_start_s == 91.0 and r.cold_start_pods == 3
    assert r.replicas == 2 and r.fit.n_samples == 120  # 60 one-minute windows x 2 pods
    assert r.kv_capacity_tokens == pytest.approx(400_000, rel=0.01)
    # 120 of 256 sequences per replica at most: warned
    assert any("never saw high concurrency" in w for w in r.warnings)
    patch = patch_dict(r)
    assert patch["models"][0]["latency"]["max_num_seqs"] == 256
    assert patch["calibration"]["load_seen"]["running_per_replica"][1] <= 120


def test_hold_keeps_the_goal_value() -> None:
    goal = load_goal(GOAL)
    r = calibrate(FakeProm(), goal, _settings(hold=("prefill",)))
    assert r.fit.prefill_s_per_token == goal.model("llama-3-8b").latency.prefill_s_per_token
    assert "prefill" not in r.fit.fitted


@pytest.mark.parametrize("metric", ["vllm:num_requests_running", "vllm:prompt_tokens_total",
                                    "vllm:time_to_first_token_seconds_count", "vllm:request_success_total"])
def test_missing_series_is_named(metric: str) -> None:
    with pytest.raises(UserError, match=re.escape(metric)):
        calibrate(FakeProm(drop=(metric,)), load_goal(GOAL), _settings())


def test_missing_itl_names_both_metric_names() -> None:
    with pytest.raises(UserError, match="inter_token_latency_seconds_sum or vllm:time_per_output_token"):
        calibrate(FakeProm(drop=("_seconds_sum", "_seconds_count")), load_goal(GOAL), _settings())


def test_missing_cold_start_names_the_series_and_the_way_out() -> None:
    with pytest.raises(UserError, match="kube_pod_status_ready_time.*--skip-cold-start"):
        calibrate(FakeProm(drop=("kube_pod",)), load_goal(GOAL), _settings())
    r = calibrate(FakeProm(drop=("kube_pod",)), load_goal(GOAL), _settings(cold_start_query=None))
    assert r.cold_start_s is None
    assert "cold_start_s" not in patch_dict(r)["models"][0]


def test_cold_start_query_gets_the_deployment() -> None:
    prom = FakeProm()
    calibrate(prom, load_goal(GOAL), _settings())
    q = [x for x in prom.queries if "kube_pod" in x][0]
    assert 'namespace="inference"' in q and 'pod=~"llama-3-8b-[a-z0-9]+-[a-z0-9]+"' in q and "[3600s:60s]" in q
    assert DEFAULT_COLD_START_QUERY.startswith("max by (namespace, pod)")


def test_counter_reset_is_a_restart_not_a_negative_increase() -> None:
    r = calibrate(FakeProm(reset="vllm:prompt_tokens_total"), load_goal(GOAL), _settings())
    assert r.fit.prefill_s_per_token == pytest.approx(TRUE[3], rel=0.02)
    assert r.fit.n_samples == 120


def test_negative_gauge_is_refused() -> None:
    with pytest.raises(UserError, match="vllm:num_requests_running has negative samples"):
        calibrate(FakeProm(negative_gauge=True), load_goal(GOAL), _settings())


def test_too_few_windows_is_refused() -> None:
    with pytest.raises(UserError, match="only 6 usable windows"):
        calibrate(FakeProm(minutes=3), load_goal(GOAL), _settings(range_s=180.0))


def test_durations_and_times() -> None:
    assert parse_duration("6h", "--range") == 21600 and parse_duration("90s", "--step") == 90
    assert parse_time("2026-12-04T10:00:00Z", "--end") == dt.datetime(2026, 12, 4, 10, tzinfo=dt.UTC).timestamp()
    for bad in ("6", "-1h", "1y", "0s"):
        with pytest.raises(UserError, match="--range"):
            parse_duration(bad, "--range")
    with pytest.raises(UserError, match="--end"):
        parse_time("yesterday", "--end")


def test_patch_for_an_unknown_model_is_refused() -> None:
    with pytest.raises(UserError, match="'nope'"):
        apply_patch({"models": [{"name": "a"}]}, {"models": [{"name": "nope", "cold_start_s": 3}]})
    merged = apply_patch({"models": [{"name": "a", "cold_start_s": 1}]},
                         {"models": [{"name": "a", "cold_start_s": 3, "latency": {"t0_ms": 1.0}}]})
    assert merged["models"][0] == {"name": "a", "cold_start_s": 3, "latency": {"t0_ms": 1.0}}


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    return ["calibrate", "--goal", str(GOAL), "--model", "llama-3-8b", "--out", str(tmp_path / "p.yaml"), *extra]


def test_cli_refuses_existing_out_before_any_query(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "p.yaml").write_text("keep", encoding="utf-8")
    assert main(_cli(tmp_path, "--prometheus", "http://127.0.0.1:9")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert (tmp_path / "p.yaml").read_text(encoding="utf-8") == "keep"


@pytest.mark.parametrize("extra, where", [
    (("--model", "nope"), "--model"), (("--step", "2h", "--range", "1h"), "--step"), (("--range", "6y"), "--range"),
])
def test_cli_bad_flags_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, extra: tuple, where: str) -> None:
    assert main(_cli(tmp_path, "--prometheus", "http://127.0.0.1:9", *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and where in err


def test_cli_unreachable_prometheus_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from testbed.prometheus import free_port

    url = f"http://user:s3cr3t-pw@127.0.0.1:{free_port()}"
    assert main(_cli(tmp_path, "--prometheus", url, "--prometheus-timeout", "2")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect" in err and "s3cr3t-pw" not in err
    assert not (tmp_path / "p.yaml").exists()


def test_cli_writes_patch_from_a_fake_prometheus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    from fleetpilot.agent.commands import calibrate as cmd

    monkeypatch.setattr(cmd, "_client", lambda access: FakeProm())
    assert main(_cli(tmp_path, "--prometheus", "http://prom.test", "--end", str(END), "--range", "1h",
                     "--merged-out", str(tmp_path / "goal.yaml"))) == 0
    out = capsys.readouterr().out
    assert out.startswith("calibrated llama-3-8b: t0 7 ms") and "warning: the range never saw high" in out
    text = (tmp_path / "p.yaml").read_text(encoding="utf-8")
    assert text.startswith("# fleetpilot calibrate") and "# WARNING: the range never saw" in text
    patch = yaml.safe_load(text)
    assert patch["models"][0]["cold_start_s"] == 91.0
    assert load_goal(tmp_path / "goal.yaml").model("llama-3-8b").cold_start_s == 91.0


def test_a_replica_missing_from_one_series_is_skipped_not_a_crash() -> None:
    prom = FakeProm()
    orig = prom.custom_query

    def one_pod_missing(query: str, params: dict | None = None) -> list:
        res = orig(query, params)
        return res[:1] if query.startswith("vllm:prompt_tokens_total") else res

    prom.custom_query = one_pod_missing  # type: ignore[method-assign]
    r = calibrate(prom, load_goal(GOAL), _settings())
    assert r.fit.n_samples == 60  # only the pod with every series counts
