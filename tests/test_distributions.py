"""Each distribution matches its stated mean within sampling error; streams are reproducible by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from celltx_mfg.distributions import Distribution, Stream, Streams, replication_seed

SPECS = [
    {"dist": "fixed", "value": 2.5},
    {"dist": "exponential", "mean": 3.0},
    {"dist": "uniform", "low": 1.0, "high": 5.0},
    {"dist": "triangular", "low": 7.0, "mode": 8.0, "high": 10.5},
    {"dist": "normal", "mean": 4.0, "sd": 1.0},
    {"dist": "normal", "mean": 0.5, "sd": 1.0},  # heavily truncated at 0: mean is the truncated one
    {"dist": "lognormal", "mean": 1.0, "sd": 0.25},
    {"dist": "gamma", "shape": 2.0, "scale": 1.5},
    {"dist": "empirical", "values": [1.0, 2.0, 2.0, 7.0]},
]
ADAPTER = TypeAdapter(Distribution)
N = 40_000


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s["dist"] + str(s.get("mean", "")))
def test_mean_within_sampling_error(spec: dict) -> None:
    d = ADAPTER.validate_python(spec)
    s = Stream(12345, "test", d)
    x = np.array([s.sample() for _ in range(N)])
    assert (x >= 0).all(), "a duration is never negative"
    se = x.std(ddof=1) / math.sqrt(N)
    tol = max(4.5 * se, 1e-12)
    assert abs(x.mean() - d.mean()) <= tol, (spec, x.mean(), d.mean(), tol)


def test_lognormal_sd_is_the_stated_one() -> None:
    d = ADAPTER.validate_python({"dist": "lognormal", "mean": 2.0, "sd": 0.5})
    x = d.draw(np.random.default_rng(1), N)
    assert abs(x.std() - 0.5) < 0.02


@pytest.mark.parametrize(
    "bad",
    [
        {"dist": "fixed", "value": -1},
        {"dist": "exponential", "mean": 0},
        {"dist": "uniform", "low": 3, "high": 1},
        {"dist": "triangular", "low": 1, "mode": 5, "high": 2},
        {"dist": "weibull", "shape": 1},
        {"dist": "empirical", "values": []},
        {"dist": "fixed", "value": 1, "sd": 2},
    ],
)
def test_bad_specs_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        ADAPTER.validate_python(bad)


def test_named_streams_are_independent_of_other_sources() -> None:
    """Common random numbers: the k-th draw of a source does not depend on which other sources exist."""
    d = ADAPTER.validate_python({"dist": "exponential", "mean": 1.0})
    a = Streams(7)
    first = [a.get("step:x", d).sample() for _ in range(300)]
    b = Streams(7)
    for _ in range(50):
        b.get("other", d).sample()
    second = [b.get("step:x", d).sample() for _ in range(300)]
    assert first == second
    c = Streams(8)
    assert [c.get("step:x", d).sample() for _ in range(300)] != first


def test_replication_seeds_distinct_and_stable() -> None:
    seeds = [replication_seed(1, r) for r in range(100)]
    assert len(set(seeds)) == 100
    assert seeds == [replication_seed(1, r) for r in range(100)]
    assert replication_seed(2, 0) != replication_seed(1, 0)
