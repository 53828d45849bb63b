"""Traffic forecasting: fast numpy forecasters and Prophet, backtests, and forecast features for control.

Public API (see each module):

* :mod:`forecasting.base` -- :class:`Forecast`, the :class:`Forecaster` protocol, :func:`make_forecaster`,
  :func:`forecaster_from_json`, :func:`clean_rate`.
* :mod:`forecasting.models` -- :class:`LastValue`, :class:`SeasonalNaive`, :class:`HoltWinters`.
* :mod:`forecasting.prophet_model` -- ``ProphetForecaster`` (imported lazily: Prophet takes ~0.7 s to import).
* :mod:`forecasting.robust` -- :class:`FallbackForecaster`, :func:`robust_fit`.
* :mod:`forecasting.backtest` -- ``backtest()``, :class:`BacktestResult` (the function is not re-exported here:
  it would shadow the submodule's name).
* :mod:`forecasting.features` -- :func:`rolling_features`, :class:`OnlineForecaster`.
"""

from forecasting.backtest import BacktestResult
from forecasting.base import MODEL_NAMES, Forecast, Forecaster, clean_rate, forecaster_from_json, make_forecaster
from forecasting.features import OnlineForecaster, rolling_features
from forecasting.models import HoltWinters, LastValue, SeasonalNaive
from forecasting.robust import FallbackForecaster, robust_fit

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
