"""Defined fallbacks: never crash on awkward input, and say why a simpler model answered.

:func:`robust_fit` tries the requested model, then ``seasonal-naive``, then ``last-value``. A model "fails" if its
``fit`` raises or its one-step forecast is not finite. ``last-value`` cannot fail on any 1-D input (an empty
history forecasts 0). The reason for every step down -- and a model's own degradation, e.g. seasonal-naive on
less than a season of history -- is kept in ``fallback_reason``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from fleetpilot.forecasting.base import (
    MODEL_NAMES,
    Forecast,
    Forecaster,
    dump_model,
    forecaster_from_json,
    load_payload,
    make_forecaster,
    rolling_forecast,
)
from fleetpilot.simulations.errors import UserError

FALLBACK_CHAIN: tuple[str, ...] = ("seasonal-naive", "last-value")
#: options that the simpler models in the chain understand
_SHARED_OPTIONS = {"seasonal-naive": ("season_s", "max_horizon_s", "error_days"),
                   "last-value": ("season_s", "max_horizon_s", "error_days")}


class FallbackForecaster:
    """A forecaster that fits ``name`` and steps down the chain on failure (see module doc).

    After :meth:`fit`: ``active`` is the fitted model that answers, ``active_name`` its name and
    ``fallback_reason`` why it is not the requested model (or why that model degraded), else ``None``.
    """

    name = "fallback"

    def __init__(self, step_s: float, model: str = "holt-winters", **kw: Any) -> None:
        if model not in MODEL_NAMES:
            raise UserError(f"unknown forecaster {model!r}; choose one of {', '.join(MODEL_NAMES)}")
        self.requested = model
        self.kw = dict(kw)
        make_forecaster(model, step_s, **kw)  # validate options now (UserError), not at fit time
        self.step_s = float(step_s)
        self.active: Forecaster | None = None
        self.active_name: str | None = None
        self.fallback_reason: str | None = None

    def fit(self, y: np.ndarray, t: np.ndarray | None = None) -> Self:
        """Fit the first model of the chain that works on this history."""
        reasons: list[str] = []
        chain = [self.requested] + [c for c in FALLBACK_CHAIN if c != self.requested]
        for name in chain:
            kw = self.kw if name == self.requested else {k: v for k, v in self.kw.items()
                                                         if k in _SHARED_OPTIONS.get(name, ())}
            model = make_forecaster(name, self.step_s, **kw)
            try:
                model.fit(y, t)
                one = model.predict(1, levels=())
                if not np.isfinite(one.mean).all():
                    raise ValueError("non-finite forecast")
            except Exception as exc:  # noqa: BLE001 -- any failure of a model steps down the chain
                if name == chain[-1]:
                    raise
                reasons.append(f"{name} failed ({type(exc).__name__}: {_one_line(exc)})")
                continue
            degraded = getattr(model, "degraded_reason", None)
            if degraded:
                reasons.append(f"{name}: {degraded}")
            self.active, self.active_name = model, name
            break
        self.fallback_reason = "; ".join(reasons) if reasons else None
        return self

    def _require(self) -> Forecaster:
        if self.active is None:
            raise UserError("forecaster is not fitted yet")
        return self.active

    def predict(self, h: int, levels: Sequence[int] = (80, 95)) -> Forecast:
        """Forecast with the active model."""
        return self._require().predict(h, levels)

    def rolling_forecast(
        self, y_new: np.ndarray, leads: Sequence[int], level: int = 95
    ) -> tuple[np.ndarray, np.ndarray]:
        """Delegate to the active model (see :func:`forecasting.base.rolling_forecast`)."""
        return rolling_forecast(self._require(), y_new, leads, level)

    def to_json(self) -> str:
        """Serialise the requested name, options, reason and the active model."""
        payload = {
            "step_s": self.step_s,
            "requested": self.requested,
            "options": self.kw,
            "active_name": self.active_name,
            "fallback_reason": self.fallback_reason,
            "active": None if self.active is None else self.active.to_json(),
        }
        return dump_model(self.name, payload)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Load a forecaster written by :meth:`to_json`."""
        d = load_payload(text, cls.name)
        obj = cls(d["step_s"], d["requested"], **d["options"])
        obj.active_name = d["active_name"]
        obj.fallback_reason = d["fallback_reason"]
        obj.active = None if d["active"] is None else forecaster_from_json(d["active"])
        return obj


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200]


def robust_fit(
    name: str, y: np.ndarray, step_s: float, t: np.ndarray | None = None, **kw: Any
) -> FallbackForecaster:
    """Fit ``name`` on ``y`` with the defined fallbacks; read ``.fallback_reason`` for what happened."""
    return FallbackForecaster(step_s, name, **kw).fit(y, t)
