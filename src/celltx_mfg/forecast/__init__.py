"""Forecast from a plant state: start the model from the work in progress, simulate forward on common
random numbers, and say when each live patient will be released and infused, with intervals."""

from .result import Band, ForecastResult, LoadKind, PatientForecast, WeekLoad

__all__ = ["Band", "ForecastResult", "LoadKind", "PatientForecast", "WeekLoad"]
