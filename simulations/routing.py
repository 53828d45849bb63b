"""The one routing rule: which share of each request class each model pool receives under routing weights.

Every component that needs "how much traffic goes to model p" uses :class:`RoutingMap`: the fast simulator,
the discrete-event simulator, the oracle, the RL action codec, the observation builder and the replay's token
mix. The rule:

* a request class belongs to the route of the same name; with a single route every class belongs to it; with no
  routes the goal has one model and everything goes there;
* within a route, model ``m`` gets ``max(0, w[m]) / sum(max(0, w))`` of the class, with ``w`` the weights in
  force (the goal's default weights when none are given for the route); all-zero weights split evenly.

``strict=True`` (simulators, oracle: the trace must fit the goal) raises :class:`UserError` for a class that
matches no route; ``strict=False`` (live readings, observation building) gives such a class no model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec

__all__ = ["RoutingMap", "Weights", "default_weights", "mix_tokens", "route_matrix"]

Weights = Mapping[str, Mapping[str, float]]  # route -> model -> weight


def default_weights(goal: GoalSpec) -> dict[str, dict[str, float]]:
    """The goal's routing weights, normalised per route."""
    out: dict[str, dict[str, float]] = {}
    for r in goal.routes:
        tot = sum(max(0.0, w) for w in r.weights)
        out[r.name] = {m: (max(0.0, w) / tot if tot > 0 else 1.0 / len(r.models)) for m, w in zip(r.models, r.weights, strict=True)}
    return out


