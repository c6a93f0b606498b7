"""The one place where lars_jax adapts to older releases of its dependencies.

pyproject.toml allows jax >= 0.4.35 and Flax >= 0.10.4 (the `flax` extra). Where a newer
release offers something the package uses, the choice between it and the older way is
made here, once, at import time, and tested at both ends (`tests/test_compat.py`, run
by `.ci/run` at the newest versions and at `.ci/floors.txt`).
"""

from __future__ import annotations

import re
import sys
from typing import Any

import jax


def version(text: str) -> tuple[int, int, int]:
  """``'0.4.35'`` -> ``(0, 4, 35)``; suffixes such as ``.dev20250101`` or ``rc1`` are dropped."""
  parts = [int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3]]
  return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


JAX_VERSION = version(jax.__version__)

if JAX_VERSION >= (0, 5, 3):
  optimization_barrier = jax.lax.optimization_barrier
else:

  def optimization_barrier(operand: Any) -> Any:
    """`operand` itself: jax < 0.5.3 can neither differentiate nor vmap the barrier.

    The barrier only steers XLA's fusion decisions (see `transforms._norm_source`), never
    the numbers, so without it updates are bit for bit the same; the compiled step may
    keep a parameter-sized temporary, as the XLA of those jaxlib versions does anyway.
    """
    return operand


def nnx_variable_types() -> tuple[type, ...]:
  """The Flax NNX classes that wrap one parameter; ``()`` if flax.nnx was never imported.

  ``nnx.Variable``, and on Flax < 0.11 also ``nnx.VariableState``, which is what
  ``nnx.state(...)`` held there. Looked up in the module's own namespace: on Flax >= 0.12
  ``nnx.VariableState`` is a deprecated alias served with a warning.
  """
  nnx = sys.modules.get("flax.nnx")
  if nnx is None:
    return ()
  names = vars(nnx)
  return tuple(t for t in (names.get("Variable"), names.get("VariableState")) if isinstance(t, type))
