"""The safety shield: every decision passes through it before it reaches a fleet (simulated or live).

The shield is a chain of small named steps; each is a pure function of (proposal, observation, state,
``now``). :meth:`Shield.apply` runs them in order and reports the names of the rules that changed
something, so a replay or the daemon can say *why* the fleet did not do what the policy asked.

Replica steps, per model (``current`` = ready + starting replicas in the observation, at most ``desired``):

1. ``missing``        a NaN/absent proposal, or missing/NaN/stale measurements for the model -> hold
                      ``current`` (never scale down on missing data; with missing data ``current`` is the
                      largest of ready + starting, ``desired`` and the shield's last output).
                      ``Shield(goal, missing="no_down")`` still lets such a model scale up.
2. ``bounds``         clamp to ``[min_replicas, max_replicas]``.
3. ``max_step_up`` /  at most ``max(max_step_up, floor(max_step_up_fraction * current))`` more and
   ``max_step_down``  ``max_step_down`` fewer replicas than ``current`` per control interval (the larger of an
                      absolute and a relative limit, like the HPA's ``selectPolicy: Max``). A fleet outside its
                      bounds (changed from outside, or a goal reloaded with tighter bounds) is brought back by at
                      most one step per interval (``bounds`` and ``max_step_*`` both fire), and never scaled down
                      while its data is missing (issue 11: 100 -> 40 in one interval with Prometheus down).
4. ``dead_band``      a relative change smaller than ``shield.dead_band`` is ignored.
5. ``stabilization``  HPA-style scale-down stabilisation: the recommendation is recorded at ``now`` and a
                      scale-down goes no lower than the highest recommendation of the last
                      ``scale_down_stabilization_s`` seconds (and never above ``current``).
6. ``budget``         if the fleet would cost more than ``budget_per_hour``, replicas are trimmed, most
                      expensive per unit of capacity (``cost_per_hour / capacity_rps``) first, never below
                      ``min_replicas`` nor below ``current - max_step_down`` (``budget:unmet`` when that is
                      not enough this interval).

Routing steps, per route:

7. ``weights``        non-finite or negative weights become 0, unknown models are dropped, weights are
                      normalised; an all-zero proposal keeps the weights in force.
   ``unavailable``    no traffic to a model with zero replicas after this decision (ready + starting after
                      actuation), unless every model of the route has zero. ``quality_floor_keep`` first keeps
                      one replica of a route's best model when the models left could not meet the floor.
   ``weight_step`` /  the result is the Euclidean projection of the proposal onto
   ``quality_floor``  {w >= 0, sum w = 1, |w - w_now| <= max_weight_step, sum w * quality >= quality_floor}.
                      If that set is empty the step limit is relaxed first (availability and the quality
                      floor are safety, the step limit is smoothness), then the quality floor.

Time is the injected ``now`` (trace clock in simulation, the daemon's clock when live); never the wall clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fleetpilot.policies.base import ModelObs, Observation
from fleetpilot.simulations.fleet import Decision
from fleetpilot.simulations.goal import GoalSpec, ModelSpec, RouteSpec

__all__ = ["Shield", "ShieldState", "project_weights"]

_EPS = 1e-9


@dataclass(frozen=True)
class ShieldState:
    """What the shield remembers between intervals (immutable; :meth:`Shield.apply` returns a new one).

    ``recommendations`` holds, per model, the ``(time, replicas)`` recommendations still inside the
    scale-down stabilisation window; ``last_replicas`` the last replicas the shield let through (used as
    ``current`` when an observation lacks a model altogether).
    """

    recommendations: tuple[tuple[str, tuple[tuple[float, int], ...]], ...] = ()
    last_replicas: tuple[tuple[str, int], ...] = ()

    def history(self, model: str) -> tuple[tuple[float, int], ...]:
        """The recorded (time, recommendation) pairs of ``model``, oldest first."""
        for name, hist in self.recommendations:
            if name == model:
                return hist
        return ()

    def last(self, model: str) -> int | None:
        for name, n in self.last_replicas:
            if name == model:
                return n
        return None


# ---------------------------------------------------------------------------------------------
# Replica steps: pure functions of ints
# ---------------------------------------------------------------------------------------------


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def current_replicas(obs_m: ModelObs | None, fallback: int | None) -> int | None:
    """Ready + starting replicas from the observation; ``fallback`` when absent or not a number.

    Capped at ``desired`` when that is known: replicas that became ready during the interval can be counted
    both as ready and as starting in an interval report, and pods still terminating after a scale-down are
    not part of the fleet any more.
    """
    if obs_m is not None and _finite(obs_m.ready) and _finite(obs_m.starting):
        n = max(0, int(obs_m.ready) + int(obs_m.starting))
        if _finite(obs_m.desired) and obs_m.desired >= 0:
            n = min(n, int(obs_m.desired))
        return n
    return fallback


def data_missing(obs: Observation, name: str) -> bool:
    """True when the observation lacks the model or any of the measurements a policy bases a decision on."""
    m = obs.models.get(name)
    if m is None:
        return True
    if any(s == name or s.startswith(f"{name}.") for s in obs.stale):
        return True
    return not all(_finite(x) for x in (m.ready, m.starting, m.arrival_rps, m.in_flight, m.queued))


def step_missing(proposal: object, current: int | None, missing: bool) -> tuple[int | None, bool]:
    """Hold ``current`` when the proposal is not a finite number or the model's data is missing."""
    bad = not _finite(proposal)
    if (bad or missing) and current is not None:
        return current, True
    if bad:
        return None, True
    return int(round(float(proposal))), False  # type: ignore[arg-type]


