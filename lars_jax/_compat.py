"""The one place where lars_jax adapts to older releases of its dependencies (jax >= 0.4.35,
Flax >= 0.10.4): each choice is made here, once, at import time, and tested at both ends
(`tests/test_compat.py`, run by `.ci/run` at the newest versions and at `.ci/floors.txt`)."""

from __future__ import annotations

import re
import sys
from typing import Any

import jax
import optax


def version(text: str) -> tuple[int, int, int]:
  """``'0.4.35'`` -> ``(0, 4, 35)``; suffixes such as ``.dev20250101`` or ``rc1`` are dropped."""
  parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3]]
  return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


JAX_VERSION = version(jax.__version__)
OPTAX_VERSION = version(optax.__version__)

if JAX_VERSION >= (0, 5, 3):
  optimization_barrier = jax.lax.optimization_barrier
else:

  def optimization_barrier(operand: Any) -> Any:
    """`operand` itself: jax < 0.5.3 can neither differentiate nor vmap the barrier, which
    only steers XLA's fusion (`transforms._norm_source`), never the numbers."""
    return operand


def nnx_variable_types() -> tuple[type, ...]:
  """The Flax NNX classes that wrap one parameter (``nnx.Variable``, and on Flax < 0.11
  ``nnx.VariableState``); ``()`` if flax.nnx was never imported. Read from the module's
  namespace: on Flax >= 0.12 ``nnx.VariableState`` is an alias that warns."""
  nnx = sys.modules.get("flax.nnx")
  if nnx is None:
    return ()
  names = vars(nnx)
  return tuple(
    t for t in (names.get("Variable"), names.get("VariableState")) if isinstance(t, type)
  )


def check_decay_schedule(kind: str, schedule: Any) -> None:
  """Raises if `OptimizerConfig` would hand an optax kind a weight-decay schedule: optax
  applies one from 0.2.7 (0.2.6 never advances it; 0.2.4-0.2.5 fail at the first update)."""
  if schedule is None or OPTAX_VERSION >= (0, 2, 7) or kind in ("lars", "tf_lars", "torch_lars"):
    return
  raise ValueError(
    f"weight_decay_schedule with kind {kind!r}: optax applies a weight-decay schedule from "
    f"optax 0.2.7, and this is optax {optax.__version__}. Upgrade optax "
    "(pip install 'optax>=0.2.7'), or use a LARS kind ('lars', 'tf_lars', 'torch_lars')."
  )


def nnx_values(tree: Any) -> Any:
  """`tree` with each NNX Variable replaced by its array (``get_value()`` from Flax 0.12,
  where ``.value`` is deprecated; ``.value`` before)."""
  types = nnx_variable_types()
  if not types:
    return tree

  def value(x: Any) -> Any:
    if not isinstance(x, types):
      return x
    return x.get_value() if hasattr(type(x), "get_value") else x.value

  return jax.tree.map(value, tree, is_leaf=lambda x: isinstance(x, types))
