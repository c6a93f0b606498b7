"""MLPerf-style learning-rate schedules, built from optax schedules: functions of the step
count ``c = 0, 1, ...`` (the first update reads ``schedule(0)``), with an optional linear
warm-up from 0 joined by `optax.join_schedules`. Their YAML configs are in `lars_jax.config`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import optax

from lars_jax import _checks

__all__ = ["warmup_polynomial_decay", "warmup_piecewise_constant"]


def _check_steps(
  name: str, value: float, *, positive: bool = False, fractional: bool = False
) -> None:
  kinds = (int, float) if fractional else int
  ok = not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)
  if not ok or value < (1 if positive else 0):
    kind = ("positive" if positive else "non-negative") + (" number" if fractional else " int")
    raise ValueError(f"`{name}` must be a {kind} (a number of steps), got {value!r}.")


def _check_value(name: str, value: float) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise TypeError(f"`{name}` must be a number, got {value!r}.")
  _checks.check_scalar(name, value)  # finite and >= 0


def _warmup_then(
  peak: float, warmup_steps: int, schedules: Sequence[optax.Schedule], boundaries: Sequence[int]
) -> optax.Schedule:
  """`schedules` joined at `boundaries`, after a linear warm-up from 0 to `peak`."""
  if warmup_steps:
    schedules = [optax.linear_schedule(0.0, peak, warmup_steps), *schedules]
    boundaries = [warmup_steps, *boundaries]
  return optax.join_schedules(schedules, boundaries)


def warmup_polynomial_decay(
  peak_value: float,
  warmup_steps: float,
  total_steps: float,
  end_value: float = 1e-4,
  power: float = 2.0,
) -> optax.Schedule:
  r"""The MLPerf LARS schedule: linear warm-up, then polynomial decay to `end_value`.

  With :math:`W` warm-up steps, :math:`T` total steps and MLPerf's :math:`D = T - W + 1`:

  .. math::

    \gamma(c) = \begin{cases}
      \gamma_0\, c / W & c < W \\
      \gamma_e + (\gamma_0 - \gamma_e)\,(1 - \min(c - W, D) / D)^p & c \ge W
    \end{cases}

  and the constant :math:`\gamma_e` from :math:`c = W + D` on (a fractional power stays
  finite under `jit`).

  Args:
    peak_value: :math:`\gamma_0 \ge 0`.
    warmup_steps: :math:`W \ge 0`; may be fractional (MLPerf: 18 epochs of 39.25 steps).
    total_steps: :math:`T > W` (may be fractional).
    end_value: :math:`\gamma_e \ge 0` (MLPerf ResNet-50: 1e-4).
    power: :math:`p > 0` (MLPerf: 2).

  Examples:
    >>> from lars_jax.schedules import warmup_polynomial_decay
    >>> lr = warmup_polynomial_decay(4.0, warmup_steps=2, total_steps=5, end_value=0.0)
    >>> [round(float(lr(c)), 3) for c in range(7)]
    [0.0, 2.0, 4.0, 2.25, 1.0, 0.25, 0.0]
  """
  _check_value("peak_value", peak_value)
  _check_value("end_value", end_value)
  _check_steps("warmup_steps", warmup_steps, fractional=True)
  _check_steps("total_steps", total_steps, positive=True, fractional=True)
  if total_steps <= warmup_steps:
    raise ValueError(f"`total_steps` ({total_steps}) must exceed `warmup_steps` ({warmup_steps}).")
  if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
    raise ValueError(f"`power` must be a number > 0 (MLPerf uses 2), got {power!r}.")
  decay_steps = total_steps - warmup_steps + 1
  decay = optax.polynomial_schedule(peak_value, end_value, power, decay_steps)
  # After the decay, the constant end value: under jit, XLA may round optax's
  # 1 - count / decay_steps to -1e-8 there, and a fractional power of it is NaN.
  end = optax.constant_schedule(end_value)
  return _warmup_then(peak_value, warmup_steps, [decay, end], [warmup_steps + decay_steps])


def warmup_piecewise_constant(
  base_value: float, boundaries: Sequence[int], factors: Sequence[float], warmup_steps: int = 0
) -> optax.Schedule:
  r"""Step decay: ``base_value * factors[i]`` once the count reaches ``boundaries[i]``.

  .. math::

    \gamma(c) = \gamma_0 \, f_k, \quad k = \#\{i : c \ge b_i\}, \quad f_0 = 1

  after a linear warm-up :math:`\gamma_0 c / W` for :math:`c < W`. The factors are
  relative to `base_value`, unlike `optax.piecewise_constant_schedule`'s.

  Args:
    base_value: :math:`\gamma_0 \ge 0`.
    boundaries: strictly increasing step counts, each greater than `warmup_steps`.
    factors: one factor :math:`\ge 0` per boundary.
    warmup_steps: :math:`W \ge 0`.

  Examples:
    >>> from lars_jax.schedules import warmup_piecewise_constant
    >>> lr = warmup_piecewise_constant(1.0, [3, 5], [0.1, 0.01], warmup_steps=2)
    >>> [round(float(lr(c)), 3) for c in range(7)]
    [0.0, 0.5, 1.0, 0.1, 0.1, 0.01, 0.01]
  """
  _check_value("base_value", base_value)
  _check_steps("warmup_steps", warmup_steps)
  boundaries, factors = list(boundaries), list(factors)
  if len(boundaries) != len(factors):
    raise ValueError(
      f"`boundaries` ({len(boundaries)}) and `factors` ({len(factors)}) must have the "
      "same length: one factor per boundary."
    )
  for i, (b, f) in enumerate(zip(boundaries, factors)):
    _check_steps(f"boundaries[{i}]", b, positive=True)
    if b <= warmup_steps:
      raise ValueError(
        f"`boundaries[{i}]` ({b}) must be greater than `warmup_steps` ({warmup_steps})."
      )
    if i and b <= boundaries[i - 1]:
      raise ValueError(f"`boundaries` must be strictly increasing, got {boundaries}.")
    _check_value(f"factors[{i}]", f)
  pieces = [optax.constant_schedule(base_value * f) for f in (1.0, *factors)]
  return _warmup_then(base_value, warmup_steps, pieces, boundaries)