def step_bounds(n: int, spec: ModelSpec) -> tuple[int, str | None]:
    if n > spec.max_replicas:
        return spec.max_replicas, "max"
    if n < spec.min_replicas:
        return spec.min_replicas, "min"
    return n, None


def step_limits(current: int, up: int, up_fraction: float, down: int) -> tuple[int, int]:
    """The (lowest, highest) replica count reachable from ``current`` in one interval."""
    up_allowed = max(up, int(math.floor(up_fraction * current + _EPS)))
    return max(0, current - down), current + up_allowed


def step_max_step(n: int, current: int, spec: ModelSpec, lo: int, hi: int) -> tuple[int, str | None]:
    """Clamp to the bounds, then to the step limits: the step wins, so a fleet outside its bounds moves back
    towards them by at most one step per interval."""
    n = min(max(n, spec.min_replicas), spec.max_replicas)
    rule = None
    if n > hi:
        n, rule = hi, "max_step_up"
    elif n < lo:
        n, rule = lo, "max_step_down"
    return n, rule


def step_dead_band(n: int, current: int, spec: ModelSpec, band: float) -> tuple[int, bool]:
    """Ignore a relative change smaller than ``band`` (only when ``current`` is itself within bounds)."""
    if band <= 0 or n == current or not (spec.min_replicas <= current <= spec.max_replicas):
        return n, False
    if abs(n - current) / max(current, 1) < band:
        return current, True
    return n, False


def step_stabilization(
    n: int, current: int, history: tuple[tuple[float, int], ...], now: float, window_s: float
) -> tuple[int, bool]:
    """HPA's scale-down stabilisation: a scale-down goes to the highest recommendation in the window.

    ``history`` must already contain the recommendation recorded at ``now``. Never raises above ``current``
    (stabilisation only slows scale-downs; it never scales up).
    """
    if window_s <= 0 or n >= current:
        return n, False
    hi = max((r for t, r in history if t > now - window_s - _EPS), default=n)
    out = max(n, min(current, hi))
    return out, out != n


def step_budget(
    replicas: dict[str, int],
    floors: Mapping[str, int],
    cost: Mapping[str, float],
    cost_per_capacity: Mapping[str, float],
    budget: float | None,
) -> tuple[dict[str, int], list[str]]:
    """Trim replicas until the fleet's $/h fits ``budget``: most expensive per unit capacity first."""
    if budget is None:
        return replicas, []
    out = dict(replicas)
    trimmed: list[str] = []

    def total() -> float:
        return sum(out[k] * cost[k] for k in out)

    order = sorted(out, key=lambda k: (-cost_per_capacity[k], k))
    for name in order:
        while total() > budget + 1e-9 and out[name] > floors[name]:
            out[name] -= 1
            if name not in trimmed:
                trimmed.append(name)
    return out, trimmed


# ---------------------------------------------------------------------------------------------
# Routing: projection onto {simplex ∩ box ∩ quality half-space}
# ---------------------------------------------------------------------------------------------