def route_matrix(goal: GoalSpec, trace_classes: Sequence[str], *, strict: bool = True
                 ) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Map request classes onto the goal's routes: (route per class, models per class).

    A class without a route gets route ``""`` and, when the goal has no routes, the only model; with
    ``strict=False`` a class matching none of several routes gets no models.
    """
    names = goal.model_names
    if not goal.routes:
        if len(names) != 1 and strict:
            raise UserError(f"goal has {len(names)} models but no routes: add routes to say which requests go where")
        return tuple("" for _ in trace_classes), [names[:1] for _ in trace_classes]
    by_name = {r.name: r for r in goal.routes}
    out_routes: list[str] = []
    out_models: list[tuple[str, ...]] = []
    for c in trace_classes:
        r = by_name.get(c)
        if r is None and len(goal.routes) == 1:
            r = goal.routes[0]
        if r is None:
            if strict:
                raise UserError(
                    f"trace request class {c!r} matches no route; routes are {sorted(by_name)} "
                    "(name traces as CLASS=PATH)"
                )
            out_routes.append("")
            out_models.append(())
            continue
        out_routes.append(r.name)
        out_models.append(r.models)
    return tuple(out_routes), out_models


def mix_tokens(volume: np.ndarray, tin: np.ndarray, tout: np.ndarray, share: np.ndarray, floor: float = 1e-12
               ) -> tuple[np.ndarray, np.ndarray]:
    """The token-mix rule: request-weighted mean (input, output) tokens per model.

    ``volume``, ``tin``, ``tout``: ``(..., k)`` requests and mean tokens per class; ``share``: ``(..., k, P)`` (or
    ``(k, P)``) shares of each class per model. Each (class, model) weight is ``volume * share + floor``: a model
    no class reaches gets the plain mean of the classes (it still needs a token mix for its drain time and
    latency). Classes with unknown (NaN) token means are left out; NaN only when no class is known.
    Returns two ``(..., P)`` arrays.
    """
    tin = np.asarray(tin, dtype=float)
    tout = np.asarray(tout, dtype=float)
    v = np.asarray(volume, dtype=float)
    ok = np.isfinite(tin) & np.isfinite(tout) & np.isfinite(v)
    if not ok.all():
        v, tin, tout = np.where(ok, v, 0.0), np.where(ok, tin, 0.0), np.where(ok, tout, 0.0)
    vol = (v[..., :, None] * share + floor) * ok[..., :, None]  # (..., k, P)
    den = vol.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        m_in = (tin[..., :, None] * vol).sum(axis=-2) / den
        m_out = (tout[..., :, None] * vol).sum(axis=-2) / den
    m_in = np.where(den > 0, m_in, np.nan)
    m_out = np.where(den > 0, m_out, np.nan)
    return m_in, m_out


class RoutingMap:
    """Shares of each request class per model pool, for one goal and one set of request classes."""

    def __init__(self, goal: GoalSpec, classes: Sequence[str], *, strict: bool = True) -> None:
        self.goal = goal
        self.classes = tuple(classes)
        self.models = tuple(goal.model_names)
        self.index = {m: i for i, m in enumerate(self.models)}
        self.route_of_class, self.models_of_class = route_matrix(goal, self.classes, strict=strict)
        self._defaults = {r.name: dict(zip(r.models, r.weights, strict=True)) for r in goal.routes}
        self._cache: dict[tuple, np.ndarray] = {}
        self._dict_cache: dict[tuple, dict[tuple[str, str], float]] = {}

    def shares(self, weights: Weights | None = None) -> np.ndarray:
        """``(classes, models)`` matrix: the share of each class sent to each model under ``weights``."""
        key = _key(weights)
        got = self._cache.get(key)
        if got is not None:
            return got
        share = np.zeros((len(self.classes), len(self.models)))
        for k, models in enumerate(self.models_of_class):
            if not models:
                continue
            route = self.route_of_class[k]
            w = (weights or {}).get(route) or self._defaults.get(route) if route else None
            ws = np.array([max(0.0, float(w.get(m, 0.0))) if w else 1.0 for m in models])
            if not ws.sum() > 0:
                ws = np.ones(len(models))
            ws = ws / ws.sum()
            for m, x in zip(models, ws, strict=True):
                share[k, self.index[m]] += x
        if len(self._cache) > 256:
            self._cache.clear()
        share.setflags(write=False)
        self._cache[key] = share
        return share

    def share_of(self, weights: Weights | None = None) -> dict[tuple[str, str], float]:
        """``{(class, model): share}`` for the non-zero shares (for code keyed by names)."""
        key = _key(weights)
        got = self._dict_cache.get(key)
        if got is None:
            s = self.shares(weights)
            got = {(c, m): float(s[k, p]) for k, c in enumerate(self.classes) for p, m in enumerate(self.models)
                   if s[k, p] > 0}
            if len(self._dict_cache) > 256:
                self._dict_cache.clear()
            self._dict_cache[key] = got
        return dict(got)

    def model_rates(self, class_rates: np.ndarray, weights: Weights | None = None) -> np.ndarray:
        """Rates per model from rates per class (last axis = classes; NaN counts as 0)."""
        r = np.nan_to_num(np.asarray(class_rates, dtype=float), nan=0.0)
        return r @ self.shares(weights)

    def token_mix(self, volume: np.ndarray, tin: np.ndarray, tout: np.ndarray, weights: Weights | None = None,
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Request-weighted mean (input, output) tokens per model under ``weights`` (:func:`mix_tokens`).

        ``volume[k]`` is the requests of class ``k`` (floored at 1e-9 so a quiet class still counts).
        """
        v = np.maximum(np.asarray(volume, dtype=float), 1e-9)
        return mix_tokens(v, tin, tout, self.shares(weights))

    def token_dict(self, volume: np.ndarray, tin: np.ndarray, tout: np.ndarray, weights: Weights | None = None,
                   ) -> dict[str, tuple[float, float]]:
        """:meth:`token_mix` as ``{model: (input, output)}``, models without traffic left out."""
        a, b = self.token_mix(volume, tin, tout, weights)
        return {m: (float(a[p]), float(b[p])) for p, m in enumerate(self.models) if np.isfinite(a[p])}


def _key(weights: Weights | None) -> tuple:
    if not weights:
        return ()
    return tuple((r, tuple(sorted((m, float(x)) for m, x in w.items()))) for r, w in sorted(weights.items()))
