"""Generate fleetpilot's Grafana dashboard with Grafana's own Python SDK (``grafana-foundation-sdk``).

    python deploy/dashboard.py            # rewrites deploy/base/fleetpilot-dashboard.json
    python deploy/dashboard.py --check    # exit 1 if the committed JSON differs from what this script generates

The JSON is committed (the kustomize base ships it as a ConfigMap for Grafana's dashboard sidecar; it can also be
imported by hand). Do not edit it: change this script and regenerate; tests/test_deploy.py fails when the two
differ, checks every query against a real Prometheus scraping the daemon's metrics, and checks that every
``fleetpilot_*`` name here is one the daemon exports.

Panels: replicas desired vs ready (and the shadow difference), p95 TTFT vs the SLO target, $/hour, route
weights, fallback and shield events, leadership and the control loop's health. Variables: the Prometheus data
source, the daemon's namespace, the models (vLLM's ``model_name`` = the goal's model names).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders.common import VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.builders.dashboard import (
    DatasourceVariable,
    QueryVariable,
    Row,
    TextBoxVariable,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery as PromQuery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphDrawStyle, LegendDisplayMode, LineInterpolation
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

OUT = Path(__file__).resolve().parent / "base" / "fleetpilot-dashboard.json"
UID = "fleetpilot-overview"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
# every fleetpilot series is selected by these matchers (the Prometheus Operator adds `namespace` to each target)
SEL = 'namespace=~"$namespace"'
MODEL_SEL = f'{SEL}, model=~"$model"'


def _query(expr: str, legend: str, ref: str) -> PromQuery:
    return PromQuery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)


def _panel(title: str, description: str, unit: str, *queries: PromQuery, stepped: bool = False,
           width: int = 12, height: int = 8) -> Timeseries:
    panel = (
        Timeseries()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10)
        .legend(VizLegendOptions().display_mode(LegendDisplayMode.TABLE).placement("bottom").show_legend(True)
                .calcs(["lastNotNull", "max"]))
    )
    if stepped:
        panel = panel.line_interpolation(LineInterpolation.STEP_AFTER).draw_style(GraphDrawStyle.LINE)
    for q in queries:
        panel = panel.with_target(q)
    return panel


def build() -> DashboardBuilder:
    """The dashboard, as a grafana-foundation-sdk builder."""
    datasource = DatasourceVariable("datasource").label("Prometheus").type("prometheus")
    namespace = (
        QueryVariable("namespace")
        .label("fleetpilot namespace")
        .description("Namespace of the fleetpilot daemon")
        .datasource(DS)
        .query("label_values(fleetpilot_leader, namespace)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .include_all(True)
        .all_value(".*")
        .multi(False)
    )
    model = (
        QueryVariable("model")
        .label("model")
        .description("Models of the goal (vLLM's model_name)")
        .datasource(DS)
        .query(f"label_values(fleetpilot_desired_replicas{{{SEL}}}, model)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .include_all(True)
        .all_value(".*")
        .multi(True)
    )
    target = (
        TextBoxVariable("slo_target_seconds")
        .label("SLO target (s)")
        .description("The goal's slo.target_ms in seconds, drawn as the target line")
        .default_value("0.5")
        .current(VariableOption(text="0.5", value="0.5", selected=True))
    )

    replicas = _panel(
        "Replicas: desired vs ready",
        "desired: what fleetpilot decided (after the shield); spec: the workload's spec.replicas as read; "
        "ready: status.readyReplicas. In shadow mode desired is not applied.",
        "short",
        _query(f"max by (model) (fleetpilot_desired_replicas{{{MODEL_SEL}}})", "{{model}} desired", "A"),
        _query(f"max by (model) (fleetpilot_current_replicas{{{MODEL_SEL}}})", "{{model}} spec", "B"),
        _query(f"max by (model) (fleetpilot_ready_replicas{{{MODEL_SEL}}})", "{{model}} ready", "C"),
        stepped=True,
    )
    shadow = _panel(
        "Shadow: fleetpilot minus the incumbent",
        "Replicas fleetpilot would run minus what the running autoscaler (HPA/KEDA) set; positive: fleetpilot "
        "would run more.",
        "short",
        _query(f"max by (model) (fleetpilot_shadow_replica_difference{{{MODEL_SEL}}})", "{{model}}", "A"),
        stepped=True,
    )
    ttft = _panel(
        "p95 TTFT vs target",
        "p95 time to first token per model from vLLM's histogram, against the goal's SLO target.",
        "s",
        _query('histogram_quantile(0.95, sum by (le, model_name) '
               '(rate(vllm:time_to_first_token_seconds_bucket{model_name=~"$model"}[$__rate_interval])))',
               "{{model_name}} p95 TTFT", "A"),
        _query("vector($slo_target_seconds)", "SLO target", "B"),
    )
    cost = _panel(
        "$ per hour",
        "What the replicas fleetpilot decided cost per hour (fleetpilot) and what the replicas in force cost "
        "(current), from the goal's cost_per_hour. In shadow mode: fleetpilot's fleet vs the incumbent's.",
        "currencyUSD",
        _query(f"max by (source) (fleetpilot_cost_per_hour_dollars{{{SEL}}})", "{{source}}", "A"),
        stepped=True,
    )
    weights = _panel(
        "Route weights",
        "Share of each route's traffic per model: fleetpilot's decision and the weights in force in the HTTPRoute.",
        "percentunit",
        _query(f"max by (route, model, source) (fleetpilot_route_weight{{{MODEL_SEL}}})",
               "{{route}} / {{model}} ({{source}})", "A"),
        stepped=True,
    )
    demand = _panel(
        "Demand: arrivals vs forecast",
        "Requests per second arriving at each model (vLLM) and the forecast the policy used, per request class, "
        "horizon and bound.",
        "reqps",
        _query('sum by (model_name) (rate(vllm:request_success_total{model_name=~"$model"}[$__rate_interval]))',
               "{{model_name}} arrivals", "A"),
        _query(f"max by (class, horizon, bound) (fleetpilot_forecast_requests_per_second{{{SEL}}})",
               "forecast {{class}} +{{horizon}} ({{bound}})", "B"),
    )
    fallback = _panel(
        "Fallback and shield events",
        "Intervals decided by the fallback policy by reason, the reason in force, and the shield rules that "
        "changed a decision (per scrape step).",
        "short",
        _query(f"sum by (kind) (increase(fleetpilot_fallback_intervals_total{{{SEL}}}[$__rate_interval]))",
               "fallback: {{kind}}", "A"),
        _query(f"max by (reason) (fleetpilot_fallback_reason{{{SEL}}}) > 0", "fallback active: {{reason}}", "B"),
        _query(f"sum by (rule) (increase(fleetpilot_shield_clamps_total{{{SEL}}}[$__rate_interval]))",
               "shield: {{rule}}", "C"),
        width=24,
    )
    leader = _panel(
        "Leader",
        "1 for the replica holding the Lease (only the leader acts).",
        "short",
        _query(f"max by (pod) (fleetpilot_leader{{{SEL}}})", "{{pod}}", "A"),
        stepped=True, width=8,
    )
    loop = _panel(
        "Control loop",
        "p95 duration of one control interval, and seconds since the last completed interval.",
        "s",
        _query("histogram_quantile(0.95, sum by (le) "
               f"(rate(fleetpilot_loop_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))", "p95 interval", "A"),
        _query(f"time() - max(fleetpilot_last_interval_timestamp_seconds{{{SEL}}})", "since last interval", "B"),
        width=8,
    )
    errors = _panel(
        "API errors and writes",
        "Failed calls by API (prometheus, kubernetes, lease, audit, policy) and Kubernetes write outcomes.",
        "ops",
        _query(f"sum by (api) (rate(fleetpilot_api_errors_total{{{SEL}}}[$__rate_interval]))", "error: {{api}}",
               "A"),
        _query(f"sum by (kind, status) (rate(fleetpilot_kube_writes_total{{{SEL}}}[$__rate_interval]))",
               "write {{kind}}: {{status}}", "B"),
        width=8,
    )

    return (
        DashboardBuilder("fleetpilot")
        .uid(UID)
        .description("fleetpilot daemon: scaling decisions, SLO, cost, routing, fallback and health. "
                     "Generated by deploy/dashboard.py (grafana-foundation-sdk); do not edit by hand.")
        .tags(["fleetpilot", "autoscaling", "llm-serving"])
        .editable()
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .with_variable(datasource)
        .with_variable(namespace)
        .with_variable(model)
        .with_variable(target)
        .with_row(Row("Scaling"))
        .with_panel(replicas)
        .with_panel(shadow)
        .with_row(Row("SLO and cost"))
        .with_panel(ttft)
        .with_panel(cost)
        .with_row(Row("Routing and demand"))
        .with_panel(weights)
        .with_panel(demand)
        .with_row(Row("Fallback and shield"))
        .with_panel(fallback)
        .with_row(Row("Health"))
        .with_panel(leader)
        .with_panel(loop)
        .with_panel(errors)
    )


def render() -> str:
    """The dashboard JSON exactly as committed (sorted keys, 2-space indent, trailing newline)."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build().build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed JSON instead of writing it")
    ap.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT})")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        same = args.out.is_file() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'differs from deploy/dashboard.py: regenerate it'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
