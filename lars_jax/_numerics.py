"""Numerics shared by the transforms: wide precision, norms, guarded trust ratios.

Norms and ratios are computed in float32 or wider (float64 for float64 leaves) and cast
back to the update's dtype. An exact zero norm never gives NaN or Inf (nor a NaN
gradient), but an incoming NaN or Inf is never hidden. Each ratio and its guard is one
function below; who uses which:

=============================  ================================================================
`trust_ratio`                  optax, `lars`, `scale_by_trust_ratio(_with_decay)`: 1 where a
                               norm == 0; a NaN norm gives a NaN ratio.
`trust_ratio_if_positive`      TF Model Garden (`tf_lars`), BYOL (`byol_lars`): 1 unless both
                               norms > 0 (a NaN norm falls back to 1).
`sum_norms_ratio_if_nonzero`   Lightning Flash (`torch_lars`), Apex (`larc`): applied where both
                               norms != 0 (Flash: and decay != 0); else the raw gradient.
`sum_norms_ratio_if_positive`  timm (`timm_lars`): 1 unless both norms > 0; decay added anyway.
`sum_norms_ratio_unless_zero`  flax.optim (`flax_lars`): 1 where a norm == 0, decay added anyway.
`clip_ratio`                   LARC's clip mode, timm's ``trust_clip``: min(r / lr, 1); 1 at lr 0.
=============================  ================================================================
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def wide_dtype(dtype: Any) -> jnp.dtype:
  """The dtype our arithmetic runs in for `dtype`: float32 or wider."""
  return jnp.promote_types(dtype, jnp.float32)


def scale(u: jax.Array, s: jax.Array | float) -> jax.Array:
  """`u * s` computed in wide precision, in `u`'s dtype."""
  return (u.astype(wide_dtype(u.dtype)) * s).astype(u.dtype)


def decayed_wide(u: jax.Array, p: jax.Array, weight_decay: Any) -> jax.Array:
  """`u + weight_decay * p`, the decayed gradient, in wide precision."""
  return u.astype(wide_dtype(u.dtype)) + weight_decay * p.astype(wide_dtype(p.dtype))


def decayed(u: jax.Array, p: jax.Array, weight_decay: Any) -> jax.Array:
  """`decayed_wide` rounded to `u`'s dtype."""
  return decayed_wide(u, p, weight_decay).astype(u.dtype)


def sq_norm(x: jax.Array, axis: int | None = None) -> jax.Array:
  """Sum of squared moduli of the elements of `x` (along `axis`), in float32 or wider."""
  acc = wide_dtype(x.dtype)
  x = x.astype(acc)
  if jnp.issubdtype(acc, jnp.complexfloating):
    return jnp.sum(jnp.square(x.real) + jnp.square(x.imag), axis=axis)
  return jnp.sum(jnp.square(x), axis=axis)


def safe_sqrt(sq: jax.Array) -> jax.Array:
  """`sqrt(sq)`, whose derivative at exactly 0 is 0 instead of inf; NaN and Inf pass."""
  zero = sq == 0
  return jnp.where(zero, 0.0, jnp.sqrt(jnp.where(zero, 1.0, sq)))


def ratio_where(ok: jax.Array, num: jax.Array, den: jax.Array) -> jax.Array:
  """`num / den` where `ok`, else 1; the division never sees a guarded denominator, so
  neither the ratio nor its gradient is NaN there. Every guard here goes through it."""
  return jnp.where(ok, num / jnp.where(ok, den, 1.0), 1.0)


def trust_ratio(
  param_norm: jax.Array,
  update_norm: jax.Array,
  trust_coefficient: float | jax.Array,
  eps: float | jax.Array = 0.0,
) -> jax.Array:
  r""":math:`\eta \|w\| / (\|u\| + \epsilon)`, or 1 where a norm is exactly 0 (optax's guard;
  a NaN or Inf norm gives a NaN, 0 or Inf ratio, so a diverging layer shows up).

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> lars_jax.trust_ratio(jnp.array([5.0, 0.0]), jnp.array([1.0, 1.0]), 0.001)
    Array([0.005, 1.   ], dtype=float32)
  """
  ok = ~((param_norm == 0) | (update_norm == 0))
  return ratio_where(ok, trust_coefficient * param_norm, update_norm + eps)


