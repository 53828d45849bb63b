"""A minimal KEDA operator for the K8s API emulator: what a ScaledObject does to its workload, synchronously.

It follows KEDA 2.x's documented behaviour for the parts fleetpilot's handover touches:

* an active (unpaused) ScaledObject owns an HPA named ``keda-hpa-<name>`` (ownerReference to the ScaledObject,
  label ``scaledobject.keda.sh/name``) with the ScaledObject's min (at least 1) / max replicas and a scale target
  equal to the ScaledObject's;
* ``autoscaling.keda.sh/paused-replicas: N``: the workload is scaled to N and autoscaling stops -- the HPA is
  deleted (KEDA >= 2.8 removes it while paused), and every later change of N scales the workload again;
* removing the annotation: the HPA is created again (KEDA resumes).

It reacts to ScaledObject writes through :meth:`K8sEmulator.on_write`, inside the same API request, so tests need
no polling. Its own writes are recorded in managedFields as ``keda-operator``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from testbed.k8s_emulator import SCALABLE, K8sEmulator, WriteEvent

PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"

_PLURAL_BY_KIND = {rt.kind: rt.plural for rt in SCALABLE}


class FakeKeda:
    """Attach to an emulator: ``keda = FakeKeda(emu)``; :meth:`detach` to stop reacting."""

    def __init__(self, emulator: K8sEmulator) -> None:
        self.emu = emulator
        self.scaled_to: list[tuple[str, str, int]] = []  # (namespace, workload, replicas) KEDA wrote
        emulator.on_write(self._on_write)

    def detach(self) -> None:
        self.emu.remove_write_callback(self._on_write)

    def hpa_name(self, so_name: str) -> str:
        return f"keda-hpa-{so_name}"

    def _on_write(self, ev: WriteEvent) -> None:
        if ev.plural != "scaledobjects":
            return
        with self.emu.objects.as_manager("keda-operator"):
            if ev.new is None:
                self.emu.objects.delete("horizontalpodautoscalers", ev.namespace, self.hpa_name(ev.name))
                return
            self._reconcile(ev.new, ev.old)

    def _reconcile(self, so: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
        meta, spec = so["metadata"], so.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        ref = spec.get("scaleTargetRef") or {}
        kind = ref.get("kind") or "Deployment"
        paused = (meta.get("annotations") or {}).get(PAUSED_REPLICAS)
        was = ((old or {}).get("metadata", {}).get("annotations") or {}).get(PAUSED_REPLICAS) if old else None
        hpa_name = self.hpa_name(name)
        if paused is not None:
            self.emu.objects.delete("horizontalpodautoscalers", ns, hpa_name)
            if paused != was:
                self._scale(ns, kind, ref["name"], int(paused))
            return
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {
                "name": hpa_name,
                "namespace": ns,
                "labels": {"scaledobject.keda.sh/name": name, "app.kubernetes.io/managed-by": "keda-operator"},
                "ownerReferences": [{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "name": name,
                                     "uid": meta.get("uid", ""), "controller": True}],
            },
            "spec": {
                "scaleTargetRef": {"apiVersion": ref.get("apiVersion") or "apps/v1", "kind": kind,
                                   "name": ref["name"]},
                "minReplicas": max(1, int(spec.get("minReplicaCount", 0) or 0)),
                "maxReplicas": int(spec.get("maxReplicaCount", 100) or 100),
                "metrics": [{"type": "External", "external": {
                    "metric": {"name": "s0-prometheus"},
                    "target": {"type": "AverageValue",
                               "averageValue": str((spec.get("triggers") or [{}])[0].get("metadata", {})
                                                   .get("threshold", "1"))}}}],
            },
        }
        self.emu.objects.put(hpa, namespace=ns)

    def _scale(self, ns: str, kind: str, name: str, replicas: int) -> None:
        plural = _PLURAL_BY_KIND.get(kind)
        if plural is None or self.emu.objects.get(plural, ns, name) is None:
            return

        def mutate(obj: dict[str, Any]) -> None:
            obj["spec"]["replicas"] = replicas

        self.emu.objects.update(plural, ns, name, mutate)
        self.scaled_to.append((ns, name, replicas))
