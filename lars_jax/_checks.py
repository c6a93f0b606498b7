"""Argument checks shared by the transforms, presets and configs. Only values known in
Python (numbers, NumPy scalars, concrete arrays) are checked: traced values (`jit`,
`optax.inject_hyperparams`) and schedules are never branched on."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lars_jax.masks import path_str


def concrete_float(value: Any) -> float | None:
  """Returns `value` as a Python float if it is a concrete scalar, else None."""
  if isinstance(value, (int, float, np.number)):
    return float(value)
  if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
    try:
      return float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
      return None
  return None


def is_zero_number(value: Any) -> bool:
  """Whether `value` is a Python number equal to 0 (a static "off" switch; an array
  or traced 0 is not, so `optax.inject_hyperparams` can change it)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def check_scalar(
  name: str, value: Any, *, upper: float | None = None, upper_inclusive: bool = False, fix: str = ""
) -> None:
  """Raises ValueError if a concrete scalar is not finite, ``>= 0`` and below `upper` (or
  at it, with `upper_inclusive`); schedules and traced values pass."""
  if value is None or callable(value):
    return
  if isinstance(value, (str, bytes)) or (hasattr(value, "shape") and np.ndim(value) != 0):
    raise TypeError(f"`{name}` must be a scalar number or a schedule, got {value!r}.")
  x = concrete_float(value)
  if x is None:
    return
  hint = f" {fix}" if fix else ""
  if not math.isfinite(x):
    raise ValueError(f"`{name}` must be finite, got {x}.{hint}")
  if x < 0:
    raise ValueError(f"`{name}` must be >= 0.0, got {x}.{hint}")
  if upper is not None and (x > upper or (x == upper and not upper_inclusive)):
    raise ValueError(f"`{name}` must be {'<=' if upper_inclusive else '<'} {upper}, got {x}.{hint}")


def check_momentum(name: str, value: Any) -> None:
  """A number (not a schedule) in [0, 1)."""
  check_numbers(**{name: value})
  check_scalar(name, value, upper=1.0, fix="Momentum must lie in [0, 1); 0.9 is the usual value.")


def check_learning_rate(value: Any) -> None:
  """The learning rate is required: None would skip the sign flip (an uphill step)."""
  if value is None:
    raise TypeError(
      "`learning_rate` is None; pass a non-negative number or an optax schedule "
      "(None would leave the update unscaled and unsigned: an uphill step)."
    )
  check_scalar("learning_rate", value, fix="Pass a non-negative number or an optax schedule.")


def check_bools(**flags: Any) -> None:
  for name, value in flags.items():
    if not isinstance(value, bool):
      raise TypeError(f"`{name}` must be a bool (True or False), got {value!r}.")


def check_numbers(**values: Any) -> None:
  """Raises TypeError for a schedule where the mimicked framework takes a constant."""
  for name, value in values.items():
    if callable(value):
      raise TypeError(
        f"`{name}` must be a number here, not a schedule (the framework this mimics takes a "
        "constant). Wrap the optimizer in `optax.inject_hyperparams` to change it in training."
      )


def accumulator_dtype(value: Any) -> jnp.dtype | None:
  """`value` as a floating/complex dtype (None stays None), or a TypeError naming it."""
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
    raise TypeError(
      f"`accumulator_dtype` must be a floating-point dtype such as jnp.float32 (or None "
      f"for the parameters' dtype), got {value!r}."
    )
  return dtype


def check_float_leaves(transform: str, tree: Any) -> None:
  """Raises TypeError naming the first leaf whose dtype is not floating/complex."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    dtype = getattr(leaf, "dtype", None)
    dtype = np.result_type(leaf) if dtype is None else dtype
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"{transform}: parameter {path_str(path)!r} has dtype {np.dtype(dtype).name}; LARS "
        "needs floating-point (or complex) parameters. Cast it to a float dtype, or keep it "
        "out of the optimizer (e.g. optax.multi_transform with optax.set_to_zero for it)."
      )
