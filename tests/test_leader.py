"""Lease leader election in fake time against the emulator, plus the bundled kubernetes.leaderelection path."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import kubernetes.client as k8s
import pytest
from kubernetes.client.rest import ApiException
from kubernetes.leaderelection import electionconfig
from kubernetes.leaderelection.leaderelection import LeaderElection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

from fleetpilot.agent.leader import LeaderElector, LeaderSettings, Leadership
from fleetpilot.agent.metrics_server import DaemonMetrics
from testbed.k8s_emulator import K8sEmulator

NS = "fleetpilot"
LEASE = "fleetpilot-daemon"
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


class FakeClock:
    """Epoch seconds that only move when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def emu() -> Iterator[K8sEmulator]:
    with K8sEmulator() as emulator:
        yield emulator


@pytest.fixture
def client(emu: K8sEmulator) -> k8s.ApiClient:
    cfg = k8s.Configuration()
    cfg.host = emu.url
    return k8s.ApiClient(cfg)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _elector(client: k8s.ApiClient, identity: str, clock: FakeClock) -> LeaderElector:
    return LeaderElector(client, NS, LEASE, identity, lease_duration_s=15, clock=clock)


def _lease(emu: K8sEmulator) -> dict:
    lease = emu.objects.get("leases", NS, LEASE)
    assert lease is not None
    return lease


def test_only_one_candidate_leads(emu: K8sEmulator, client: k8s.ApiClient, clock: FakeClock) -> None:
    a, b = _elector(client, "pod-a", clock), _elector(client, "pod-b", clock)
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    assert a.is_leader and not b.is_leader and b.holder == "pod-a"
    spec = _lease(emu)["spec"]
    assert spec["holderIdentity"] == "pod-a" and spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
    assert [(r.method, r.status) for r in emu.requests][:2] == [("GET", 404), ("POST", 201)]
    assert all(r.content_type is None for r in emu.requests if r.method in ("POST", "PUT"))


def test_renewal_keeps_leadership(emu: K8sEmulator, client: k8s.ApiClient, clock: FakeClock) -> None:
    a, b = _elector(client, "pod-a", clock), _elector(client, "pod-b", clock)
    a.try_acquire_or_renew()
    for _ in range(5):  # 5 renewals 9 s apart: 45 s, far past one lease duration
        rv = _lease(emu)["metadata"]["resourceVersion"]
        clock.advance(9)
        assert a.try_acquire_or_renew() and a.is_leader
        assert _lease(emu)["metadata"]["resourceVersion"] != rv
        assert not b.try_acquire_or_renew()
    renew = [r for r in emu.requests if r.method == "PUT"][-1]
    assert renew.body["metadata"]["resourceVersion"]  # renewals are conditional on what was read
    assert re.fullmatch(r".+T.+\.\d{6}(\+00:00|Z)", renew.body["spec"]["renewTime"])  # RFC3339Micro on the wire
    assert _lease(emu)["spec"]["leaseTransitions"] == 0


def test_takeover_after_expiry(emu: K8sEmulator, client: k8s.ApiClient, clock: FakeClock) -> None:
    a, b = _elector(client, "pod-a", clock), _elector(client, "pod-b", clock)
    a.try_acquire_or_renew()
    clock.advance(15)  # renewTime + 15 == now: not yet expired
    assert not b.try_acquire_or_renew()
    clock.advance(0.5)
    assert b.try_acquire_or_renew() and b.is_leader
    assert not a.is_leader  # a stopped renewing: its renew deadline (10 s) passed long ago
    assert not a.try_acquire_or_renew() and a.holder == "pod-b"
    spec = _lease(emu)["spec"]
    assert spec["holderIdentity"] == "pod-b" and spec["leaseTransitions"] == 1


def test_leadership_lapses_without_renewal(client: k8s.ApiClient, clock: FakeClock) -> None:
    a = _elector(client, "pod-a", clock)
    assert a.try_acquire_or_renew()
    clock.advance(9.9)
    assert a.is_leader
    clock.advance(0.2)
    assert not a.is_leader  # past the renew deadline, before anyone else may take over


