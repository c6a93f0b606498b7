"""The state of the trust-ratio transforms (`lars_jax.transforms`): a step count and, with
``keep_stats``, the `LayerStats` of the last step (read by `lars_jax.layer_stats`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lars_jax import _numerics, _tree


class LayerStats(NamedTuple):
  """What a trust-ratio transform applied at its last step: per field, the params' tree
  with a float scalar for each adapted leaf and None elsewhere (`lars_jax.layer_stats`)."""

  param_norm: optax.Params
  update_norm: optax.Params
  trust_ratio: optax.Params


class TrustRatioState(NamedTuple):
  """Step count and the `LayerStats` of the last step (``keep_stats=True``)."""

  count: jax.Array
  stats: LayerStats


def init(
  keep_stats: bool, counted: bool, params: Any, bits: Sequence[bool]
) -> TrustRatioState | optax.ScaleByScheduleState | optax.EmptyState:
  """The initial state: a count if `counted`, and with `keep_stats` zero statistics
  for the leaves where `bits` is True (None elsewhere)."""
  if not keep_stats:
    return _tree.count_state(counted)
  leaves, treedef = jax.tree.flatten(params)
  if leaves:
    dtype = _numerics.norm_dtype([x for x, b in zip(leaves, bits) if b])
    zero = [jnp.zeros([], dtype) if b else None for b in bits]
    stats = [treedef.unflatten(zero) for _ in range(3)]
  else:
    # Empty vectors, not the leafless params structure: `optax.tree_map_params` inits
    # on a leafless placeholder and would take params-shaped stats for params.
    stats = [jnp.zeros((0,), jnp.float32) for _ in range(3)]
  return TrustRatioState(count=jnp.zeros([], jnp.int32), stats=LayerStats(*stats))


def step(
  state: Any, treedef: Any, idx: Sequence[int], n: int, norms: Sequence[jax.Array] = ()
) -> Any:
  """`state` one step later; with statistics, `norms` = (param, update, ratio) vectors
  for the leaves `idx` of a tree of `n` leaves (no leaves: all None)."""
  if not isinstance(state, TrustRatioState):
    return _tree.advance(state)
  count = optax.safe_increment(state.count)
  if n == 0:
    return state._replace(count=count)
  old = jax.tree.leaves(state.stats)
  dtype = old[0].dtype if old else jnp.float32
  fields = []
  for f in range(3):
    out: list[Any] = [None] * n
    for k, i in enumerate(idx):
      out[i] = norms[f][k].astype(dtype)
    fields.append(treedef.unflatten(out))
  return TrustRatioState(count=count, stats=LayerStats(*fields))
