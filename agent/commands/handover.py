"""``fleetpilot handover --goal G [--kubeconfig K | --in-cluster | --kube-host URL] [--out DIR]``.

Reads the autoscalers already running on the goal's workloads -- autoscaling/v2 HPAs and KEDA ScaledObjects -- and
shows what their owners tuned (min/max, metric and per-replica target, scale-down window, KEDA polling/cooldown,
whether ``behavior`` is set), with a note for anything fleetpilot cannot map. With ``--out`` it writes:

* ``DIR/incumbents.json``: everything read, per model -- ``fleetpilot replay --policy incumbent:DIR`` replays
  *your* autoscalers as you tuned them (each model's kind, metric, target, min/max, window, behavior) next to
  fleetpilot's policy, on your own traffic (``fleetpilot trace import``);
* ``DIR/tuning-hpa.json`` as well when every model has an HPA on vLLM concurrency (``hpa-tuned:DIR``, the format of
  ``fleetpilot tune``).

It only reads (``list`` on horizontalpodautoscalers and scaledobjects.keda.sh); it never writes to the cluster.
``fleetpilot run --fallback incumbent`` uses the same reading as the daemon's fallback policy.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fleetpilot.simulations.errors import FleetpilotError, UserError


def register(sub: Any) -> None:
    """Add ``handover`` to the CLI."""
    p = sub.add_parser("handover", help="read the HPA / KEDA settings on the goal's workloads (read-only)",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--goal", required=True, help="goal spec YAML")
    kube = p.add_mutually_exclusive_group()
    kube.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    kube.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    kube.add_argument("--kube-host", help="API server URL without credentials (kubectl proxy, the test emulator)")
    from fleetpilot.agent.commands.run import add_kube_exec_timeout_argument

    add_kube_exec_timeout_argument(p)
    p.add_argument("--out", help="folder for incumbents.json and a tuning-<kind>.json usable as <kind>-tuned:DIR")
    p.set_defaults(func=handler)


def tuning_document(goal: Any, incumbents: dict[str, list[Any]]) -> tuple[str | None, dict[str, Any] | None, str]:
    """A ``fleetpilot/tuning-v1`` document when every model has an HPA on in-flight requests (the metric
    :func:`fleetpilot.policies.tuning.build_incumbent` replays ``hpa-tuned`` with), else None and why not. KEDA
    incumbents replay exactly through ``incumbent:DIR`` (``keda-tuned`` uses its own Little's-law metric)."""
    firsts = {m: (v[0] if v else None) for m, v in incumbents.items()}
    missing = [m for m in goal.model_names if firsts.get(m) is None]
    if missing:
        return None, None, f"no incumbent on {missing}"
    kinds = {i.kind for i in firsts.values()}
    if len(kinds) != 1:
        return None, None, f"models run different autoscalers ({sorted(kinds)})"
    kind = kinds.pop()
    if kind != "hpa":
        return None, None, f"{kind} incumbents replay through incumbent:DIR"
    wanted, unit = "in_flight", "in-flight requests per replica"
    bad = [m for m, i in firsts.items() if i.metric != wanted or i.target_per_replica is None]
    if bad:
        return None, None, (f"{kind} on {bad} does not use a metric fleetpilot replays as {kind} ({wanted}); "
                            "see incumbents.json notes")
    doc = {
        "format": "fleetpilot/tuning-v1",
        "autoscaler": kind,
        "models": {m: {"target": i.target_per_replica, "unit": unit,
                       "read_from": f"{i.ref} in {i.namespace}",
                       "min_replicas": i.min_replicas, "max_replicas": i.max_replicas} for m, i in firsts.items()},
        "source": "fleetpilot handover: read from the cluster (the incumbent as its owners tuned it, not a search)",
    }
    return kind, doc, "ok"


def handler(args: argparse.Namespace) -> int:
    from fleetpilot.agent.commands.run import check_kube_exec_timeout
    from fleetpilot.agent.handover import read_incumbents
    from fleetpilot.agent.kube import KubeActuator, make_api_client
    from fleetpilot.agent.prom import check_http_url, register_url_secrets
    from fleetpilot.simulations.goal import load_goal

    register_url_secrets(args.kube_host)  # credentials in --kube-host never reach a message, whatever fails first
    exec_timeout_s = check_kube_exec_timeout(args.kube_exec_timeout)
    goal = load_goal(args.goal)
    if args.kube_host is not None:
        check_http_url(args.kube_host, "--kube-host")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder", where=str(out))
    if out is not None:
        for name in ("incumbents.json", "tuning-hpa.json", "tuning-keda.json"):
            if (out / name).exists():
                raise UserError("exists; refusing to overwrite", where=str(out / name))
    api = make_api_client(args.kubeconfig, bool(args.in_cluster), args.kube_host, exec_timeout_s=exec_timeout_s)
    actuator = KubeActuator(api, {m.name: m.deployment for m in goal.models})
    found: dict[str, list[Any]] = {}
    try:
        for m in goal.model_names:
            found[m] = read_incumbents(actuator, m)
    except FleetpilotError as exc:
        raise UserError(f"reading autoscalers: {exc}") from None
    for m, incs in found.items():
        if not incs:
            print(f"{m}: no HPA or ScaledObject on {actuator.workload(m)}")
        for i in incs:
            target = "default" if i.target_per_replica is None else f"{i.target_per_replica:g} ({i.metric})"
            extra = f", polling {i.polling_s:g}s, cooldown {i.cooldown_s:g}s" if i.kind == "keda" else ""
            state = " [paused]" if i.paused else ""
            print(f"{m}: {i.ref}{state} min {i.min_replicas} max {i.max_replicas}, target {target}, scale-down "
                  f"window {i.down_window_s:g}s, behavior {'set' if i.behavior else 'unset (legacy limits)'}{extra}")
            for note in i.notes:
                print(f"  note: {note}")
    kind, doc, _why = tuning_document(goal, found)
    if out is None:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / "incumbents.json"] + ([out / f"tuning-{kind}.json"] if doc is not None else [])
    targets[0].write_text(json.dumps({"goal": goal.name, "models": {m: [i.describe() for i in v]
                                                                     for m, v in found.items()}},
                                     indent=2, sort_keys=True) + "\n")
    print(f"wrote {targets[0]}: replay your autoscalers with --policies incumbent:{out} (fleetpilot replay)")
    if doc is not None:
        targets[1].write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        print(f"wrote {targets[1]}: also --policy {kind}-tuned:{out}")
    return 0
