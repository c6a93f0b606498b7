"""Optimizer-state shardings from parameter shardings, for jit, shard_map and orbax
(README: Training on pods)."""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec
from optax import GradientTransformation, Params

from lars_jax import masks as masks_lib

__all__ = ["abstract_state", "state_shardings"]


def state_shardings(
  tx: GradientTransformation, params: Params, param_shardings: Any = None, *, replicated: Any = None
) -> Any:
  """The shardings of ``tx.init(params)``, leaf for leaf: a state leaf that mirrors a
  parameter lives where it lives; the rest (counts, ``keep_stats`` scalars) is `replicated`.

  Nothing is allocated (``jax.eval_shape``). Works for any optimizer whose
  parameter-shaped state `optax.tree_map_params` finds (lars_jax's, SGD, Adam, ...).

  Args:
    tx: the optimizer.
    params: the parameters, or their `jax.ShapeDtypeStruct`s.
    param_shardings: one sharding per parameter (a tree with the params' structure):
      `jax.sharding.NamedSharding`s for ``jit``, or `PartitionSpec`s for
      ``shard_map``'s ``in_specs``. None: each parameter's own ``.sharding`` (sharded
      arrays, or `ShapeDtypeStruct`s built with ``sharding=``).
    replicated: what non-parameter leaves get. None: ``NamedSharding(mesh, P())`` on
      the parameters' mesh, or ``P()`` when `param_shardings` holds PartitionSpecs.

  Examples:
    >>> import jax.numpy as jnp, lars_jax, lars_jax.sharding
    >>> from jax.sharding import PartitionSpec as P
    >>> params = {'w': jnp.ones((4, 2)), 'b': jnp.ones(2)}
    >>> specs = {'w': P(None, 'model'), 'b': P()}
    >>> tx = lars_jax.lars(0.1, keep_stats=True)
    >>> sh = lars_jax.sharding.state_shardings(tx, params, specs)
    >>> sh[0].stats.param_norm == {'b': P(), 'w': P()}  # one replicated spec per layer
    True
    >>> sh[2].trace == specs  # the momentum lives where its parameter lives
    True
  """
  return _shardings(tx, params, jax.eval_shape(tx.init, params), param_shardings, replicated)


def abstract_state(
  tx: GradientTransformation, params: Params, param_shardings: Any = None, *, replicated: Any = None
) -> Any:
  """``tx.init(params)`` as `jax.ShapeDtypeStruct`s carrying `state_shardings`.

  The target for a sharded orbax restore (each array read straight into its shards) and for
  ``jax.jit(tx.init, out_shardings=...)``. Arguments as in `state_shardings` (NamedShardings).
  """
  abstract = jax.eval_shape(tx.init, params)  # traced once, for both
  shardings = _shardings(tx, params, abstract, param_shardings, replicated)
  with_sharding = lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh)
  return jax.tree.map(with_sharding, abstract, shardings)


def _shardings(
  tx: GradientTransformation, params: Params, abstract: Any, param_shardings: Any, replicated: Any
) -> Any:
  """`state_shardings` of the abstract state `abstract` (``eval_shape(tx.init, params)``)."""
  if param_shardings is None:
    param_shardings = jax.tree_util.tree_map_with_path(_own_sharding, params)
  if replicated is None:
    replicated = _replicated_like(param_shardings)
  replicate = lambda part: jax.tree.map(lambda _: replicated, part)
  return optax.tree_map_params(
    tx, lambda _, sh: sh, abstract, param_shardings, transform_non_params=replicate
  )


def _own_sharding(path: Any, leaf: Any) -> Any:
  sharding = getattr(leaf, "sharding", None)
  if sharding is None:
    raise ValueError(
      f"lars_jax.sharding: the parameter {masks_lib.path_str(path)!r} has no sharding "
      f"({type(leaf).__name__}). Pass `param_shardings`, or params built with one "
      "(sharded arrays, or jax.ShapeDtypeStruct(shape, dtype, sharding=...))."
    )
  return sharding


def _replicated_like(param_shardings: Any) -> Any:
  leaves = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, PartitionSpec))
  if leaves and all(isinstance(s, PartitionSpec) for s in leaves):
    return PartitionSpec()
  for s in leaves:
    if isinstance(s, NamedSharding):
      return NamedSharding(s.mesh, PartitionSpec())
  raise ValueError(
    "lars_jax.sharding: cannot tell what a replicated state leaf should be: the "
    "parameter shardings hold no NamedSharding or PartitionSpec "
    f"({sorted({type(s).__name__ for s in leaves})}). Pass `replicated=`."
  )