def trust_ratio_if_positive(
  param_norm: jax.Array, update_norm: jax.Array, trust_coefficient: float | jax.Array
) -> jax.Array:
  r""":math:`\eta \|w\| / \|u\|` if both norms are > 0, else 1 (TF Model Garden's nested
  ``where``: a NaN norm falls back to 1)."""
  ok = (param_norm > 0) & (update_norm > 0)
  return ratio_where(ok, trust_coefficient * param_norm, update_norm)


def _sum_norms_ratio(pn: jax.Array, gn: jax.Array, wd: Any, tc: Any, eps: Any, ok: jax.Array):
  """eta |w| / (|g| + wd |w| + eps) where `ok`, else 1."""
  return ratio_where(ok, tc * pn, gn + wd * pn + eps)


def sum_norms_ratio_if_nonzero(pn: jax.Array, gn: jax.Array, wd: Any, tc: Any, eps: Any):
  """PyTorch's ``!= 0`` tests (Lightning Flash, Apex LARC): the ratio and where it
  applies (both norms != 0); where it does not, the caller passes the raw gradient
  through, undecayed. A NaN norm applies (NaN)."""
  ok = (pn != 0) & (gn != 0)
  return _sum_norms_ratio(pn, gn, wd, tc, eps, ok), ok


def sum_norms_ratio_if_positive(pn: jax.Array, gn: jax.Array, wd: Any, tc: Any, eps: Any):
  """timm's nested ``> 0`` guard: 1 unless both norms are > 0, so a NaN norm gives 1
  (only the NaN elements stay NaN); the decayed gradient is scaled either way."""
  return _sum_norms_ratio(pn, gn, wd, tc, eps, (pn > 0) & (gn > 0))


def sum_norms_ratio_unless_zero(pn: jax.Array, gn: jax.Array, wd: Any, tc: Any, eps: Any):
  """flax.optim's guard (since Sep 2020): 1 where a norm is exactly 0; a NaN norm
  gives a NaN ratio; the decayed gradient is scaled either way."""
  return _sum_norms_ratio(pn, gn, wd, tc, eps, ~((pn == 0) | (gn == 0)))


def clip_ratio(ratio: jax.Array, learning_rate: Any) -> jax.Array:
  """min(ratio / lr, 1), so the per-layer rate lr * ratio never exceeds lr; 1 while
  lr == 0 (a warm-up from 0); a NaN ratio stays NaN."""
  zero = learning_rate == 0
  return jnp.where(zero, 1.0, jnp.minimum(ratio / jnp.where(zero, 1.0, learning_rate), 1.0))


# Leaves below SMALL_LEAF elements get their squared norms stacked by shape and reduced
# together: per-kernel overhead, not bandwidth, dominates small reductions (and 4096 is
# where XLA CPU starts using YNNPACK). XLA CPU fuses a concatenate of up to 8 operands.
SMALL_LEAF = 4096
STACK_MAX = 8


def _type_sharded(x: jax.Array) -> bool:
  """Whether `x`'s type carries a mesh sharding (explicit sharding mode): such leaves
  are not batched (`jnp.stack` needs equal shardings)."""
  typeof = getattr(jax, "typeof", None)
  spec = getattr(getattr(typeof(x), "sharding", None), "spec", None) if typeof else None
  return spec is not None and any(a is not None for a in spec)


