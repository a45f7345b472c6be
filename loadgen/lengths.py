"""Length distributions for synthetic prompts and outputs, and a summary of the lengths a run really used.

A ``[workload.input_dist]`` (or ``output_dist``) table picks one: fixed, uniform, normal, lognormal (``mean`` and
``std`` of the lengths themselves, not of their logarithm, so the table reads in tokens), or empirical (lengths drawn
with replacement from a file of one integer per line). Every draw is rounded and clipped to ``[min, max]``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpload.errors import HploadError


class LengthDist(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["fixed", "uniform", "normal", "lognormal", "empirical"] = "fixed"
    mean: float = Field(default=128.0, gt=0)
    """fixed: the length; uniform: the middle of ``[min, max]`` when those are not set; normal/lognormal: the mean."""
    std: float = Field(default=0.0, ge=0)
    min: int = Field(default=1, ge=1)
    max: int | None = Field(default=None, ge=1)
    path: str | None = None
    """empirical: a text file with one length per line (``#`` comments and blank lines skipped)."""

    @model_validator(mode="after")
    def _check(self) -> LengthDist:
        if self.kind == "empirical" and not self.path:
            raise ValueError("path: kind = 'empirical' needs a file of lengths; fix: set path")
        if self.kind == "uniform" and self.max is None:
            raise ValueError("max: kind = 'uniform' draws from [min, max]; fix: set max")
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max: {self.max} is below min {self.min}; fix: raise max")
        return self

    def describe(self) -> str:
        """One short phrase for the console and the TUI, e.g. ``lognormal(mean 512, std 200, 1..2048)``."""
        bounds = f", {self.min}..{self.max}" if self.max is not None else ""
        if self.kind == "empirical":
            return f"empirical({Path(self.path or '').name})"
        if self.kind == "fixed":
            return f"{self.mean:g}"
        if self.kind == "uniform":
            return f"uniform({self.min}..{self.max})"
        return f"{self.kind}(mean {self.mean:g}, std {self.std:g}{bounds})"

    def draw(self, rng: random.Random, n: int, where: str = "workload") -> list[int]:
        if self.kind == "empirical":
            pool = read_lengths(self.path or "", where)
            raw = [float(rng.choice(pool)) for _ in range(n)]
        elif self.kind == "fixed":
            raw = [self.mean] * n
        elif self.kind == "uniform":
            assert self.max is not None
            return [rng.randint(self.min, self.max) for _ in range(n)]
        elif self.kind == "normal":
            raw = [rng.gauss(self.mean, self.std) for _ in range(n)]
        else:
            # Lognormal parameters from the mean and std of the lengths: sigma^2 = ln(1 + (std/mean)^2).
            sigma2 = math.log1p((self.std / self.mean) ** 2)
            mu = math.log(self.mean) - sigma2 / 2
            raw = [rng.lognormvariate(mu, math.sqrt(sigma2)) for _ in range(n)]
        hi = self.max if self.max is not None else 2**31
        return [min(hi, max(self.min, round(x))) for x in raw]


def read_lengths(path: str, where: str) -> list[int]:
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as err:
        raise HploadError(f"{where}.path: cannot read {p} ({err.strerror}); fix: give an existing file") from err
    out = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            value = int(float(text))
        except ValueError:
            msg = f"{where}.path: {p} line {n}: '{text[:40]}' is not a length; fix: one integer per line"
            raise HploadError(msg) from None
        if value < 1:
            raise HploadError(f"{where}.path: {p} line {n}: length {value} < 1; fix: positive lengths only")
        out.append(value)
    if not out:
        raise HploadError(f"{where}.path: {p} holds no lengths; fix: one integer per line")
    return out


def summarize(values: list[int], bins: int = 20) -> dict[str, Any]:
    """The realised distribution: moments, percentiles and an equal-width histogram (``edges`` has bins + 1)."""
    if not values:
        return {"count": 0}
    xs = sorted(values)
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / n)

    def pct(q: float) -> int:
        return xs[min(n - 1, int(q / 100 * n))]

    lo, hi = xs[0], xs[-1]
    width = max(1.0, (hi - lo) / bins)
    nb = max(1, min(bins, math.ceil((hi - lo + 1) / width)))
    counts = [0] * nb
    for x in xs:
        counts[min(nb - 1, int((x - lo) / width))] += 1
    return {
        "count": n, "mean": mean, "std": std, "min": lo, "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": hi,
        "edges": [lo + i * width for i in range(nb + 1)], "counts": counts,
    }  # fmt: skip
