"""Traffic forecasting: fast numpy forecasters and Prophet, backtests, and forecast features for control.

Public API (see each module):

* :mod:`fleetpilot.forecasting.base` -- :class:`Forecast`, the :class:`Forecaster` protocol, :func:`make_forecaster`,
  :func:`forecaster_from_json`, :func:`clean_rate`.
* :mod:`fleetpilot.forecasting.models` -- :class:`LastValue`, :class:`SeasonalNaive`, :class:`HoltWinters`.
* :mod:`fleetpilot.forecasting.prophet_model` -- ``ProphetForecaster`` (imported lazily: Prophet takes ~0.7 s to import).
* :mod:`fleetpilot.forecasting.robust` -- :class:`FallbackForecaster`, :func:`robust_fit`.
* :mod:`fleetpilot.forecasting.backtest` -- ``backtest()``, :class:`BacktestResult` (the function is not re-exported here:
  it would shadow the submodule's name).
* :mod:`fleetpilot.forecasting.features` -- :func:`rolling_features`, :class:`OnlineForecaster`.
"""

from fleetpilot.forecasting.backtest import BacktestResult
from fleetpilot.forecasting.base import (
    MODEL_NAMES,
    Forecast,
    Forecaster,
    clean_rate,
    forecaster_from_json,
    make_forecaster,
)
from fleetpilot.forecasting.features import OnlineForecaster, rolling_features
from fleetpilot.forecasting.models import HoltWinters, LastValue, SeasonalNaive
from fleetpilot.forecasting.robust import FallbackForecaster, robust_fit

__all__ = [
    "MODEL_NAMES",
    "BacktestResult",
    "OnlineForecaster",
    "rolling_features",
    "FallbackForecaster",
    "Forecast",
    "Forecaster",
    "HoltWinters",
    "LastValue",
    "SeasonalNaive",
    "clean_rate",
    "forecaster_from_json",
    "make_forecaster",
    "robust_fit",
]