def _project_box_simplex(v: list[float], lo: list[float], hi: list[float]) -> list[float]:
    """Exact Euclidean projection of ``v`` onto {lo <= w <= hi, sum w = 1} (assumed non-empty).

    ``w(tau) = clip(v - tau, lo, hi)``; ``sum w(tau)`` is piecewise linear and non-increasing in ``tau`` with
    breakpoints at ``v - lo`` and ``v - hi``, so the root is found on the right segment by interpolation.
    The result does not change when a constant is added to ``v``, so ``v`` is first shifted to end at 0:
    ``tau`` then stays near the weights' own scale, and ``x - tau`` keeps its precision when ``v`` is huge
    (``project_weights`` adds ``lam * quality`` with ``lam`` up to 1e12).
    """
    top = max(v)
    v = [x - top for x in v]

    def s(tau: float) -> float:
        return sum(min(max(x - tau, lw), h) for x, lw, h in zip(v, lo, hi, strict=True))

    bps = sorted({x - lw for x, lw in zip(v, lo, strict=True)} | {x - h for x, h in zip(v, hi, strict=True)})
    tau = bps[-1]
    prev: tuple[float, float] | None = None
    for b in bps:
        sb = s(b)
        if sb <= 1.0:
            if prev is None or prev[1] - sb <= 0:
                tau = b
            else:
                tau = prev[0] + (prev[1] - 1.0) * (b - prev[0]) / (prev[1] - sb)
            break
        prev = (b, sb)
    return [min(max(x - tau, lw), h) for x, lw, h in zip(v, lo, hi, strict=True)]


def _max_quality(q: list[float], lo: list[float], hi: list[float]) -> float:
    """Highest ``q . w`` over {lo <= w <= hi, sum w = 1}: fill the best models first."""
    w = list(lo)
    left = 1.0 - sum(lo)
    for i in sorted(range(len(q)), key=lambda i: -q[i]):
        add = min(hi[i] - lo[i], max(left, 0.0))
        w[i] += add
        left -= add
    return sum(qi * wi for qi, wi in zip(q, w, strict=True))


def project_weights(
    v: list[float], lo: list[float], hi: list[float], quality: list[float] | None, floor: float | None
) -> list[float] | None:
    """Nearest weights to ``v`` in {lo <= w <= hi, sum w = 1, quality . w >= floor}; None if that set is empty.

    KKT: the projection onto the set with the half-space is ``P(v + lam * quality)`` for the smallest
    ``lam >= 0`` meeting the floor, where ``P`` projects onto box ∩ simplex; ``quality . P(v + lam q)`` is
    non-decreasing in ``lam`` (projections are monotone), so ``lam`` is found by bisection.
    """
    if sum(lo) > 1.0 + 1e-9 or sum(hi) < 1.0 - 1e-9:
        return None
    w = _project_box_simplex(v, lo, hi)
    if floor is None or quality is None:
        return w

    def qual(x: list[float]) -> float:
        return sum(a * b for a, b in zip(quality, x, strict=True))

    if qual(w) >= floor - 1e-12:
        return w
    if _max_quality(quality, lo, hi) < floor - 1e-9:
        return None
    def at(lam: float) -> list[float]:
        return _project_box_simplex([x + lam * qi for x, qi in zip(v, quality, strict=True)], lo, hi)

    lam_lo, f_lo = 0.0, qual(w)
    lam_hi = 1.0
    f_hi = qual(at(lam_hi))
    while f_hi < floor and lam_hi < 1e12:
        lam_lo, f_lo = lam_hi, f_hi
        lam_hi *= 4.0
        f_hi = qual(at(lam_hi))
    best = at(lam_hi)
    # the quality is piecewise linear in lam: bisect to a linear piece, then interpolate
    for _ in range(60):
        if f_hi - f_lo > 0:
            lam = lam_lo + (floor - f_lo) * (lam_hi - lam_lo) / (f_hi - f_lo)
            cand = at(lam)
            fc = qual(cand)
            if floor - 1e-12 <= fc <= floor + 1e-9:
                return cand
        mid = 0.5 * (lam_lo + lam_hi)
        fm = qual(at(mid))
        if fm >= floor:
            lam_hi, f_hi = mid, fm
            best = at(mid)
        else:
            lam_lo, f_lo = mid, fm
    return best


def _clean(w: Mapping[str, float] | None, models: tuple[str, ...]) -> list[float] | None:
    """Weights in route order: non-finite/negative -> 0, normalised; None when nothing is left."""
    if not w:
        return None
    vals = []
    for m in models:
        x = w.get(m, 0.0)
        vals.append(float(x) if _finite(x) and float(x) > 0 else 0.0)
    tot = sum(vals)
    if tot <= 0:
        return None
    return [x / tot for x in vals]


# ---------------------------------------------------------------------------------------------
# The shield
# ---------------------------------------------------------------------------------------------


