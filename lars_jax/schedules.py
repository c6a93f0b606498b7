r"""Learning-rate and weight-decay schedules, as functions and as YAML-able configs.

Every schedule here is an optax schedule: a function of the step count ``c = 0, 1, ...``
(the count *before* the update, so the first update reads ``schedule(0)``) that returns
a float32 scalar. Each has an optional linear warm-up from 0:

.. math::

  \gamma(c) = \gamma_0 \, c / W \quad (c < W), \qquad \text{then the schedule's own shape.}

The config classes (`ConstantSchedule`, `WarmupCosineSchedule`,
`WarmupPolynomialSchedule`, `PiecewiseSchedule`) are the ``schedule`` and
``weight_decay_schedule`` fields of `lars_jax.OptimizerConfig`. They hold the *shape*;
the peak value :math:`\gamma_0` is the config's ``lr`` (or ``weight_decay``), passed
to ``build(base_value)``. ``end_value`` is absolute, in the units of that base.

Example:
  >>> from lars_jax import schedules
  >>> s = schedules.WarmupPolynomialSchedule(warmup_steps=2, total_steps=6, end_value=0.0)
  >>> lr = s.build(10.0)
  >>> [round(float(lr(c)), 3) for c in range(8)]
  [0.0, 5.0, 10.0, 6.4, 3.6, 1.6, 0.4, 0.0]
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import jax.numpy as jnp
import optax
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
  "warmup_polynomial_decay",
  "warmup_piecewise_constant",
  "ConstantSchedule",
  "WarmupCosineSchedule",
  "WarmupPolynomialSchedule",
  "PiecewiseSchedule",
  "Schedule",
]

_Steps = Annotated[int, Field(ge=0, strict=True)]
_PositiveSteps = Annotated[int, Field(gt=0, strict=True)]
_NonNeg = Annotated[float, Field(ge=0.0, strict=True, allow_inf_nan=False)]
_Positive = Annotated[float, Field(gt=0.0, strict=True, allow_inf_nan=False)]


def _check_steps(name: str, value: int, *, positive: bool = False) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
    kind = "positive" if positive else "non-negative"
    raise ValueError(f"`{name}` must be a {kind} int (a number of steps), got {value!r}.")


def _check_value(name: str, value: float) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"`{name}` must be a number, got {value!r}.")
  if not math.isfinite(value) or value < 0:
    raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")


def _with_warmup(peak: float, warmup_steps: int, after: optax.Schedule) -> optax.Schedule:
  if warmup_steps == 0:
    return after

  def schedule(count):
    c = jnp.asarray(count, jnp.float32)
    return jnp.where(c < warmup_steps, peak * c / warmup_steps, after(count))

  return schedule


def warmup_polynomial_decay(
  peak_value: float,
  warmup_steps: int,
  total_steps: int,
  end_value: float = 1e-4,
  power: float = 2.0,
) -> optax.Schedule:
  r"""The MLPerf LARS schedule: linear warm-up, then polynomial decay to `end_value`.

  With :math:`W` warm-up steps, :math:`T` total steps and :math:`D = T - W + 1`
  (MLPerf's ``decay_steps = train_steps - warmup_steps + 1``):

  .. math::

    \gamma(c) = \begin{cases}
      \gamma_0\, c / W & c \le W \\
      \gamma_e + (\gamma_0 - \gamma_e)\,(1 - \min(c - W, D) / D)^p & c > W
    \end{cases}

  so the peak :math:`\gamma_0` is reached at :math:`c = W` and the rate never quite
  reaches :math:`\gamma_e` within :math:`T` steps. ``warmup_steps=0`` starts at the peak.

  Args:
    peak_value: :math:`\gamma_0 \ge 0`.
    warmup_steps: :math:`W \ge 0`.
    total_steps: :math:`T > W`, the number of training steps.
    end_value: :math:`\gamma_e \ge 0` (MLPerf ResNet-50: 1e-4).
    power: :math:`p > 0` (MLPerf: 2).

  Returns:
    An optax schedule.

  Examples:
    >>> from lars_jax.schedules import warmup_polynomial_decay
    >>> lr = warmup_polynomial_decay(4.0, warmup_steps=2, total_steps=5, end_value=0.0)
    >>> [round(float(lr(c)), 3) for c in range(7)]
    [0.0, 2.0, 4.0, 2.25, 1.0, 0.25, 0.0]
  """
  _check_value("peak_value", peak_value)
  _check_value("end_value", end_value)
  _check_steps("warmup_steps", warmup_steps)
  _check_steps("total_steps", total_steps, positive=True)
  if total_steps <= warmup_steps:
    raise ValueError(f"`total_steps` ({total_steps}) must exceed `warmup_steps` ({warmup_steps}).")
  if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
    raise ValueError(f"`power` must be a number > 0 (MLPerf uses 2), got {power!r}.")
  decay_steps = total_steps - warmup_steps + 1

  def schedule(count):
    c = jnp.asarray(count, jnp.float32)
    frac = 1.0 - jnp.minimum(c - warmup_steps, decay_steps) / decay_steps
    decayed = end_value + (peak_value - end_value) * jnp.maximum(frac, 0.0) ** power
    if warmup_steps == 0:
      return decayed
    return jnp.where(c <= warmup_steps, peak_value * c / warmup_steps, decayed)

  return schedule


def warmup_piecewise_constant(
  base_value: float,
  boundaries: tuple[int, ...] | list[int],
  factors: tuple[float, ...] | list[float],
  warmup_steps: int = 0,
) -> optax.Schedule:
  r"""Step decay: ``base_value * factors[i]`` once the count reaches ``boundaries[i]``.

  .. math::

    \gamma(c) = \gamma_0 \, f_k, \quad k = \#\{i : c \ge b_i\}, \quad f_0 = 1

  after a linear warm-up :math:`\gamma_0 c / W` for :math:`c < W`. The factors are
  relative to `base_value`, not to the previous piece (``[0.1, 0.01]``, not
  ``[0.1, 0.1]``).

  Args:
    base_value: :math:`\gamma_0 \ge 0`.
    boundaries: strictly increasing step counts, each greater than `warmup_steps`.
    factors: one factor :math:`\ge 0` per boundary.
    warmup_steps: :math:`W \ge 0`.

  Returns:
    An optax schedule.

  Examples:
    >>> from lars_jax.schedules import warmup_piecewise_constant
    >>> lr = warmup_piecewise_constant(1.0, [3, 5], [0.1, 0.01], warmup_steps=2)
    >>> [round(float(lr(c)), 3) for c in range(7)]
    [0.0, 0.5, 1.0, 0.1, 0.1, 0.01, 0.01]
  """
  _check_value("base_value", base_value)
  _check_steps("warmup_steps", warmup_steps)
  boundaries, factors = tuple(boundaries), tuple(factors)
  if len(boundaries) != len(factors):
    raise ValueError(
      f"`boundaries` ({len(boundaries)}) and `factors` ({len(factors)}) must have the "
      "same length: one factor per boundary."
    )
  for i, b in enumerate(boundaries):
    _check_steps(f"boundaries[{i}]", b, positive=True)
    if b <= warmup_steps:
      raise ValueError(
        f"`boundaries[{i}]` ({b}) must be greater than `warmup_steps` ({warmup_steps})."
      )
    if i and b <= boundaries[i - 1]:
      raise ValueError(f"`boundaries` must be strictly increasing, got {list(boundaries)}.")
  for i, f in enumerate(factors):
    _check_value(f"factors[{i}]", f)
  values = jnp.asarray((1.0, *factors), jnp.float32) * base_value
  bounds = jnp.asarray(boundaries, jnp.int32)

  def after(count):
    k = jnp.sum(jnp.asarray(count) >= bounds)
    return values[k]

  return _with_warmup(base_value, warmup_steps, after)


# ----------------------------------------------------------------------------
# Configs (pydantic): the `schedule` / `weight_decay_schedule` of OptimizerConfig.


class _ScheduleConfig(BaseModel):
  model_config = ConfigDict(extra="forbid", frozen=True)

  # Each subclass declares `kind` then `warmup_steps` (linear warm-up from 0 to the
  # base value over that many steps), so that YAML shows `kind` first.

  def build(self, base_value: float) -> optax.Schedule | float:
    """Returns the schedule (a Python float for a constant without warm-up)."""
    raise NotImplementedError


class ConstantSchedule(_ScheduleConfig):
  """The base value, after an optional linear warm-up."""

  kind: Literal["constant"] = "constant"
  warmup_steps: _Steps = 0

  def build(self, base_value: float) -> optax.Schedule | float:
    if self.warmup_steps == 0:
      return float(base_value)
    return _with_warmup(
      base_value, self.warmup_steps, lambda c: jnp.asarray(base_value, jnp.float32)
    )


class WarmupCosineSchedule(_ScheduleConfig):
  r"""Warm-up, then cosine decay to `end_value` at `total_steps` (then constant).

  :math:`\gamma_e + (\gamma_0 - \gamma_e)(1 + \cos(\pi t)) / 2` with
  :math:`t = \min(c - W, T - W) / (T - W)`: `optax.warmup_cosine_decay_schedule`
  with ``init_value=0`` and ``decay_steps=total_steps`` (which includes the warm-up).
  """

  kind: Literal["warmup_cosine"] = "warmup_cosine"
  warmup_steps: _Steps = 0
  total_steps: _PositiveSteps
  end_value: _NonNeg = 0.0

  @model_validator(mode="after")
  def _check(self) -> WarmupCosineSchedule:
    if self.total_steps <= self.warmup_steps:
      raise ValueError(
        f"total_steps ({self.total_steps}) must exceed warmup_steps ({self.warmup_steps})."
      )
    return self

  def build(self, base_value: float) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=base_value,
      warmup_steps=self.warmup_steps,
      decay_steps=self.total_steps,
      end_value=self.end_value,
    )


class WarmupPolynomialSchedule(_ScheduleConfig):
  """Warm-up, then polynomial decay as in the MLPerf LARS recipes
  (see `warmup_polynomial_decay`)."""

  kind: Literal["warmup_polynomial"] = "warmup_polynomial"
  warmup_steps: _Steps = 0
  total_steps: _PositiveSteps
  end_value: _NonNeg = 1e-4
  power: _Positive = 2.0

  @model_validator(mode="after")
  def _check(self) -> WarmupPolynomialSchedule:
    if self.total_steps <= self.warmup_steps:
      raise ValueError(
        f"total_steps ({self.total_steps}) must exceed warmup_steps ({self.warmup_steps})."
      )
    return self

  def build(self, base_value: float) -> optax.Schedule:
    return warmup_polynomial_decay(
      base_value, self.warmup_steps, self.total_steps, self.end_value, self.power
    )


class PiecewiseSchedule(_ScheduleConfig):
  """Warm-up, then step decay by factors of the base value
  (see `warmup_piecewise_constant`)."""

  kind: Literal["piecewise"] = "piecewise"
  warmup_steps: _Steps = 0
  boundaries: tuple[_PositiveSteps, ...]
  factors: tuple[_NonNeg, ...]

  @model_validator(mode="after")
  def _check(self) -> PiecewiseSchedule:
    # Same checks (and messages) as the function.
    warmup_piecewise_constant(1.0, self.boundaries, self.factors, self.warmup_steps)
    return self

  def build(self, base_value: float) -> optax.Schedule:
    return warmup_piecewise_constant(base_value, self.boundaries, self.factors, self.warmup_steps)


Schedule = Annotated[
  ConstantSchedule | WarmupCosineSchedule | WarmupPolynomialSchedule | PiecewiseSchedule,
  Field(discriminator="kind"),
]
"""Any schedule config, chosen by its ``kind`` field in YAML."""
