"""Search-space parameters for tuning, as scenario files write them.

A parameter is a range (``low``/``high``, optionally ``log`` or ``step``), an ordered list of ``values`` or an
unordered set of ``choices``. Ordered values are suggested to the sampler as an index: batch sizes 1, 2, 4, ...
1024 then sit on an evenly spaced axis that TPE and GP can exploit, where a categorical parameter would hide that
32 lies between 16 and 64. This module never imports Optuna; ``hpload.scenarios.tuning`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

Scalar = int | float | str | bool


class ParamSpec(BaseModel):
    """One tuned setting: exactly one of ``low``+``high``, ``values`` (ordered) or ``choices`` (unordered)."""

    model_config = ConfigDict(extra="forbid")

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False  # sample the range on a log scale (batch sizes, token budgets)
    step: int | float | None = None
    values: list[Scalar] | None = None  # ordered: suggested as an index so samplers see the order
    choices: list[Scalar] | None = None  # unordered: a categorical parameter

    @model_validator(mode="after")
    def _one_form(self) -> ParamSpec:
        has_range = self.low is not None or self.high is not None
        forms = [has_range, self.values is not None, self.choices is not None]
        if sum(forms) != 1:
            raise ValueError("give exactly one of low+high, values or choices")
        if has_range:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high")
            if self.low > self.high:
                raise ValueError(f"low ({self.low}) is above high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("log=true needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("log=true and step cannot be combined")
        for name, items in (("values", self.values), ("choices", self.choices)):
            if items is not None and not items:
                raise ValueError(f"{name} must not be empty")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step) if v is not None)

    def grid(self) -> list[Scalar]:
        """Every value this parameter can take, for the grid sampler and for sweeps (ranges need a step or ints)."""
        if self.values is not None:
            return list(self.values)
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.is_int and not self.log:
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.is_int and self.log:
            # Powers of two inside the range, plus both ends: the usual grid for batch sizes.
            out = {int(self.low), int(self.high)}
            power = 1
            while power <= self.high:
                if power >= self.low:
                    out.add(power)
                power *= 2
            return sorted(out)
        if self.step is None:
            raise ValueError("a float range needs a step to form a grid")
        count = int(round((self.high - self.low) / self.step))
        return [self.low + i * self.step for i in range(count + 1)]

    def decode(self, raw: Any) -> Scalar:
        """The setting's value for what the sampler suggested (an index for ordered ``values``)."""
        if self.values is not None:
            return self.values[int(raw)]
        return raw  # type: ignore[no-any-return]

    def encode(self, value: Scalar) -> Scalar:
        """The sampler's parameter for a setting's value (used to enqueue the engine's defaults)."""
        if self.values is not None:
            return self.values.index(value)
        return value


def decode_params(space: dict[str, ParamSpec], raw: dict[str, Any]) -> dict[str, Scalar]:
    return {name: spec.decode(raw[name]) for name, spec in space.items() if name in raw}


def encode_params(space: dict[str, ParamSpec], values: dict[str, Scalar]) -> dict[str, Scalar]:
    return {name: space[name].encode(v) for name, v in values.items() if name in space}


def grid_size(space: dict[str, ParamSpec]) -> int:
    size = 1
    for spec in space.values():
        size *= len(spec.grid())
    return size


def ordered(values: Sequence[Scalar]) -> ParamSpec:
    return ParamSpec(values=list(values))
