"""Duration distributions (all in days) and reproducible random streams.

Every random source in the model (arrivals, each step's duration, each QC test, each transit leg ...)
draws from its own numpy ``Generator``, seeded from the run seed and the source's *name*. Two scenarios
that differ in one parameter therefore see the same patients and the same step durations for the same
draw index (common random numbers), which is what makes paired what-if comparisons sharp.
"""

from __future__ import annotations

import math
import zlib
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_BUFFER = 256


class _Dist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def mean(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


class _MeanDist(_Dist):
    """A distribution stated by its mean: the file says ``mean``, the field is ``mean_days`` (``mean()`` is the
    method every distribution has)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


class Fixed(_Dist):
    """A deterministic duration: validation traces and textbook M/D/1 checks need it."""

    dist: Literal["fixed"]
    value: float = Field(ge=0)

    def mean(self) -> float:
        return self.value

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value)


class Exponential(_MeanDist):
    """Memoryless durations: courier delays and the M/M/c checks against Erlang C."""

    dist: Literal["exponential"]
    mean_days: float = Field(gt=0, alias="mean")

    def mean(self) -> float:
        return self.mean_days

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean_days, n)


class Uniform(_Dist):
    dist: Literal["uniform"]
    low: float = Field(ge=0)
    high: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def mean(self) -> float:
        return (self.low + self.high) / 2

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)


class Triangular(_Dist):
    """Min / most likely / max: how process owners usually state a step time."""

    dist: Literal["triangular"]
    low: float = Field(ge=0)
    mode: float = Field(ge=0)
    high: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Triangular:
        if not (self.low <= self.mode <= self.high):
            raise ValueError(f"need low <= mode <= high, got {self.low}, {self.mode}, {self.high}")
        return self

    def mean(self) -> float:
        return (self.low + self.mode + self.high) / 3

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.low == self.high:
            return np.full(n, self.low)
        with np.errstate(all="ignore"):
            out = rng.triangular(self.low, self.mode, self.high, n)
        if not np.isfinite(out).all():  # numpy overflows for ranges near 1e308: draw on [0, 1] and scale
            c = (self.mode - self.low) / (self.high - self.low)
            out = self.low + (self.high - self.low) * rng.triangular(0.0, c, 1.0, n)
        return out


class Normal(_MeanDist):
    """Normal truncated at 0 (a duration is never negative); resampled, not clipped, so no mass at 0."""

    dist: Literal["normal"]
    mean_days: float = Field(ge=0, alias="mean")
    sd: float = Field(ge=0)

    def mean(self) -> float:
        # Mean of the normal truncated at zero (equals mean_days when the cut is negligible).
        if self.sd == 0:
            return self.mean_days
        a = -self.mean_days / self.sd
        phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
        tail = 0.5 * math.erfc(a / math.sqrt(2))
        return self.mean_days + self.sd * phi / tail

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.sd == 0:
            return np.full(n, self.mean_days)
        out = rng.normal(self.mean_days, self.sd, n)
        bad = out < 0
        while bad.any():
            out[bad] = rng.normal(self.mean_days, self.sd, int(bad.sum()))
            bad = out < 0
        return out


class LogNormal(_MeanDist):
    """Lognormal given by its own mean and sd (not the underlying normal's), as papers report it."""

    dist: Literal["lognormal"]
    mean_days: float = Field(gt=0, alias="mean")
    sd: float = Field(ge=0)

    @model_validator(mode="after")
    def _representable(self) -> LogNormal:
        try:
            math.log(1 + (self.sd / self.mean_days) ** 2)
        except OverflowError:
            raise ValueError(f"sd/mean = {self.sd / self.mean_days:.3g} is too large for a lognormal") from None
        return self

    def mean(self) -> float:
        return self.mean_days

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.sd == 0:
            return np.full(n, self.mean_days)
        sigma2 = math.log(1 + (self.sd / self.mean_days) ** 2)
        mu = math.log(self.mean_days) - sigma2 / 2
        return rng.lognormal(mu, math.sqrt(sigma2), n)


class Gamma(_Dist):
    dist: Literal["gamma"]
    shape: float = Field(gt=0)
    scale: float = Field(gt=0)

    def mean(self) -> float:
        return self.shape * self.scale

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.gamma(self.shape, self.scale, n)


class Empirical(_Dist):
    """Resample observed durations (e.g. a plant's own batch records) with equal weight."""

    dist: Literal["empirical"]
    values: list[Annotated[float, Field(ge=0)]] = Field(min_length=1)

    def mean(self) -> float:
        return float(np.mean(self.values))

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(np.asarray(self.values, dtype=float), n)


Distribution = Annotated[
    Fixed | Exponential | Uniform | Triangular | Normal | LogNormal | Gamma | Empirical,
    Field(discriminator="dist"),
]

DIST_NAMES = ("fixed", "exponential", "uniform", "triangular", "normal", "lognormal", "gamma", "empirical")


def fixed(value: float) -> Fixed:
    """Shorthand used by defaults and tests."""
    return Fixed(dist="fixed", value=value)


def stream_seed(run_seed: int, source: str) -> np.random.SeedSequence:
    """Seed of one named source: independent of which other sources a scenario happens to have."""
    return np.random.SeedSequence([int(run_seed) & 0xFFFFFFFFFFFFFFFF, zlib.crc32(source.encode())])


class Stream:
    """One named random source. Draws are buffered (numpy is slow one scalar at a time), which keeps the
    k-th draw of a source identical whatever the buffer size or the interleaving of other sources."""

    __slots__ = ("rng", "_buf", "_i", "_dist")

    def __init__(self, run_seed: int, source: str, dist: _Dist | None = None) -> None:
        self.rng = np.random.Generator(np.random.PCG64(stream_seed(run_seed, source)))
        self._dist = dist
        self._buf: list[float] = []
        self._i = 0

    def sample(self) -> float:
        """Next draw: a duration from the source's distribution, or U(0,1) for a source without one
        (Bernoulli events such as failures and dropout)."""
        if self._i >= len(self._buf):
            if self._dist is None:
                self._buf = self.rng.random(_BUFFER).tolist()
            else:
                self._buf = self._dist.draw(self.rng, _BUFFER).tolist()
            self._i = 0
        v = self._buf[self._i]
        self._i += 1
        return v


class Streams:
    """All sources of one run, created on first use by name."""

    def __init__(self, run_seed: int) -> None:
        self.run_seed = int(run_seed)
        self._streams: dict[str, Stream] = {}

    def get(self, source: str, dist: _Dist | None = None) -> Stream:
        s = self._streams.get(source)
        if s is None:
            s = Stream(self.run_seed, source, dist)
            self._streams[source] = s
        return s


def replication_seed(base_seed: int, replication: int) -> int:
    """Seed of replication r: the same r gives the same seed in every scenario (common random numbers)."""
    return int(np.random.SeedSequence([int(base_seed), int(replication)]).generate_state(1, np.uint64)[0] >> 1)