def test_losing_the_race_on_takeover(emu: K8sEmulator, client: k8s.ApiClient, clock: FakeClock) -> None:
    a, b, c = (_elector(client, f"pod-{x}", clock) for x in "abc")
    a.try_acquire_or_renew()
    clock.advance(20)  # a's lease expired; b and c both want it
    original = b._api.read_namespaced_lease

    def read_then_c_wins(*args: object, **kwargs: object) -> k8s.V1Lease:
        lease = original(*args, **kwargs)
        assert c.try_acquire_or_renew()  # c writes between b's read and b's replace
        return lease

    b._api.read_namespaced_lease = read_then_c_wins  # type: ignore[method-assign]
    assert b.try_acquire_or_renew() is False
    assert not b.is_leader and c.is_leader
    assert emu.requests[-1].method == "PUT" and emu.requests[-1].status == 409
    assert _lease(emu)["spec"]["holderIdentity"] == "pod-c"


def test_losing_the_race_on_create(emu: K8sEmulator, client: k8s.ApiClient, clock: FakeClock) -> None:
    a, b = _elector(client, "pod-a", clock), _elector(client, "pod-b", clock)
    original = b._api.read_namespaced_lease

    def not_found_then_a_creates(*args: object, **kwargs: object) -> k8s.V1Lease:
        try:
            return original(*args, **kwargs)
        finally:
            assert a.try_acquire_or_renew()

    b._api.read_namespaced_lease = not_found_then_a_creates  # type: ignore[method-assign]
    assert b.try_acquire_or_renew() is False
    assert emu.requests[-1].method == "POST" and emu.requests[-1].status == 409
    assert a.is_leader and not b.is_leader


def test_release_hands_over_at_once(emu: K8sEmulator, client: k8s.ApiClient, clock: FakeClock) -> None:
    a, b = _elector(client, "pod-a", clock), _elector(client, "pod-b", clock)
    a.try_acquire_or_renew()
    assert not b.release()  # not the leader: nothing to release
    assert a.release() and not a.is_leader
    assert _lease(emu)["spec"]["holderIdentity"] == ""
    clock.advance(0.1)
    assert b.try_acquire_or_renew() and b.is_leader


def test_temporary_failures_within_the_renew_deadline(
    emu: K8sEmulator, client: k8s.ApiClient, clock: FakeClock
) -> None:
    a = _elector(client, "pod-a", clock)
    a.try_acquire_or_renew()
    emu.inject(path_regex="/leases/", status=500, times=None)
    clock.advance(5)
    assert a.try_acquire_or_renew() is True and a.last_error is not None  # still inside the 10 s renew deadline
    clock.advance(6)
    assert a.try_acquire_or_renew() is False and not a.is_leader
    emu.clear_faults()
    assert a.try_acquire_or_renew() is True  # the lease still names us: renew


def test_settings_validate() -> None:
    with pytest.raises(ValueError):
        LeaderSettings(NS, LEASE, "pod-a", lease_duration_s=10, renew_deadline_s=10)
    with pytest.raises(ValueError):
        LeaderSettings(NS, LEASE, "", lease_duration_s=10)
    assert LeaderSettings(NS, LEASE, "x").effective_renew_deadline_s == 10
    assert LeaderSettings(NS, LEASE, "x").effective_retry_period_s == 2  # client-go's 15 s / 10 s / 2 s
    with pytest.raises(ValueError, match="retry_period_s"):  # client-go: renewDeadline > JitterFactor x retryPeriod
        LeaderSettings(NS, LEASE, "x", lease_duration_s=15, retry_period_s=9)