class Shield:
    """Turns any proposed :class:`Decision` into a safe one. See the module docstring for the rules."""

    def __init__(self, goal: GoalSpec, *, missing: str = "hold") -> None:
        """``missing="hold"`` holds current replicas on missing data; ``"no_down"`` still allows scale-up."""
        if missing not in ("hold", "no_down"):
            raise ValueError(f"missing must be 'hold' or 'no_down', got {missing!r}")
        self.goal = goal
        self.spec = goal.shield
        self.missing = missing
        self._quality = {m.name: m.quality for m in goal.models}

    def initial_state(self) -> ShieldState:
        return ShieldState()

    # ------------------------------------------------------------------ replicas
    def _replicas(
        self, decision: Decision, obs: Observation, state: ShieldState, now: float
    ) -> tuple[dict[str, int], dict[str, int], tuple[tuple[str, tuple[tuple[float, int], ...]], ...], list[str]]:
        sh = self.spec
        out: dict[str, int] = {}
        currents: dict[str, int] = {}
        floors: dict[str, int] = {}
        hists: list[tuple[str, tuple[tuple[float, int], ...]]] = []
        fired: list[str] = []
        for m in self.goal.models:
            name = m.name
            obs_m = obs.models.get(name)
            cur = current_replicas(obs_m, state.last(name))
            proposal = decision.replicas.get(name, math.nan) if decision.replicas else math.nan
            missing = data_missing(obs, name)
            if missing:  # unknown state: the most we know of, so that nothing scales down on missing data
                known = [x for x in (cur, state.last(name)) if x is not None]
                if obs_m is not None and _finite(obs_m.desired) and obs_m.desired >= 0:
                    known.append(int(obs_m.desired))
                cur = max(known) if known else None
            # (1) missing data
            if self.missing == "no_down" and missing and _finite(proposal) and cur is not None:
                n, hit = max(int(round(float(proposal))), cur), float(proposal) < cur
            else:
                n_opt, hit = step_missing(proposal, cur, missing)
                n = n_opt if n_opt is not None else m.min_replicas
            if hit and (n != proposal):
                fired.append(f"missing:{name}")
            if cur is None:  # nothing known about the fleet: the proposal, within bounds, is all we have
                cur = min(max(n, m.min_replicas), m.max_replicas)
            currents[name] = cur
            # (2) bounds
            n, side = step_bounds(n, m)
            if side:
                fired.append(f"bounds:{name}:{side}")
            rec = n
            # (3) max step
            lo, hi = step_limits(cur, sh.max_step_up, sh.max_step_up_fraction, sh.max_step_down)
            if missing:
                lo = max(lo, cur)  # never down on missing data, not even towards the bounds
            n, rule = step_max_step(n, cur, m, lo, hi)
            if rule:
                fired.append(f"{rule}:{name}")
            # (4) dead band
            n, hit = step_dead_band(n, cur, m, sh.dead_band)
            if hit:
                fired.append(f"dead_band:{name}")
            # (5) scale-down stabilisation over the recorded recommendations
            window = sh.scale_down_stabilization_s
            hist = tuple((t, r) for t, r in state.history(name) if t > now - window - _EPS and t <= now + _EPS)
            hist = hist + ((float(now), int(rec)),)
            n, hit = step_stabilization(n, cur, hist, now, window)
            if hit:
                fired.append(f"stabilization:{name}")
            # bounds again after the smoothing rules, within the step limits (out-of-bounds fleets: one step)
            n, side = step_bounds(n, m)
            n = min(max(n, lo), hi)
            if side:
                fired.append(f"bounds:{name}:{side}")
            hists.append((name, hist if window > 0 else ()))
            out[name] = n
            floors[name] = min(n, max(m.min_replicas, lo))
        # (6) budget
        cost = {m.name: m.cost_per_hour for m in self.goal.models}
        cpc = {}
        for m in self.goal.models:
            om = obs.models.get(m.name)
            cap = om.capacity_rps if om is not None and _finite(om.capacity_rps) and om.capacity_rps > 0 else 1.0
            cpc[m.name] = m.cost_per_hour / cap
        out, trimmed = step_budget(out, floors, cost, cpc, self.goal.budget_per_hour)
        if trimmed:
            fired.append("budget")
            fired.extend(f"budget:{name}" for name in trimmed)
        budget = self.goal.budget_per_hour
        if budget is not None and sum(out[k] * cost[k] for k in out) > budget + 1e-9:
            fired.append("budget:unmet")  # min replicas / max step down keep the fleet above budget this interval
        return out, currents, tuple(hists), fired

    # ------------------------------------------------------------------ weights
    def _route_weights(
        self, route: RouteSpec, proposal: Mapping[str, float] | None, obs: Observation, replicas: Mapping[str, int]
    ) -> tuple[dict[str, float], list[str]]:
        models = route.models
        fired: list[str] = []
        default = [float(x) for x in route.weights]
        tot = sum(default) or 1.0
        default = [x / tot for x in default]
        now_w = _clean(obs.weights.get(route.name), models) or default
        v = _clean(proposal, models)
        if v is None:
            if proposal:
                fired.append(f"weights_invalid:{route.name}")
            v = list(now_w)
        avail = [replicas.get(m, 0) > 0 for m in models]
        if not any(avail):
            avail = [True] * len(models)  # every model is at zero: nothing better to do
        for m, ok, x in zip(models, avail, v, strict=True):
            if not ok and x > 0:
                fired.append(f"unavailable:{route.name}:{m}")
        step = self.spec.max_weight_step
        zero_lo = [0.0] * len(models)
        amax = [1.0 if ok else 0.0 for ok in avail]
        lo = [max(0.0, c - step) if ok else 0.0 for c, ok in zip(now_w, avail, strict=True)]
        hi = [min(1.0, c + step) if ok else 0.0 for c, ok in zip(now_w, avail, strict=True)]
        q = [self._quality[m] for m in models]
        floor = self.goal.quality_floor
        w = project_weights(v, lo, hi, q, floor)
        if w is None:  # relax the step limit (availability and quality are safety)
            fired.append(f"weight_step_relaxed:{route.name}")
            w = project_weights(v, zero_lo, amax, q, floor)
        if w is None:  # quality floor cannot be met with the models that have replicas
            fired.append(f"quality_floor_infeasible:{route.name}")
            w = project_weights(v, zero_lo, amax, None, None)
        if w is None:  # cannot happen (some model is available), but never return garbage
            w = default
        w = [max(0.0, x) for x in w]
        s = sum(w) or 1.0
        w = [x / s for x in w]
        # name the binding constraints (compare with the plain, step-only projection)
        if any(abs(a - b) > 1e-6 for a, b in zip(w, v, strict=True)):
            if floor is not None and sum(a * b for a, b in zip(q, v, strict=True)) < floor - 1e-9:
                fired.append(f"quality_floor:{route.name}")
            if any(abs(a - c) > step + 1e-9 for a, c in zip(v, now_w, strict=True)):
                fired.append(f"weight_step:{route.name}")
        return dict(zip(models, w, strict=True)), fired

    def _keep_quality_models(self, replicas: dict[str, int]) -> list[str]:
        """Keep one replica of a route's best model when without it the quality floor cannot be met.

        Only models scaled to zero are touched (0 -> 1 is within any step limit). This may cost more than
        ``budget_per_hour`` for one replica; the quality floor is a constraint of the goal as well.
        """
        floor = self.goal.quality_floor
        if floor is None:
            return []
        fired: list[str] = []
        for route in self.goal.routes:
            up = [m for m in route.models if replicas.get(m, 0) > 0]
            if not up or max(self._quality[m] for m in up) >= floor - 1e-9:
                continue
            best = max(route.models, key=lambda m: self._quality[m])
            if replicas.get(best, 0) == 0 and self.goal.model(best).max_replicas >= 1:
                replicas[best] = 1
                fired.append(f"quality_floor_keep:{best}")
        return fired

    # ------------------------------------------------------------------ entry point
    def apply(
        self, decision: Decision, obs: Observation, state: ShieldState, now: float
    ) -> tuple[Decision, ShieldState, list[str]]:
        """Return the safe decision, the next state and the names of the rules that fired."""
        replicas, _currents, hists, fired = self._replicas(decision, obs, state, now)
        fired.extend(self._keep_quality_models(replicas))
        weights: dict[str, dict[str, float]] = {}
        proposed = decision.weights or {}
        for route in self.goal.routes:
            w, f = self._route_weights(route, proposed.get(route.name), obs, replicas)
            weights[route.name] = w
            fired.extend(f)
        for rname in proposed:
            if rname not in weights:
                fired.append(f"unknown_route:{rname}")
        for mname in decision.replicas or {}:
            if mname not in replicas:
                fired.append(f"unknown_model:{mname}")
        new_state = ShieldState(recommendations=hists, last_replicas=tuple(replicas.items()))
        return Decision(replicas=replicas, weights=weights), new_state, fired