def sq_norms(leaves: Sequence[jax.Array], dtype: Any) -> jax.Array:
  """`[sq_norm(x) for x in leaves]` as a vector of `dtype`, small leaves batched."""
  by_shape: dict[tuple[Any, ...], list[int]] = {}
  for i, x in enumerate(leaves):
    if x.size < SMALL_LEAF and not _type_sharded(x):
      by_shape.setdefault((x.shape, jnp.dtype(x.dtype)), []).append(i)
  groups = [
    idx[start : start + STACK_MAX]
    for idx in by_shape.values()
    for start in range(0, len(idx), STACK_MAX)
    if len(idx[start : start + STACK_MAX]) > 1
  ]
  if not groups:
    return jnp.stack([sq_norm(x).astype(dtype) for x in leaves])
  pieces, order = [], []
  batched = {i for idx in groups for i in idx}
  for i, x in enumerate(leaves):
    if i not in batched:
      pieces.append(sq_norm(x).astype(dtype)[None])
      order.append(i)
  for idx in groups:
    stacked = jnp.stack([leaves[i].reshape(-1) for i in idx])
    pieces.append(sq_norm(stacked, axis=1).astype(dtype))
    order.extend(idx)
  return jnp.concatenate(pieces)[jnp.asarray(np.argsort(order))]  # back to leaf order


def norm_dtype(leaves: Sequence[Any]) -> jnp.dtype:
  """The dtype of the norms of `leaves`: float32, or float64 if any leaf is float64."""
  return jnp.result_type(jnp.float32, *[jnp.finfo(wide_dtype(x.dtype)).dtype for x in leaves])


def layer_norms(
  leaf_lists: Sequence[Sequence[jax.Array]], axes: Sequence[tuple[Hashable, ...]]
) -> list[jax.Array]:
  """Per-leaf L2 norms of K aligned lists of N >= 1 leaves (e.g. params and updates), as K
  vectors of shape (N,): squared norms in `norm_dtype`, summed across devices with one
  `lax.psum` over the union of `axes` (N tuples of mesh-axis names, `_tree.leaf_axes`)."""
  dtype = norm_dtype([x for leaves in leaf_lists for x in leaves])
  concrete = [x for xs in leaf_lists for x in xs if not isinstance(x, jax.core.Tracer)]
  if len({frozenset(x.sharding.device_set) for x in concrete if isinstance(x, jax.Array)}) > 1:
    # Outside `jit`, leaves on different devices: each squared norm on its leaf's device,
    # gathered on the host, returned uncommitted (each ratio follows its leaf).
    sq = [np.stack([np.asarray(sq_norm(x).astype(dtype)) for x in leaves]) for leaves in leaf_lists]
    return [safe_sqrt(jnp.asarray(v)) for v in sq]
  # Leaves are stacked per group of mesh axes (so that a replicated leaf's norm does not
  # take a split leaf's device-varying type under `shard_map`); the split groups share ONE
  # psum over the union of their axes, where a leaf's squared norms enter only on the
  # devices at index 0 of the union axes it is not split over (zeros elsewhere), so each
  # shard counts once.
  groups: dict[tuple[Hashable, ...], list[int]] = {}
  for i, a in enumerate(axes):
    groups.setdefault(a, []).append(i)
  union = tuple(dict.fromkeys(ax for a in groups for ax in a))
  local, split, order_local, order_split = [], [], [], []
  for a, idx in groups.items():
    sq = jnp.stack([sq_norms([leaves[i] for i in idx], dtype) for leaves in leaf_lists])
    first = [jax.lax.axis_index(ax) == 0 for ax in union if ax not in a]
    if a and first:
      sq = jnp.where(functools.reduce(jnp.logical_and, first), sq, jnp.zeros_like(sq))
    (split if a else local).append(sq)
    (order_split if a else order_local).extend(idx)
  if split:
    local.append(jax.lax.psum(jnp.concatenate(split, axis=1), union))
  sq, order = jnp.concatenate(local, axis=1), order_local + order_split
  if order != sorted(order):  # back to leaf order
    sq = sq[:, jnp.asarray(np.argsort(order))]
  return list(safe_sqrt(sq))
