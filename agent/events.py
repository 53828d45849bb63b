"""Kubernetes Events for what fleetpilot does, so ``kubectl describe`` and ``kubectl get events`` show it.

HPA users read ``SuccessfulRescale`` on the Deployment; fleetpilot writes the same kind of record, on the object it
changed, with the old and new value and why:

=====================  =======  =======================================================================
reason                 type     when
=====================  =======  =======================================================================
``SuccessfulRescale``  Normal   the workload's replicas were changed (``New size: 5 (was 3); reason: ...``)
``FailedRescale``      Warning  a scale write failed for good (forbidden, invalid, retries exhausted)
``WeightsChanged``     Normal   fleetpilot's backendRef weights on an HTTPRoute changed
``FailedSetWeights``   Warning  a weight write failed for good
``FallbackEntered``    Warning  the daemon left its policy for the fallback (on every managed workload)
``FallbackExited``     Normal   back to the policy
``TookOver`` /         Normal   ``--take-over keda``: the ScaledObject was paused / handed back
``HandedBack``
=====================  =======  =======================================================================

Events are ``core/v1`` Events (the API ``kubectl describe`` lists), written with the ``fleetpilot`` field manager.
:class:`EventRecorder` behaves like client-go's recorder and correlator, so a flapping loop cannot flood etcd:

* **deduplication**: an event equal to one recorded within ``dedupe_window_s`` (same object, type, reason and
  message) is not created again; the existing Event's ``count`` and ``lastTimestamp`` are patched instead;
* **spam filter**: a token bucket per (source, involved object) -- ``burst`` events, then one more every
  ``refill_s`` seconds (client-go: 25 and 300 s); events over the budget are dropped and counted in
  :attr:`EventRecorder.dropped`;
* **never in the way**: one attempt per event with a short timeout; a failure is logged at debug level and counted
  (:attr:`EventRecorder.errors`), never raised. The control loop does not wait on retries for a log record.

The clock is injected (epoch seconds).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import kubernetes.client
import urllib3
from kubernetes.client.rest import ApiException

__all__ = ["EventRecorder", "EventType", "ObjectReference", "RecordedEvent", "FIELD_MANAGER", "COMPONENT"]

log = logging.getLogger(__name__)

FIELD_MANAGER = "fleetpilot"
COMPONENT = "fleetpilot"
MAX_MESSAGE = 1024  # the API server rejects longer Event messages
EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class ObjectReference:
    """The object an event is about (``involvedObject``)."""

    kind: str
    namespace: str
    name: str
    api_version: str = "apps/v1"
    uid: str | None = None

    def to_api(self) -> dict[str, Any]:
        """The ``involvedObject`` body."""
        ref = {"kind": self.kind, "namespace": self.namespace, "name": self.name, "apiVersion": self.api_version}
        if self.uid:
            ref["uid"] = self.uid
        return ref


@dataclass(frozen=True)
class RecordedEvent:
    """What :meth:`EventRecorder.event` did: ``created``, ``counted`` (an existing Event's count went up),
    ``dropped`` (spam filter) or ``failed`` (the API call failed; ``message`` says why)."""

    outcome: Literal["created", "counted", "dropped", "failed"]
    name: str | None
    message: str = ""


@dataclass
class _Seen:
    name: str
    count: int
    last: float


class EventRecorder:
    """Writes core/v1 Events for one component instance (``instance``: e.g. the pod name / leader identity)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        *,
        component: str = COMPONENT,
        instance: str = "",
        clock: Callable[[], float] = time.time,
        burst: int = 25,
        refill_s: float = 300.0,
        dedupe_window_s: float = 600.0,
        request_timeout_s: float = 5.0,
        field_manager: str = FIELD_MANAGER,
        max_tracked: int = 4096,
    ) -> None:
        if burst < 1 or refill_s <= 0 or dedupe_window_s < 0 or request_timeout_s <= 0:
            raise ValueError("need burst >= 1, refill_s > 0, dedupe_window_s >= 0, request_timeout_s > 0")
        self._core = kubernetes.client.CoreV1Api(api_client)
        self.component = component
        self.instance = instance
        self._clock = clock
        self._burst = burst
        self._refill_s = refill_s
        self._window = dedupe_window_s
        self._timeout = request_timeout_s
        self._manager = field_manager
        self._max = max_tracked
        self._buckets: OrderedDict[tuple[str, ...], tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._seen: OrderedDict[tuple[str, ...], _Seen] = OrderedDict()
        self._serial = itertools.count()
        self.dropped = 0
        self.errors = 0
        self.last_error: str | None = None

    def event(self, ref: ObjectReference, type_: EventType, reason: str, message: str) -> RecordedEvent:
        """Record one event about ``ref``. Never raises for API failures."""
        message = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
        now = self._clock()
        obj_key = (ref.kind, ref.namespace, ref.name, ref.uid or "")
        if not self._take_token(obj_key, now):
            self.dropped += 1
            log.debug("event dropped by the spam filter: %s %s/%s %s", reason, ref.namespace, ref.name, message)
            return RecordedEvent("dropped", None, "spam filter: too many events for this object")
        key = (*obj_key, type_, reason, message)
        seen = self._seen.get(key)
        if seen is not None and now - seen.last <= self._window:
            return self._count(ref, key, seen, now)
        return self._create(ref, key, type_, reason, message, now)

    # --- internals ---------------------------------------------------------------------------------------------

    def _take_token(self, key: tuple[str, ...], now: float) -> bool:
        tokens, at = self._buckets.get(key, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + max(0.0, now - at) / self._refill_s)
        ok = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if ok else tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return ok

    def _stamp(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, tz=UTC).replace(microsecond=0)

    def _create(
        self, ref: ObjectReference, key: tuple[str, ...], type_: EventType, reason: str, message: str, now: float
    ) -> RecordedEvent:
        # client-go names events "<object>.<unix nanoseconds in hex>"; a serial keeps names unique within a tick
        name = f"{ref.name}.{int(now * 1e9) + next(self._serial):x}"
        stamp = self._stamp(now)
        body = kubernetes.client.CoreV1Event(
            metadata=kubernetes.client.V1ObjectMeta(name=name, namespace=ref.namespace),
            involved_object=kubernetes.client.V1ObjectReference(
                kind=ref.kind, namespace=ref.namespace, name=ref.name, api_version=ref.api_version, uid=ref.uid
            ),
            type=type_,
            reason=reason,
            message=message,
            count=1,
            first_timestamp=stamp,
            last_timestamp=stamp,
            source=kubernetes.client.V1EventSource(component=self.component),
            reporting_component=self.component,
            reporting_instance=self.instance or None,
            action=reason,
        )
        try:
            self._core.create_namespaced_event(
                ref.namespace, body, field_manager=self._manager, _request_timeout=self._timeout
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return self._failed(f"create event {reason} on {ref.kind}/{ref.namespace}/{ref.name}", exc)
        self._seen[key] = _Seen(name, 1, now)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return RecordedEvent("created", name)

    def _count(self, ref: ObjectReference, key: tuple[str, ...], seen: _Seen, now: float) -> RecordedEvent:
        patch = {"count": seen.count + 1, "lastTimestamp": self._stamp(now).strftime("%Y-%m-%dT%H:%M:%SZ")}
        try:
            self._core.patch_namespaced_event(
                seen.name, ref.namespace, patch, field_manager=self._manager, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:  # expired or deleted meanwhile: start a new one
                del self._seen[key]
                return self._create(ref, key, key[4], key[5], key[6], now)  # type: ignore[arg-type]
            return self._failed(f"update event {seen.name}", exc)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            return self._failed(f"update event {seen.name}", exc)
        seen.count += 1
        seen.last = now
        self._seen.move_to_end(key)
        return RecordedEvent("counted", seen.name)

    def _failed(self, what: str, exc: BaseException) -> RecordedEvent:
        self.errors += 1
        status = getattr(exc, "status", None)
        text = f"{what}: HTTP {status} {getattr(exc, 'reason', '')}" if status else f"{what}: {type(exc).__name__}"
        self.last_error = text
        log.debug("%s", text)
        return RecordedEvent("failed", None, text)
