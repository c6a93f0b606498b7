"""Composable optax GradientTransformations that make up LARS.

Each factory returns an `optax.GradientTransformationExtraArgs` that works on its own,
inside `optax.chain`, `optax.inject_hyperparams`, `optax.MultiSteps`, `optax.masked`
and friends. `lars_jax.lars` chains four of them:

    add_decayed_weights -> scale_by_trust_ratio -> scale_by_learning_rate -> trace

Numerics: layer norms and the trust ratio are computed in float32 or wider (float64
for float64 parameters), so bfloat16/float16 parameters never underflow an `eps` or
overflow a squared norm. Every update keeps the dtype of the incoming update.

Layer norms of all leaves are computed together and the trust ratio is computed as
one vector, so a tree with many small leaves costs a handful of XLA ops more than a
tree with one leaf, and under `shard_map` the cross-device sum is a single
collective for all leaves, whatever mesh axes each is split over (see `axis_name` in
`scale_by_trust_ratio`).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from lars_jax import _checks
from lars_jax import masks as masks_lib

ScalarOrSchedule = float | jax.Array | optax.Schedule
AxisNames = Any  # None | str | tuple[str, ...] | PartitionSpec | pytree (prefix) of these


class AddDecayedWeightsState(NamedTuple):
  """Step count at which a weight-decay schedule is read next."""

  count: jax.Array


class ScaleByLearningRateState(NamedTuple):
  """Step count at which a learning-rate schedule is read next."""

  count: jax.Array


class TraceState(NamedTuple):
  """Momentum buffer, one array per parameter."""

  trace: optax.Params


# ----------------------------------------------------------------------------
# Helpers shared with lars.py / presets / diagnostics.


def wide_dtype(dtype: Any) -> jnp.dtype:
  """The dtype our arithmetic runs in for `dtype`: float32 or wider."""
  return jnp.promote_types(dtype, jnp.float32)


def _real_wide_dtype(dtype: Any) -> jnp.dtype:
  return jnp.finfo(wide_dtype(dtype)).dtype


def sq_norm(x: jax.Array) -> jax.Array:
  """Sum of squared moduli of all elements of `x`, in float32 or wider."""
  acc = wide_dtype(x.dtype)
  x = x.astype(acc)
  if jnp.issubdtype(acc, jnp.complexfloating):
    return jnp.sum(jnp.square(x.real) + jnp.square(x.imag))
  return jnp.sum(jnp.square(x))


def flatten_like(tree: Any, treedef: Any, what: str, transform: str) -> list[Any]:
  """Flattens `tree` up to `treedef` with a clear error on mismatch."""
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      f"{transform}: `{what}` does not have the structure of the updates. "
      f"Updates: {treedef}; {what}: {jax.tree.structure(tree)}. Pass {what} "
      f"with the same tree structure as the gradients. ({e})"
    ) from None


def flat_update_args(
  name: str, updates: Any, params: Any, mask: masks_lib.Mask, where: str = ""
) -> tuple[list[Any], list[Any], Any, list[bool]]:
  """What a masked, params-reading transform checks first in `update`.

  Returns the update leaves, the param leaves aligned with them, the updates'
  treedef and the resolved mask (one bool per leaf); raises if `params` is missing,
  does not match `updates`, holds non-float leaves, or `mask` does not fit.
  `where` names, in mask errors, the factory argument the mask came from.
  """
  if params is None:
    raise _checks.no_params_error(name)
  u_leaves, treedef = jax.tree.flatten(updates)
  p_leaves = flatten_like(params, treedef, "params", name)
  _checks.check_float_leaves(name, params)
  bits = masks_lib.resolve(mask, params, arg="mask", where=where)
  return u_leaves, p_leaves, treedef, bits


def _is_axis_leaf(x: Any) -> bool:
  return (
    x is None
    or isinstance(x, (str, PartitionSpec))
    or (isinstance(x, tuple) and len(x) > 0 and all(isinstance(a, str) for a in x))
  )


def _normalize_axes(a: Any) -> tuple[Hashable, ...]:
  if a is None:
    return ()
  if isinstance(a, str):
    return (a,)
  if isinstance(a, PartitionSpec):
    out: list[Hashable] = []
    for entry in a:
      if isinstance(entry, str):
        out.append(entry)
      elif isinstance(entry, tuple):
        out.extend(e for e in entry if isinstance(e, str))
    return tuple(out)
  return tuple(a)


def leaf_axes(axis_name: AxisNames, tree: Any) -> list[tuple[Hashable, ...]]:
  """Resolves `axis_name` (a name, tuple, PartitionSpec or pytree prefix of them).

  Returns one tuple of mesh-axis names per leaf of `tree`: the axes over which that
  leaf is split, so its squared norm must be summed over them.
  """
  n = len(jax.tree.leaves(tree))
  if axis_name is None:
    return [()] * n
  if _is_axis_leaf(axis_name):
    return [_normalize_axes(axis_name)] * n
  axes_leaves, axes_def = jax.tree.flatten(axis_name, is_leaf=_is_axis_leaf)
  try:
    subtrees = axes_def.flatten_up_to(tree)
  except (ValueError, TypeError) as e:
    raise ValueError(
      "`axis_name` must be a mesh-axis name, a tuple of names, a PartitionSpec, "
      "or a pytree of those with the params' structure (or a prefix of it). "
      f"Got structure {axes_def} for params {jax.tree.structure(tree)}. ({e})"
    ) from None
  out: list[tuple[Hashable, ...]] = []
  for a, sub in zip(axes_leaves, subtrees):
    out.extend([_normalize_axes(a)] * len(jax.tree.leaves(sub)))
  return out


def _safe_sqrt(sq: jax.Array) -> jax.Array:
  """`sqrt(sq)` whose derivative at 0 is 0 instead of inf (so no NaN flows back
  through a zero norm when differentiating through the update); same values."""
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def layer_norms(
  leaf_lists: Sequence[Sequence[jax.Array]],
  axes: Sequence[tuple[Hashable, ...]],
) -> list[jax.Array]:
  """Per-leaf L2 norms of several aligned leaf lists, as one vector per list.

  All squared norms are computed in float32 (float64 if any leaf is float64),
  stacked, summed across devices with one `lax.psum` (over the union of all leaves'
  axes; each leaf counted once per shard), and square-rooted as vectors.

  Args:
    leaf_lists: K lists of N arrays each (e.g. params and updates).
    axes: N tuples of mesh-axis names (from `leaf_axes`), () for unsplit leaves.

  Returns:
    K vectors of shape (N,).
  """
  n = len(axes)
  if n == 0:
    return [jnp.zeros((0,), jnp.float32) for _ in leaf_lists]
  dtype = jnp.result_type(*[_real_wide_dtype(x.dtype) for leaves in leaf_lists for x in leaves])
  groups: dict[tuple[Hashable, ...], list[int]] = {}
  for i, a in enumerate(axes):
    groups.setdefault(a, []).append(i)
  if len(groups) == 1:
    (a,) = groups
    sq = jnp.stack([_sq_norms(leaves, dtype) for leaves in leaf_lists])  # (K, N)
    return list(_safe_sqrt(jax.lax.psum(sq, a) if a else sq))
  # Several axis groups. Each is stacked on its own, so that under `shard_map` a
  # replicated leaf's norm does not take the device-varying type of a split leaf's
  # (`check_vma` would then reject its replicated update). All split groups share
  # ONE psum over the union of their axes: a leaf's squared norms enter it only on
  # the devices at index 0 of the union axes it is not split over (exact zeros
  # elsewhere), so each of its shards is counted once.
  union = tuple(dict.fromkeys(ax for a in groups for ax in a))
  local, split, order_local, order_split = [], [], [], []
  for a, idx in groups.items():
    sq = jnp.stack([_sq_norms([leaves[i] for i in idx], dtype) for leaves in leaf_lists])
    if not a:
      local.append(sq)
      order_local.extend(idx)
      continue
    first = [jax.lax.axis_index(ax) == 0 for ax in union if ax not in a]
    if first:
      sq = jnp.where(functools.reduce(jnp.logical_and, first), sq, jnp.zeros_like(sq))
    split.append(sq)
    order_split.extend(idx)
  sq = jnp.concatenate([*local, jax.lax.psum(jnp.concatenate(split, axis=1), union)], axis=1)
  inverse = [0] * n
  for pos, i in enumerate(order_local + order_split):
    inverse[i] = pos
  return list(_safe_sqrt(sq[:, jnp.asarray(inverse)]))


# Leaves below this many elements get their squared norms batched: stacked by shape
# and reduced together. Each small reduction is otherwise its own kernel (two on XLA
# CPU, which squares and reduces small arrays separately), and per-kernel overhead,
# not bandwidth, dominates for biases and normalisation scales. 4096 is also where
# XLA CPU starts sending reductions to YNNPACK. A stack holds at most 8 leaves: XLA
# CPU fuses a concatenate of up to 8 operands, and larger ones are slow. The stacks
# cost no more memory than the unbatched path, where XLA CPU materialises each
# small leaf's square before reducing it.
_SMALL_LEAF = 4096
_STACK_MAX = 8


def _type_sharded(x: jax.Array) -> bool:
  """Whether `x`'s type carries a mesh sharding (explicit sharding mode).

  Such leaves are not batched: `jnp.stack` needs equal shardings and a reshape of
  a split axis is ambiguous.
  """
  typeof = getattr(jax, "typeof", None)
  spec = getattr(getattr(typeof(x), "sharding", None), "spec", None) if typeof else None
  return spec is not None and any(a is not None for a in spec)


def _sq_norms(leaves: Sequence[jax.Array], dtype: Any) -> jax.Array:
  """`[sq_norm(x) for x in leaves]` as a vector of `dtype`, small leaves batched."""
  by_shape: dict[tuple[Any, ...], list[int]] = {}
  for i, x in enumerate(leaves):
    if x.size < _SMALL_LEAF and not _type_sharded(x):
      by_shape.setdefault((x.shape, jnp.dtype(x.dtype)), []).append(i)
  groups = [
    idx[start : start + _STACK_MAX]
    for idx in by_shape.values()
    for start in range(0, len(idx), _STACK_MAX)
    if len(idx[start : start + _STACK_MAX]) > 1
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
    stacked = jnp.stack([leaves[i].reshape(-1) for i in idx]).astype(
      wide_dtype(leaves[idx[0]].dtype)
    )
    if jnp.issubdtype(stacked.dtype, jnp.complexfloating):
      sq = jnp.sum(jnp.square(stacked.real) + jnp.square(stacked.imag), axis=1)
    else:
      sq = jnp.sum(jnp.square(stacked), axis=1)
    pieces.append(sq.astype(dtype))
    order.extend(idx)
  inverse = [0] * len(order)
  for pos, i in enumerate(order):
    inverse[i] = pos
  return jnp.concatenate(pieces)[jnp.asarray(inverse)]


def _zeros_like(x: Any, dtype: Any = None) -> jax.Array:
  dtype = dtype or x.dtype
  if isinstance(x, jax.ShapeDtypeStruct):
    return jnp.zeros(x.shape, dtype, device=getattr(x, "sharding", None))
  return jnp.zeros_like(x, dtype=dtype)


def _scale(u: jax.Array, s: jax.Array | float) -> jax.Array:
  return (u.astype(wide_dtype(u.dtype)) * s).astype(u.dtype)


# Decay hints: speed only, never numbers. Under `jit`, `u = g + wd * w` from
# `add_decayed_weights` feeds two consumers in `scale_by_trust_ratio`: the norm
# reduction and the elementwise update. XLA CPU then materialises `u` (a temporary as
# large as the parameters): its reduction fusions (YNNPACK) only absorb a producer
# whose every user is inside the fusion, and its loop fusion does not duplicate a
# two-input producer. So `add_decayed_weights` records, for each traced output leaf,
# how it was made, and `scale_by_trust_ratio` takes the norm of a recomputation,
# `g - (-wd) * w` (the same value; at most a fused multiply-add rounds differently),
# which XLA does not merge with `u`: the reduction
# reads g and w directly, `u` has one user and fuses into the update loop, and no
# temporary is allocated (see benchmarks/README.md). Entries are keyed by the output
# tracer's id, checked by identity, and dropped when the tracer dies.
_DECAY_HINTS: dict[int, tuple[Any, jax.Array, jax.Array, Any]] = {}


def _record_decay_hint(out: Any, u: jax.Array, p: jax.Array, wd: Any) -> None:
  if not isinstance(out, jax.core.Tracer):
    return
  key = id(out)

  def drop(ref: Any, key: int = key) -> None:
    entry = _DECAY_HINTS.get(key)
    if entry is not None and entry[0] is ref:
      del _DECAY_HINTS[key]

  try:
    ref = weakref.ref(out, drop)
  except TypeError:  # a tracer type without weakref support: no hint, same numbers
    return
  _DECAY_HINTS[key] = (ref, u, p, wd)


def _norm_source(x: jax.Array) -> jax.Array:
  """`x`, or a recomputation of its value that XLA does not merge with `x`."""
  entry = _DECAY_HINTS.get(id(x))
  if entry is None or entry[0]() is not x:
    return x
  _, u, p, wd = entry
  # Same rounding as `add_decayed_weights`: a - (-c) * b == a + c * b exactly. The
  # barrier ties -wd to this leaf: otherwise leaves of equal shape share one
  # broadcast of the constant, which the reduction fusions cannot absorb, and XLA
  # materialises it (a temporary per distinct leaf shape).
  pw = p.astype(wide_dtype(p.dtype))
  neg, _ = jax.lax.optimization_barrier((-jnp.asarray(wd, jnp.result_type(wd, pw)), p))
  return (u.astype(wide_dtype(u.dtype)) - neg * pw).astype(x.dtype)


# ----------------------------------------------------------------------------
# The transforms.


def add_decayed_weights(
  weight_decay: ScalarOrSchedule = 0.0,
  mask: masks_lib.Mask = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adds decoupled weight decay to the updates: :math:`u = g + \lambda w`.

  Leaves where `mask` is False pass through untouched. With a schedule, step
  :math:`c` (counting from 0) uses :math:`\lambda(c)`. A Python ``0`` skips the
  computation entirely; a traced or array zero still adds :math:`0 \cdot w`, exactly
  as `optax.add_decayed_weights`.

  Args:
    weight_decay: the rate :math:`\lambda \ge 0`, or a schedule ``count -> rate``.
    mask: which leaves to decay (see `lars_jax.masks`); None decays all.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.add_decayed_weights(0.1, mask={'w': True, 'b': False})
    >>> params = {'w': jnp.array([1.0, 2.0]), 'b': jnp.array([3.0])}
    >>> grads = {'w': jnp.zeros(2), 'b': jnp.ones(1)}
    >>> updates, _ = tx.update(grads, tx.init(params), params)
    >>> updates['w'], updates['b']
    (Array([0.1, 0.2], dtype=float32), Array([1.], dtype=float32))
  """
  name = "add_decayed_weights"
  where = " of add_decayed_weights (`weight_decay_mask` in lars)"
  _checks.check_scalar("weight_decay", weight_decay, fix="Use 0.0 to disable weight decay.")
  is_schedule = callable(weight_decay)
  is_python_zero = (
    not is_schedule and isinstance(weight_decay, (int, float)) and float(weight_decay) == 0.0
  )

  def init_fn(params):
    _checks.check_float_leaves(name, params)
    if jax.tree.leaves(params):  # not optax.tree_map_params' leafless placeholder
      masks_lib.resolve(mask, params, arg="mask", where=where)
    if is_schedule:
      return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if is_python_zero:
      return updates, state
    u_leaves, p_leaves, treedef, bits = flat_update_args(name, updates, params, mask, where)
    if is_schedule:
      wd = weight_decay(state.count)
      state = AddDecayedWeightsState(count=optax.safe_increment(state.count))
    else:
      wd = weight_decay
    out = [
      (u.astype(wide_dtype(u.dtype)) + wd * p.astype(wide_dtype(p.dtype))).astype(u.dtype)
      if b
      else u
      for u, p, b in zip(u_leaves, p_leaves, bits)
    ]
    for o, u, p, b in zip(out, u_leaves, p_leaves, bits):
      if b:
        _record_decay_hint(o, u, p, wd)
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_trust_ratio(
  trust_coefficient: float | jax.Array = 1.0,
  eps: float | jax.Array = 0.0,
  mask: masks_lib.Mask = None,
  *,
  axis_name: AxisNames = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each leaf by its layer-wise trust ratio.

  For each leaf with parameter :math:`w` and incoming update :math:`u`:

  .. math::

    r = \begin{cases}
      \eta \, \|w\| / (\|u\| + \epsilon) & \text{if } \|w\| > 0 \text{ and } \|u\| > 0 \\
      1 & \text{otherwise}
    \end{cases}, \qquad u \leftarrow r\,u

  with :math:`\|\cdot\|` the L2 norm over all elements of the leaf (the modulus for
  complex leaves), computed in float32 or wider. The fallback to 1 means a zero
  parameter or a zero update never produces NaN or Inf. Leaves where `mask` is False
  pass through untouched. Same numbers as `optax.scale_by_trust_ratio` with
  ``min_norm=0``.

  **Sharded parameters.** Under `shard_map` (or `pmap` over a split model) each device
  holds only a slice of a leaf, and the norm must be summed across devices. Pass the
  mesh axes each leaf is *split* over: a name, a tuple of names, a `PartitionSpec`,
  or a pytree (prefix) of these, e.g. the params' `PartitionSpec` tree. Leaves that
  are replicated must get ``None``: giving them an axis would count them once per
  device. **Without `axis_name`, a sharded leaf silently gets the ratio of its local
  slice.** Under `jit` with `NamedSharding` (pjit) norms are global already: leave
  `axis_name` as None.

  Args:
    trust_coefficient: :math:`\eta`, the trust coefficient (``>= 0``).
    eps: :math:`\epsilon \ge 0`, added to the update norm.
    mask: which leaves to scale (see `lars_jax.masks`); None scales all.
    axis_name: mesh axes to sum squared norms over (see above).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.scale_by_trust_ratio(trust_coefficient=0.001)
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])  # |w| = 5, |g| = 1
    >>> updates, _ = tx.update(g, tx.init(w), w)
    >>> updates / g  # ratio 0.001 * 5 / 1
    Array([0.005, 0.005], dtype=float32)
  """
  name = "scale_by_trust_ratio"
  where = " of scale_by_trust_ratio (`trust_ratio_mask` in lars)"
  _checks.check_scalar("trust_coefficient", trust_coefficient)
  _checks.check_scalar(
    "eps", eps, fix="eps is added to the update norm; use 0.0 or a small positive value."
  )

  def init_fn(params):
    _checks.check_float_leaves(name, params)
    if jax.tree.leaves(params):  # not optax.tree_map_params' leafless placeholder
      masks_lib.resolve(mask, params, arg="mask", where=where)
      leaf_axes(axis_name, params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    u_leaves, p_leaves, treedef, bits = flat_update_args(name, updates, params, mask, where)
    idx = [i for i, b in enumerate(bits) if b]
    if not idx:
      return updates, state
    axes = leaf_axes(axis_name, params)
    pn, un = layer_norms(
      [[p_leaves[i] for i in idx], [_norm_source(u_leaves[i]) for i in idx]],
      [axes[i] for i in idx],
    )
    ratio = trust_ratio(pn, un, trust_coefficient, eps)
    out = list(u_leaves)
    for k, i in enumerate(idx):
      out[i] = _scale(u_leaves[i], ratio[k])
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def trust_ratio(
  param_norm: jax.Array,
  update_norm: jax.Array,
  trust_coefficient: float | jax.Array,
  eps: float | jax.Array = 0.0,
) -> jax.Array:
  r""":math:`\eta \|w\| / (\|u\| + \epsilon)` where both norms are > 0, else 1 (no NaN)."""
  ok = (param_norm > 0) & (update_norm > 0)
  denom = jnp.where(ok, update_norm + eps, 1.0)
  return jnp.where(ok, trust_coefficient * param_norm / denom, 1.0)


def scale_by_learning_rate(
  learning_rate: ScalarOrSchedule | None,
  *,
  flip_sign: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Multiplies updates by :math:`-\gamma` (or :math:`+\gamma` with ``flip_sign=False``).

  With a schedule, update number :math:`c` (counting from 0) uses :math:`\gamma(c)`:
  the first update uses ``schedule(0)``, as optax does. The product is computed in
  float32 or wider and cast back to the update's dtype, so a bfloat16 update is not
  multiplied by a learning rate already rounded to bfloat16. ``None`` is the identity.

  Args:
    learning_rate: :math:`\gamma \ge 0`, or a schedule ``count -> rate``.
    flip_sign: negate, so that ``optax.apply_updates`` descends.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, optax, lars_jax
    >>> tx = lars_jax.scale_by_learning_rate(optax.linear_schedule(0.0, 1.0, 4))
    >>> state = tx.init(jnp.zeros(1))
    >>> u0, state = tx.update(jnp.ones(1), state)  # schedule(0) = 0
    >>> u1, state = tx.update(jnp.ones(1), state)  # schedule(1) = 0.25
    >>> u0, u1
    (Array([-0.], dtype=float32), Array([-0.25], dtype=float32))
  """
  _checks.check_scalar(
    "learning_rate",
    learning_rate,
    fix="Pass a non-negative number or an optax schedule.",
  )
  if not isinstance(flip_sign, bool):
    raise TypeError(f"`flip_sign` must be a bool, got {flip_sign!r}.")
  sign = -1.0 if flip_sign else 1.0
  is_schedule = callable(learning_rate)

  def init_fn(params):
    if is_schedule:
      return ScaleByLearningRateState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if learning_rate is None:
      return updates, state
    if is_schedule:
      step = sign * learning_rate(state.count)
      state = ScaleByLearningRateState(count=optax.safe_increment(state.count))
    else:
      step = sign * learning_rate
    return jax.tree.map(lambda u: _scale(u, step), updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def trace(
  decay: float | jax.Array,
  nesterov: bool = False,
  accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Momentum: :math:`t \leftarrow x + \mu t`; outputs :math:`t` or :math:`x + \mu t`.

  The buffer :math:`t` starts at zero, so the first output equals the first input
  (PyTorch's "clone on the first step" without dampening). With ``nesterov=True`` the
  output is :math:`x + \mu t_{new}`. Same numbers as `optax.trace`.

  Args:
    decay: the momentum :math:`\mu \in [0, 1)`.
    nesterov: use Nesterov momentum.
    accumulator_dtype: dtype of the buffer; defaults to each parameter's dtype. Use
      ``jnp.float32`` to keep a float32 buffer for bfloat16 parameters.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.trace(0.5, nesterov=True)
    >>> state = tx.init(jnp.zeros(1))
    >>> u, state = tx.update(jnp.ones(1), state)  # t = 1, out = 1 + 0.5 * 1
    >>> u, state.trace
    (Array([1.5], dtype=float32), Array([1.], dtype=float32))
    >>> u, state = tx.update(jnp.ones(1), state)  # t = 1.5, out = 1 + 0.75
    >>> u
    Array([1.75], dtype=float32)
  """
  name = "trace"
  _checks.check_momentum("decay", decay)
  if not isinstance(nesterov, bool):
    raise TypeError(f"`nesterov` must be a bool, got {nesterov!r}.")
  acc_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)

  def init_fn(params):
    _checks.check_float_leaves(name, params)
    return TraceState(trace=jax.tree.map(lambda p: _zeros_like(p, acc_dtype), params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    x_leaves, treedef = jax.tree.flatten(updates)
    t_leaves = flatten_like(state.trace, treedef, "state.trace", name)
    new_t, out = [], []
    for x, t in zip(x_leaves, t_leaves):
      acc = jnp.promote_types(wide_dtype(x.dtype), wide_dtype(t.dtype))
      xw = x.astype(acc)
      tn = xw + decay * t.astype(acc)
      o = xw + decay * tn if nesterov else tn
      new_t.append(tn.astype(t.dtype))
      out.append(o.astype(x.dtype))
    return treedef.unflatten(out), TraceState(trace=treedef.unflatten(new_t))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