def test_interoperates_with_the_bundled_leaselock(emu: K8sEmulator, client: k8s.ApiClient, clock: FakeClock) -> None:
    lock = LeaseLock(LEASE, NS, "python-le")
    lock.api_instance = k8s.CoordinationV1Api(client)
    config = electionconfig.Config(
        lock,
        lease_duration=17,
        renew_deadline=15,
        retry_period=5,
        onstarted_leading=lambda: None,
        onstopped_leading=None,
    )
    election = LeaderElection(config)
    assert election.try_acquire_or_renew() is True  # 404 -> create
    assert election.try_acquire_or_renew() is True  # renew with PUT carrying the resourceVersion
    assert [(r.method, r.status) for r in emu.requests] == [("GET", 404), ("POST", 201), ("GET", 200), ("PUT", 200)]
    put = emu.requests[-1]
    assert put.content_type is None and put.body["metadata"]["resourceVersion"]

    ours = LeaderElector(client, NS, LEASE, "pod-a", clock=lambda: k8s_time(emu))
    assert ours.try_acquire_or_renew() is False and ours.holder == "python-le"

    stale = k8s.CoordinationV1Api(client).read_namespaced_lease(LEASE, NS)
    assert election.try_acquire_or_renew() is True
    with pytest.raises(ApiException) as err:
        k8s.CoordinationV1Api(client).replace_namespaced_lease(LEASE, NS, stale)
    assert err.value.status == 409


def k8s_time(emu: K8sEmulator) -> float:
    """Now, as the lease holder wrote it (the bundled elector uses wall time)."""
    lease = emu.objects.get("leases", NS, LEASE)
    assert lease is not None
    return datetime.fromisoformat(lease["spec"]["renewTime"]).timestamp() + 1


# ------------------------------------------------------------------------------------------------ the daemon's side


class _Elector:
    """Answers from a script; an exception in the script is raised."""

    def __init__(self, answers: list[bool | Exception]) -> None:
        self.answers = list(answers)
        self.released = 0

    def try_acquire_or_renew(self) -> bool:
        a = self.answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    def release(self) -> bool:
        self.released += 1
        raise OSError("connection refused")  # release failures are logged, never raised


class _Takeover:
    def __init__(self) -> None:
        self.seen: list[bool] = []
        self.given_back = 0

    def on_leadership(self, leader: bool, errors: list[str]) -> None:
        self.seen.append(leader)

    def give_back(self) -> None:
        self.given_back += 1


def _leadership(electing: bool) -> tuple[Leadership, list[int], DaemonMetrics]:
    forgotten: list[int] = []
    metrics = DaemonMetrics()
    return Leadership(electing, lambda: forgotten.append(1), metrics), forgotten, metrics


def test_leadership_forgets_writes_on_gain_and_loss_and_tells_the_takeover() -> None:
    lead, forgotten, metrics = _leadership(True)
    elector, takeover = _Elector([True, True, False, True]), _Takeover()
    seen = []
    for _ in range(4):
        errors: list[str] = []
        seen.append((lead.renew(elector, takeover, errors), len(forgotten), metrics.registry.get_sample_value(
            "fleetpilot_leader")))
        assert errors == []
    # gained: forget; kept: nothing; lost: forget; regained: forget (someone may have written meanwhile)
    assert seen == [(True, 1, 1.0), (True, 1, 1.0), (False, 2, 0.0), (True, 3, 1.0)]
    assert takeover.seen == [True, True, False, True]


def test_an_elector_failure_means_not_leader() -> None:
    lead, forgotten, metrics = _leadership(True)
    errors: list[str] = []
    assert lead.renew(_Elector([RuntimeError("lease API down")]), None, errors) is False
    assert errors == ["leader election: lease API down"] and forgotten == [1]
    assert metrics.registry.get_sample_value("fleetpilot_api_errors_total", {"api": "lease"}) == 1.0


def test_not_electing_never_asks_and_never_leads() -> None:
    lead, forgotten, metrics = _leadership(False)
    elector, takeover = _Elector([]), _Takeover()  # any call would pop from an empty script
    assert lead.renew(elector, takeover, []) is None and lead.renew(None, None, []) is None
    assert forgotten == [] and takeover.seen == [] and metrics.registry.get_sample_value("fleetpilot_leader") == 0.0
    lead.step_down(elector, takeover)
    assert takeover.given_back == 1 and elector.released == 0  # a shadow daemon holds no Lease to release


