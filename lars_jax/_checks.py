"""Argument checks shared by the transforms, presets and configs.

Checks only run on values that are known in Python (numbers, NumPy scalars, concrete
arrays). Traced values (inside `jit`, `optax.inject_hyperparams`) and schedules are never
branched on.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lars_jax.masks import path_str


def concrete_float(value: Any) -> float | None:
  """Returns `value` as a Python float if it is a concrete scalar, else None."""
  if isinstance(value, bool):
    return float(value)
  if isinstance(value, (int, float, np.number)):
    return float(value)
  if isinstance(value, jax.core.Tracer) or callable(value):
    return None
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
  name: str,
  value: Any,
  *,
  lower: float | None = 0.0,
  lower_inclusive: bool = True,
  upper: float | None = None,
  upper_inclusive: bool = False,
  fix: str = "",
) -> None:
  """Raises ValueError if a concrete scalar hyperparameter is out of range.

  Schedules (callables) and traced values pass unchecked.
  """
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
  if lower is not None and (x < lower or (x == lower and not lower_inclusive)):
    op = ">=" if lower_inclusive else ">"
    raise ValueError(f"`{name}` must be {op} {lower}, got {x}.{hint}")
  if upper is not None and (x > upper or (x == upper and not upper_inclusive)):
    op = "<=" if upper_inclusive else "<"
    raise ValueError(f"`{name}` must be {op} {upper}, got {x}.{hint}")


def check_momentum(name: str, value: Any) -> None:
  check_scalar(
    name,
    value,
    lower=0.0,
    upper=1.0,
    fix="Momentum must lie in [0, 1); 0.9 is the usual value.",
  )


def check_learning_rate(value: Any) -> None:
  """The learning rate is required: None would skip the sign flip (an uphill step)."""
  if value is None:
    raise TypeError(
      "`learning_rate` is None; pass a non-negative number or an optax schedule "
      "(None would leave the update unscaled and unsigned: an uphill step)."
    )
  check_scalar("learning_rate", value, fix="Pass a non-negative number or an optax schedule.")


def check_bool(name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise TypeError(f"`{name}` must be a bool (True or False), got {value!r}.")


def check_not_schedule(name: str, value: Any) -> None:
  if callable(value):
    raise TypeError(
      f"`{name}` must be a number here, not a schedule (the framework this mimics "
      "takes a constant). Wrap the optimizer in `optax.inject_hyperparams` to change "
      "it during training."
    )


def check_one_clipnorm(clipnorm: Any, global_clipnorm: Any) -> None:
  """Keras' rule: `clipnorm` and `global_clipnorm` exclude each other."""
  if clipnorm is not None and global_clipnorm is not None:
    raise ValueError(
      "`clipnorm` and `global_clipnorm` cannot both be set (Keras rejects this too): "
      "pass one of them."
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
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  for path, leaf in leaves:
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      dtype = np.result_type(leaf)
    if not jnp.issubdtype(dtype, jnp.inexact):
      raise TypeError(
        f"{transform}: parameter {path_str(path)!r} has dtype "
        f"{np.dtype(dtype).name}; LARS needs floating-point (or complex) "
        "parameters. Cast it to a float dtype, or keep it out of the optimizer "
        "(e.g. optax.partition with optax.set_to_zero for that leaf)."
      )


def no_params_error(transform: str) -> ValueError:
  return ValueError(
    f"{transform} needs the current parameters: call `tx.update(updates, state, params)`."
  )
