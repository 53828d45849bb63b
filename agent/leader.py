"""Lease-based leader election for the daemon, with an injected clock and no threads.

Our own small implementation over ``CoordinationV1Api`` (``coordination.k8s.io/v1`` Lease), compatible with the
records client-go and the bundled ``kubernetes.leaderelection`` write. The daemon calls
:meth:`LeaderElector.try_acquire_or_renew` at the start of every control interval and, as client-go does, every
retry period in between (:meth:`Leadership.keep_alive`; default 2 s for the default 15-s Lease, whatever the
control interval), and acts only while :attr:`LeaderElector.is_leader`. Renewing only once per interval would let
a 15-s Lease lapse between 15-s intervals at the first late tick, and lapse every interval for longer ones.

Each call reads the Lease and then:

* 404 -> create it naming us (201: leader; 409 AlreadyExists: someone was faster, follower);
* held by us -> renew: PUT with the read ``metadata.resourceVersion`` and a new ``renewTime``;
* held by another and ``renewTime + leaseDurationSeconds >= now`` -> follower;
* expired, or released (empty holder) -> take over: PUT naming us, ``leaseTransitions + 1``;
* a 409 on any PUT means another candidate wrote first: we lost the race and are not leader.

A temporary failure (timeout, 5xx) while leading keeps leadership only until ``renew_deadline_s`` after the last
successful renewal; ``renew_deadline_s < lease_duration_s`` so we stop acting before anyone else may take over.
Expiry compares the stored ``renewTime`` with our clock, so candidates' clocks must agree to well within
``lease_duration_s - renew_deadline_s`` (NTP-synchronised nodes do).

:class:`Leadership` is the daemon's side of it: one :meth:`Leadership.renew` per interval asks the elector, forgets
the writes the daemon remembers whenever leadership is gained or missing (another replica may have written while we
followed), tells ``--take-over keda`` to pause or give back, and sets the ``fleetpilot_leader`` gauge;
:meth:`Leadership.step_down` hands KEDA back and releases the Lease on exit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes.client
import urllib3
from kubernetes.client.rest import ApiException

from fleetpilot.agent.events import FIELD_MANAGER

__all__ = ["LeaderElector", "LeaderSettings", "Leadership"]

log = logging.getLogger(__name__)

#: client-go's ``JitterFactor``: its elector refuses ``renewDeadline <= JitterFactor x retryPeriod``
JITTER_FACTOR = 1.2


@dataclass(frozen=True)
class LeaderSettings:
    """Where the Lease lives, who we are, and the timing (seconds)."""

    namespace: str
    name: str
    identity: str
    lease_duration_s: int = 15
    renew_deadline_s: float | None = None  # None: two thirds of the lease duration (client-go: 15 s / 10 s)
    request_timeout_s: float = 5.0
    retry_period_s: float | None = None  # None: 2/15 of the lease duration (client-go: 15 s / 10 s / 2 s)

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("identity must not be empty")
        if isinstance(self.lease_duration_s, bool) or not isinstance(self.lease_duration_s, int):
            raise ValueError("lease_duration_s must be a whole number of seconds (Lease.spec.leaseDurationSeconds)")
        if self.lease_duration_s < 1:
            raise ValueError("lease_duration_s must be >= 1")
        if not 0 < self.effective_renew_deadline_s < self.lease_duration_s:
            raise ValueError("need 0 < renew_deadline_s < lease_duration_s")
        if not 0 < JITTER_FACTOR * self.effective_retry_period_s < self.effective_renew_deadline_s:
            raise ValueError(f"need 0 < {JITTER_FACTOR} x retry_period_s < renew_deadline_s (client-go's rule)")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be > 0")

    @property
    def effective_renew_deadline_s(self) -> float:
        """``renew_deadline_s``, or two thirds of the lease duration when unset."""
        return self.renew_deadline_s if self.renew_deadline_s is not None else self.lease_duration_s * 2 / 3

    @property
    def effective_retry_period_s(self) -> float:
        """``retry_period_s``, or 2/15 of the lease duration when unset: how often a candidate tries to acquire or
        renew between control intervals (:meth:`Leadership.keep_alive`)."""
        return self.retry_period_s if self.retry_period_s is not None else self.lease_duration_s * 2 / 15


def _micro_time(epoch_s: float) -> datetime:
    """An aware UTC datetime for a Lease time field.

    The client serialises datetimes with ``isoformat()``, which drops the fraction when it is zero; the API server
    parses Lease times with Go's RFC3339Micro layout, which requires six fractional digits. Nudging a whole second
    by one microsecond keeps the fraction on the wire.
    """
    dt = datetime.fromtimestamp(epoch_s, tz=UTC)
    return dt.replace(microsecond=1) if dt.microsecond == 0 else dt


class LeaderElector:
    """One candidate for the Lease ``namespace/name``. ``clock`` returns epoch seconds (inject a fake in tests)."""

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: int = 15,
        clock: Callable[[], float] = time.time,
        *,
        renew_deadline_s: float | None = None,
        request_timeout_s: float = 5.0,
        retry_period_s: float | None = None,
    ) -> None:
        self._settings = LeaderSettings(
            namespace, name, identity, lease_duration_s, renew_deadline_s, request_timeout_s, retry_period_s
        )
        self._api = kubernetes.client.CoordinationV1Api(api_client)
        self._clock = clock
        self._leader = False
        self._last_renew: float | None = None
        self._holder: str | None = None
        self.last_error: str | None = None

    @classmethod
    def from_settings(
        cls, api_client: kubernetes.client.ApiClient, settings: LeaderSettings, clock: Callable[[], float] = time.time
    ) -> LeaderElector:
        """Build an elector from a :class:`LeaderSettings`."""
        return cls(
            api_client,
            settings.namespace,
            settings.name,
            settings.identity,
            settings.lease_duration_s,
            clock,
            renew_deadline_s=settings.renew_deadline_s,
            request_timeout_s=settings.request_timeout_s,
            retry_period_s=settings.retry_period_s,
        )

    @property
    def settings(self) -> LeaderSettings:
        """The settings in use."""
        return self._settings

    @property
    def is_leader(self) -> bool:
        """True while the last renewal succeeded less than ``renew_deadline_s`` ago."""
        return self._leader and self._within_deadline(self._clock())

    @property
    def holder(self) -> str | None:
        """The holder seen at the last read (None: no Lease, or released)."""
        return self._holder

    def try_acquire_or_renew(self) -> bool:
        """Read the Lease and create, renew or take it over when allowed. Returns :attr:`is_leader`."""
        s = self._settings
        now = self._clock()
        try:
            lease = self._api.read_namespaced_lease(s.name, s.namespace, _request_timeout=s.request_timeout_s)
        except ApiException as exc:
            if exc.status == 404:
                return self._create(now)
            return self._failed(now, f"read lease: HTTP {exc.status} {exc.reason}")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return self._failed(now, f"read lease: {type(exc).__name__}: {exc}")

        spec = lease.spec or kubernetes.client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        self._holder = holder or None
        if holder == s.identity:
            spec.renew_time = _micro_time(now)
            spec.lease_duration_seconds = s.lease_duration_s
            if spec.acquire_time is None:
                spec.acquire_time = spec.renew_time
        elif holder and not self._expired(spec, now):
            self._lose(f"lease held by {holder} until {self._expiry(spec):.3f}")
            return False
        else:
            spec.holder_identity = s.identity
            spec.acquire_time = spec.renew_time = _micro_time(now)
            spec.lease_duration_seconds = s.lease_duration_s
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        lease.spec = spec
        return self._replace(lease, now, took_over=holder != s.identity)

    def release(self) -> bool:
        """Give the Lease up if we hold it (holder emptied, duration 1 s), so a successor need not wait it out.

        Returns True if the Lease was released by this call. Leadership ends either way.
        """
        s = self._settings
        was_leader, self._leader = self._leader, False
        if not was_leader:
            return False
        now = self._clock()
        try:
            lease = self._api.read_namespaced_lease(s.name, s.namespace, _request_timeout=s.request_timeout_s)
            if lease.spec is None or lease.spec.holder_identity != s.identity:
                return False
            lease.spec.holder_identity = ""
            lease.spec.lease_duration_seconds = 1
            lease.spec.acquire_time = lease.spec.renew_time = _micro_time(now)
            self._api.replace_namespaced_lease(
                s.name, s.namespace, lease, field_manager=FIELD_MANAGER, _request_timeout=s.request_timeout_s
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            self.last_error = f"release lease: {exc}"
            log.warning("%s could not release lease %s/%s: %s", s.identity, s.namespace, s.name, exc)
            return False
        self._holder = None
        log.info("%s released lease %s/%s", s.identity, s.namespace, s.name)
        return True

    # --- internals ----------------------------------------------------------------------------------------------

    def _expiry(self, spec: kubernetes.client.V1LeaseSpec) -> float:
        renewed = spec.renew_time or spec.acquire_time
        if renewed is None:
            return float("-inf")
        if renewed.tzinfo is None:  # the client parses "Z" as UTC; be safe with a naive value
            renewed = renewed.replace(tzinfo=UTC)
        duration = spec.lease_duration_seconds or self._settings.lease_duration_s
        return renewed.timestamp() + duration

    def _expired(self, spec: kubernetes.client.V1LeaseSpec, now: float) -> bool:
        return self._expiry(spec) < now

    def _within_deadline(self, now: float) -> bool:
        return self._last_renew is not None and now - self._last_renew < self._settings.effective_renew_deadline_s

    def _create(self, now: float) -> bool:
        s = self._settings
        stamp = _micro_time(now)
        body = kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(name=s.name, namespace=s.namespace),
            spec=kubernetes.client.V1LeaseSpec(
                holder_identity=s.identity,
                lease_duration_seconds=s.lease_duration_s,
                acquire_time=stamp,
                renew_time=stamp,
                lease_transitions=0,
            ),
        )
        try:
            self._api.create_namespaced_lease(
                s.namespace, body, field_manager=FIELD_MANAGER, _request_timeout=s.request_timeout_s
            )
        except ApiException as exc:
            if exc.status == 409:
                self._lose("another candidate created the lease first")
                return False
            return self._failed(now, f"create lease: HTTP {exc.status} {exc.reason}")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return self._failed(now, f"create lease: {type(exc).__name__}: {exc}")
        return self._won(now, "created the lease")

    def _replace(self, lease: kubernetes.client.V1Lease, now: float, took_over: bool) -> bool:
        s = self._settings
        try:
            self._api.replace_namespaced_lease(
                s.name, s.namespace, lease, field_manager=FIELD_MANAGER, _request_timeout=s.request_timeout_s
            )
        except ApiException as exc:
            if exc.status == 409:
                self._lose("lost the race: the lease changed since it was read")
                return False
            return self._failed(now, f"replace lease: HTTP {exc.status} {exc.reason}")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return self._failed(now, f"replace lease: {type(exc).__name__}: {exc}")
        return self._won(now, "took over the lease" if took_over else "renewed the lease")

    def _won(self, now: float, what: str) -> bool:
        s = self._settings
        if not self._leader:
            log.info("%s is now leader of %s/%s (%s)", s.identity, s.namespace, s.name, what)
        self._leader, self._last_renew, self._holder, self.last_error = True, now, s.identity, None
        return True

    def _lose(self, why: str) -> None:
        s = self._settings
        if self._leader:
            log.warning("%s lost leadership of %s/%s: %s", s.identity, s.namespace, s.name, why)
        self._leader = False
        self.last_error = None if why.startswith("lease held by") else why

    def _failed(self, now: float, why: str) -> bool:
        """A temporary failure: keep leading only within the renew deadline."""
        self.last_error = why
        if self._leader and self._within_deadline(now):
            log.warning("%s could not renew (%s); still leader until the renew deadline", self._settings.identity, why)
            return True
        self._lose(why)
        return False


class Leadership:
    """The daemon's leadership, one interval at a time (see the module docstring).

    ``electing``: the daemon competes for the Lease (control mode; dry-run and shadow never write, never lead).
    ``forget_writes`` is called when leadership is gained or missing (the ownership's memory of our own writes is no
    longer the whole story). ``metrics`` has ``leader`` (a gauge) and ``api_errors`` (a counter labelled by API).
    The elector and the ``--take-over keda`` session are passed per call: the daemon's dependencies can be swapped.
    """

    def __init__(self, electing: bool, forget_writes: Callable[[], None], metrics: Any) -> None:
        self.electing = bool(electing)
        self.was_leader = False
        self._lapsed = False  # leadership was missing at a keep-alive since the last interval
        self._forget_writes = forget_writes
        self._metrics = metrics

    def retry_period_s(self, elector: Any) -> float | None:
        """How often :meth:`keep_alive` should run between intervals (None: not electing, or the elector has no
        settings)."""
        settings = getattr(elector, "settings", None)
        if not self.electing or elector is None or settings is None:
            return None
        return float(settings.effective_retry_period_s)

    def keep_alive(self, elector: Any) -> bool | None:
        """Between intervals: acquire or renew the Lease (client-go's retry period). Nothing else happens here --
        the next interval's :meth:`renew` takes over / gives back KEDA and forgets writes; a leadership missing at
        any keep-alive is remembered so that interval forgets the writes even if leadership came back since."""
        if not self.electing or elector is None:
            return None
        try:
            leader = bool(elector.try_acquire_or_renew())
        except Exception as exc:  # noqa: BLE001 -- an elector failure means: not leader
            log.warning("leader election between intervals: %s", exc)
            self._metrics.api_errors.labels("lease").inc()
            leader = False
        if not leader:
            self._lapsed = True
        self._metrics.leader.set(1.0 if leader else 0.0)
        return leader

    def renew(self, elector: Any, takeover: Any, errors: list[str]) -> bool | None:
        """This interval's leadership: ``True``/``False``, or ``None`` when not electing (or no elector).

        An elector that raises means: not leader (the error goes to ``errors`` and the ``lease`` API-error count).
        """
        leader: bool | None = None
        if self.electing and elector is not None:
            try:
                leader = bool(elector.try_acquire_or_renew())
            except Exception as exc:  # noqa: BLE001 -- an elector failure means: not leader
                errors.append(f"leader election: {exc}")
                self._metrics.api_errors.labels("lease").inc()
                leader = False
            if not leader or not self.was_leader or self._lapsed:
                self._forget_writes()  # someone else may have written while we followed
            self.was_leader, self._lapsed = leader, False
            if takeover is not None:
                takeover.on_leadership(leader, errors)  # --take-over keda: pause / give back
        self._metrics.leader.set(1.0 if leader else 0.0)
        return leader

    def step_down(self, elector: Any, takeover: Any) -> None:
        """On exit: hand KEDA back (``--take-over``), then release the Lease if electing (failures are logged)."""
        if takeover is not None:
            takeover.give_back()
        release = getattr(elector, "release", None)
        if release is not None and self.electing:
            try:
                release()
            except Exception as exc:  # noqa: BLE001 -- exiting anyway: the Lease then expires on its own
                log.warning("could not release the lease: %s", exc)