def test_step_down_gives_back_then_releases_and_survives_a_failed_release(caplog: pytest.LogCaptureFixture) -> None:
    # the module logger's own level: an earlier test's CLI run may have left the root logger at ERROR
    caplog.set_level(logging.WARNING, logger="fleetpilot.agent.leader")
    lead, _, _ = _leadership(True)
    elector, takeover = _Elector([]), _Takeover()
    lead.step_down(elector, takeover)
    assert takeover.given_back == 1 and elector.released == 1
    assert "could not release the lease" in caplog.text
    lead.step_down(object(), None)  # an elector without release(): nothing to do


class _LoopDaemon:
    """What :func:`fleetpilot.agent.runner.run_forever` needs of a daemon: intervals that only renew the Lease (as
    ``Daemon.run_once`` does first), fake monotonic time advanced by ``deps.sleep``, and a hook after every sleep."""

    def __init__(self, elector: LeaderElector, clock: FakeClock, interval_s: float, electing: bool = True,
                 after_sleep: Any = None) -> None:
        from types import SimpleNamespace

        self.interval_s, self.consecutive_failures, self._clock = interval_s, 0, clock
        self.metrics = DaemonMetrics()
        self.leadership = Leadership(electing, lambda: None, self.metrics)
        self.sleeps: list[float] = []
        self.leader_at_interval: list[bool | None] = []

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            clock.advance(seconds)
            if after_sleep is not None:
                after_sleep()

        self.deps = SimpleNamespace(elector=elector, takeover=None, sleep=sleep)
        self.settings = SimpleNamespace(loop=SimpleNamespace(backoff_max_s=60.0, backoff_base_s=1.0))

    def _monotonic(self) -> float:
        return self._clock()

    def run_once(self) -> None:
        self.leader_at_interval.append(self.leadership.renew(self.deps.elector, None, []))


@pytest.mark.parametrize("interval_s", [15.0, 60.0])
def test_the_loop_renews_the_lease_every_retry_period_so_a_rival_never_takes_it(
        emu: K8sEmulator, client: k8s.ApiClient, clock: FakeClock, interval_s: float) -> None:
    """A 15-s Lease held by a daemon whose control interval is 15 s or 60 s: between intervals the loop renews
    every retry period (2 s), so a rival that tries every 0.5 s never finds it expired. Renewing once per interval
    (what the loop did) lets the Lease lapse at the first late tick of 15-s intervals and every 60-s interval."""
    import threading

    from fleetpilot.agent.runner import run_forever

    a, b = _elector(client, "pod-a", clock), _elector(client, "pod-b", clock)
    rival: list[bool] = []

    def rival_tries() -> None:  # pod-b tries between every pair of pod-a's sleeps, half a second later
        clock.advance(0.5)
        rival.append(b.try_acquire_or_renew())

    d = _LoopDaemon(a, clock, interval_s, after_sleep=rival_tries)
    assert run_forever(d, threading.Event(), max_intervals=5) == 0
    assert d.leader_at_interval == [True] * 5 and not any(rival) and len(rival) > 0
    lease = emu.objects.get("leases", NS, LEASE)
    assert lease["spec"]["holderIdentity"] == "pod-a" and lease["spec"].get("leaseTransitions") in (0, None)
    # the waits went in steps of the retry period (a wait's last step may be shorter), never one whole interval
    assert max(d.sleeps) == pytest.approx(2.0) and len(d.sleeps) >= 4 * interval_s / 2.0


def test_the_loop_waits_in_one_step_when_not_electing(client: k8s.ApiClient, clock: FakeClock) -> None:
    import threading

    from fleetpilot.agent.runner import run_forever

    d = _LoopDaemon(_elector(client, "pod-a", clock), clock, 60.0, electing=False)
    run_forever(d, threading.Event(), max_intervals=3)
    assert d.sleeps == [60.0, 60.0] and d.leader_at_interval == [None] * 3


def test_a_lapse_between_intervals_makes_the_next_interval_forget_writes() -> None:
    lead, forgotten, _ = _leadership(True)
    elector = _Elector([True, False, True, True])
    assert lead.renew(elector, None, []) is True and forgotten == [1]  # gained
    assert lead.keep_alive(elector) is False and lead.keep_alive(elector) is True  # lost and regained meanwhile
    assert lead.renew(elector, None, []) is True and forgotten == [1, 1]  # another may have written in the gap
