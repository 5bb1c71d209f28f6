"""Helpers that configure the full model down to textbook systems (and small hand-traceable plants).

Nothing here simulates anything by itself: every helper returns a plain scenario mapping (what a YAML
file would hold) that goes through ``scenario_from_dict`` and hence through the same validation as a
user's file, then ``simulate`` runs the real engine on it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from celltx_mfg.config import Scenario, scenario_from_dict

ALL_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS = ALL_DAYS[:5]
ALWAYS = {"shifts": [{"start_hour": 0, "hours": 24}], "days": ALL_DAYS}


def fixed(v: float) -> dict[str, Any]:
    return {"dist": "fixed", "value": v}


def exponential(mean: float) -> dict[str, Any]:
    return {"dist": "exponential", "mean": mean}


def queue_scenario(
    servers: int,
    service: dict[str, Any],
    arrivals_per_day: float,
    horizon: float,
    warmup: float,
    seed: int = 1,
    name: str = "textbook_queue",
) -> dict[str, Any]:
    """The plant reduced to one queue: Poisson referrals, a 24/7 site that collects on referral with a
    zero-length session, zero inbound transit, FIFO queueing for ``servers`` suites, one open step of
    length ``service`` holding the suite, no operators, no line clearance, no failures, no dropout.

    The suite pool is then an M/G/c queue whose waiting time is ``batches.mfg_start - batches.ready``.
    The QC / QA / shipment tail runs with ample 24/7 staff; it happens after the suite is given back,
    so it cannot change the suite queue.
    """
    return {
        "name": name,
        "horizon_days": horizon,
        "warmup_days": warmup,
        "seed": seed,
        "demand": {"per_year": arrivals_per_day * 365.25, "dropout_per_day": 0.0, "infectious_fraction": 0.0},
        "sites": [
            {
                "name": "site",
                "apheresis_per_day": 1_000_000,
                "apheresis_duration": fixed(0.0),
                "inbound_transit": fixed(0.0),
                "outbound_transit": fixed(0.0),
                "infusion_slots_per_day": 1_000_000,
                "lymphodepletion": fixed(0.0),
                "calendar": "always",
            }
        ],
        "booking": {"mode": "collect_then_queue", "start_calendar": "always", "priority": "fifo", "max_attempts": 1},
        "calendars": {"always": ALWAYS},
        "resources": {
            "suites": servers,
            "operators": {"count": 0, "calendar": "always"},
            "qc_analysts": {"count": 1000, "calendar": "always"},
            "qa_reviewers": {"count": 1000, "calendar": "always"},
        },
        "products": {"cart": {"steps": [{"name": "process", "duration": service, "open": True, "uses": ["suite"]}]}},
        "qc": {"tests": [{"name": "endotoxin", "duration": fixed(0.0), "hands_on_hours": 0.0}]},
        "release": {"policy": "full", "qa_review_hours": 0.01, "qa_review_elapsed": fixed(0.0)},
        "gmp": {
            "line_clearance": fixed(0.0),
            "clearance_operators": 0,
            "starting_material": "cryopreserved",
            "shipper_hold_days": 1000,
            "shelf_life_days": 10000,
        },
    }


def build(data: dict[str, Any]) -> Scenario:
    sc, _ = scenario_from_dict(data)
    return sc


# ---------------------------------------------------------------------------------- queueing formulas
def erlang_c(servers: int, offered: float) -> float:
    """Probability that an arrival waits in M/M/c (Erlang C), offered load a = lambda / mu < c."""
    c, a = servers, offered
    if a >= c:
        raise ValueError("unstable: offered load >= servers")
    term = 1.0
    total = 1.0  # sum_{k<c} a^k / k!
    for k in range(1, c):
        term *= a / k
        total += term
    top = term * a / c * c / (c - a)  # a^c / c! * c / (c - a)
    return top / (total + top)


def mmc_wq(servers: int, lam: float, mean_service: float) -> float:
    """Mean wait in queue of M/M/c: Wq = C(c, a) / (c mu - lambda)."""
    mu = 1.0 / mean_service
    return erlang_c(servers, lam * mean_service) / (servers * mu - lam)


def md1_wq(lam: float, service: float) -> float:
    """Pollaczek-Khinchine for M/D/1: Wq = rho * D / (2 (1 - rho))."""
    rho = lam * service
    if rho >= 1:
        raise ValueError("unstable")
    return rho * service / (2.0 * (1.0 - rho))


def mg1_wq(lam: float, mean: float, second_moment: float) -> float:
    """Pollaczek-Khinchine for M/G/1: Wq = lambda E[S^2] / (2 (1 - rho))."""
    rho = lam * mean
    return lam * second_moment / (2.0 * (1.0 - rho))


def t_halfwidth(values: np.ndarray, level: float = 0.99) -> float:
    """Half-width of the two-sided Student-t confidence interval of the mean of independent values."""
    from scipy import stats

    n = len(values)
    return float(stats.t.ppf(0.5 + level / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
