"""The tests' side of running at both ends of the supported versions (issue 16).

`.ci/run` runs the suite at the newest releases and again at `.ci/floors.txt` (jax
0.4.35, optax 0.2.4, Flax 0.10.4, ...). The optimizers are the same at both ends; what
differs is the test helpers and references that lean on newer APIs. They go through
this module, so that an optimizer test runs (never skips) at the floors:

* `enable_x64(on)`: float64 for a block, through `jax.config` (jax < 0.8 has no
  `jax.enable_x64` context manager); the `x64` fixture in conftest.py wraps it.
* `optax_lars(...)`: `optax.lars` as optax >= 0.2.7 computes it, on older optax too.
* `tree_map_params`, `nnx_update`, `nnx_as_pure`, `nnx_value`, `NNX_LIST`: one name for
  an API that moved.

A test whose reference itself needs a newer library skips with a reason naming the
version (`pytest -rs` prints it; `.ci/run` passes it at the floors).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterator
from typing import Any

import jax
import optax

from lars_jax._compat import JAX_VERSION, version


def _installed(name: str) -> tuple[int, int, int] | None:
  try:
    return version(importlib.metadata.version(name))
  except importlib.metadata.PackageNotFoundError:
    return None


JAXLIB_VERSION = _installed("jaxlib")
OPTAX_VERSION = version(optax.__version__)
FLAX_VERSION = _installed("flax")
__all__ = ["JAX_VERSION", "JAXLIB_VERSION", "OPTAX_VERSION", "FLAX_VERSION"]


def versions_line() -> str:
  names = ("jax", "jaxlib", "optax", "numpy", "flax", "orbax-checkpoint", "chex", "pydantic")
  found = {n: _installed(n) for n in names}
  return "versions: " + ", ".join(
    f"{n} {'.'.join(map(str, v))}" for n, v in found.items() if v is not None
  )


@contextlib.contextmanager
def enable_x64(on: bool = True) -> Iterator[None]:
  """64-bit types inside the block (if `on`), the previous setting restored after it."""
  before = bool(jax.config.jax_enable_x64)
  jax.config.update("jax_enable_x64", bool(on))
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", before)


# optax >= 0.2.5: optax.tree.map_params; before, only optax.tree_map_params.
tree_map_params = getattr(getattr(optax, "tree", None), "map_params", None) or optax.tree_map_params


def optax_lars(
  learning_rate: Any,
  weight_decay: Any = 0.0,
  weight_decay_mask: Any = True,
  trust_coefficient: float = 0.001,
  eps: float = 0.0,
  trust_ratio_mask: Any = True,
  momentum: float = 0.9,
  nesterov: bool = False,
) -> optax.GradientTransformation:
  """`optax.lars` with optax >= 0.2.7's numbers, which lars_jax.lars reproduces.

  Two things changed in optax 0.2.7's `add_decayed_weights`: it accepts a schedule
  (0.2.6 took one but never advanced it; before, `schedule * w` is a TypeError), read at
  the count before the increment; and with ``weight_decay=0.0`` it returns the updates
  untouched instead of adding ``0 * w`` (NaN for an infinite w). On older optax both are
  rebuilt from optax's own pieces: the schedule through `optax.inject_hyperparams` (which
  also reads it at the count before incrementing), the zero decay as an all-False mask.
  The state's structure then differs from optax.lars's: compare updates, not states.
  """
  kwargs = dict(trust_coefficient=trust_coefficient, eps=eps, momentum=momentum, nesterov=nesterov)
  if OPTAX_VERSION >= (0, 2, 7):
    return optax.lars(
      learning_rate, weight_decay, weight_decay_mask, **kwargs, trust_ratio_mask=trust_ratio_mask
    )
  if not callable(weight_decay):
    if isinstance(weight_decay, (int, float)) and weight_decay == 0.0:
      weight_decay_mask = False
    return optax.lars(
      learning_rate, weight_decay, weight_decay_mask, **kwargs, trust_ratio_mask=trust_ratio_mask
    )
  decay = optax.inject_hyperparams(optax.add_decayed_weights, static_args=("mask",))
  return optax.chain(
    decay(weight_decay=weight_decay, mask=weight_decay_mask),
    optax.masked(
      optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps), trust_ratio_mask
    ),
    optax.scale_by_learning_rate(learning_rate),
    optax.trace(decay=momentum, nesterov=nesterov),
  )


OPTAX_LARS_SCHEDULED_DECAY = (
  "optax.lars takes a schedule as weight_decay from optax 0.2.7 (0.2.6's never advances), "
  f"this is optax {'.'.join(map(str, OPTAX_VERSION))}: no such optax.lars state exists here"
)


# Flax NNX: Optimizer.update(model, grads) from Flax 0.11 (before: update(grads));
# nnx.as_pure and nnx.List from 0.12; states held nnx.VariableState before 0.11, whose
# array is `.value` (from 0.12 `variable[...]`, `.value` deprecated).
def nnx_update(optimizer: Any, model: Any, grads: Any) -> None:
  if FLAX_VERSION is not None and FLAX_VERSION >= (0, 11, 0):
    optimizer.update(model, grads)
  else:
    optimizer.update(grads)


def _variable_state() -> type | None:
  from flax import nnx

  return vars(nnx).get("VariableState")


def nnx_value(variable: Any) -> Any:
  old = _variable_state()
  return variable.value if old is not None and isinstance(variable, old) else variable[...]


def nnx_as_pure(state: Any) -> Any:
  from flax import nnx

  if hasattr(nnx, "as_pure"):
    return nnx.as_pure(state)
  old = _variable_state()
  return jax.tree.map(nnx_value, state, is_leaf=lambda x: isinstance(x, old))


def nnx_list(items: list[Any]) -> Any:
  from flax import nnx

  return nnx.List(items) if hasattr(nnx, "List") else list(items)


FLAX_NNX_OPTIMIZER = (
  "the README's NNX code calls nnx.Optimizer.update(model, grads), Flax >= 0.11's API; "
  f"this is Flax {'.'.join(map(str, FLAX_VERSION or ()))}"
)
