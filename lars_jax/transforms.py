"""The optax transformations that make up LARS and the presets, each factory returning an
`optax.GradientTransformationExtraArgs`. Norms and ratios are taken in float32 or wider, all
leaves at once (one collective under `shard_map`), with the guards of `lars_jax._numerics`."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lars_jax import _checks, _compat, _numerics, _stats, _tree
from lars_jax import masks as masks_lib
from lars_jax._tree import AxisNames

__all__ = [
  "TorchTraceState",
  "TraceState",
  "add_decayed_weights",
  "scale_by_learning_rate",
  "scale_by_sum_norms_trust_ratio",
  "scale_by_trust_ratio",
  "scale_by_trust_ratio_with_decay",
  "torch_trace",
  "trace",
]


class TraceState(NamedTuple):
  """Momentum buffer, one array per parameter."""

  trace: optax.Params


class TorchTraceState(NamedTuple):
  """Steps taken with momentum so far, and the momentum buffer (PyTorch semantics)."""

  count: jax.Array
  trace: optax.Params


def add_decayed_weights(
  weight_decay: optax.ScalarOrSchedule = 0.0, mask: masks_lib.Mask = None
) -> optax.GradientTransformationExtraArgs:
  r"""Adds decoupled weight decay to the updates: :math:`u = g + \lambda w`.

  Step :math:`c = 0, 1, \dots` uses :math:`\lambda(c)`. A Python ``0`` skips the work; a
  traced or array zero adds :math:`0 \cdot w`, as `optax.add_decayed_weights`.

  Args:
    weight_decay: the rate :math:`\lambda \ge 0`, or a schedule ``count -> rate``.
    mask: which leaves to decay (see `lars_jax.masks`); None decays all.

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
  _checks.check_scalar("weight_decay", weight_decay, fix="Use 0.0 to disable weight decay.")
  skip = _checks.is_zero_number(weight_decay)

  def init_fn(params):
    _tree.init_checks(name, params, mask, "mask")
    return _tree.count_state(callable(weight_decay))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if skip:
      return updates, state
    u_leaves, p_leaves, treedef, bits = _tree.flat_update_args(name, updates, params, mask, "mask")
    wd = _tree.at_count(weight_decay, state)
    out = [_numerics.decayed(u, p, wd) if b else u for u, p, b in zip(u_leaves, p_leaves, bits)]
    return treedef.unflatten(out), _tree.advance(state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_trust_ratio(
  trust_coefficient: float | jax.Array = 1.0,
  eps: float | jax.Array = 0.0,
  mask: masks_lib.Mask = None,
  *,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
  positive_norms_only: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Scales each leaf by its layer-wise trust ratio.

  For each leaf with parameter :math:`w` and incoming update :math:`u`:

  .. math::

    r = \begin{cases}
      1 & \text{if } \|w\| = 0 \text{ or } \|u\| = 0 \\
      \eta \, \|w\| / (\|u\| + \epsilon) & \text{otherwise}
    \end{cases}, \qquad u \leftarrow r\,u

  with :math:`\|\cdot\|` the L2 norm of the whole leaf (the modulus if complex); a NaN or
  Inf norm makes the leaf's update NaN (or Inf). Same numbers as
  `optax.scale_by_trust_ratio` with ``min_norm=0``.

  Args:
    trust_coefficient: :math:`\eta \ge 0`.
    eps: :math:`\epsilon \ge 0`, added to the update norm.
    mask: which leaves to scale (see `lars_jax.masks`); None scales all.
    axis_name: under `shard_map`, the mesh axes each leaf is *split* over: a name, tuple,
      `PartitionSpec` or a pytree prefix of these, e.g. the params' `PartitionSpec` tree
      (README: "shard_map: the `axis_name` rule"). None for replicated leaves, under pjit.
    keep_stats: keep each adapted leaf's norms and ratio in the state (`LayerStats`,
      read with `lars_jax.layer_stats`); no extra reduction.
    positive_norms_only: TF Model Garden's guard: the ratio is 1 unless both norms are
      > 0, so a NaN norm falls back to 1 (``eps`` must be 0).

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.scale_by_trust_ratio(trust_coefficient=0.001)
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])  # |w| = 5, |g| = 1
    >>> updates, _ = tx.update(g, tx.init(w), w)
    >>> updates / g  # ratio 0.001 * 5 / 1
    Array([0.005, 0.005], dtype=float32)
  """
  return _trust_ratio_transform(
    "scale_by_trust_ratio",
    trust_coefficient=trust_coefficient,
    eps=eps,
    trust_ratio_mask=mask,
    mask_args=("mask", "mask"),
    axis_name=axis_name,
    keep_stats=keep_stats,
    positive_norms_only=positive_norms_only,
  )


def scale_by_trust_ratio_with_decay(
  weight_decay: optax.ScalarOrSchedule = 0.0,
  trust_coefficient: float | jax.Array = 0.001,
  eps: float | jax.Array = 0.0,
  *,
  weight_decay_mask: masks_lib.Mask = None,
  trust_ratio_mask: masks_lib.Mask = None,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
  positive_norms_only: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""`add_decayed_weights` then `scale_by_trust_ratio`, in one transform.

  .. math::

    u = g + \lambda(c)\, w \ \text{(where weight\_decay\_mask)}, \qquad
    u \leftarrow r\,u \ \text{(where trust\_ratio\_mask)}, \quad
    r = \eta \|w\| / (\|u\| + \epsilon) \text{ (1 where a norm is 0)}

  Same numbers as the chain of the two, without its parameter-sized temporary under
  `jit`: the norm reads :math:`g` and :math:`w` directly (`_norm_source`).

  Args:
    weight_decay: :math:`\lambda \ge 0`, or a schedule ``count -> rate``.
    weight_decay_mask, trust_ratio_mask: which leaves to decay, to adapt (`lars_jax.masks`);
      None: all.
    trust_coefficient, eps, axis_name, keep_stats, positive_norms_only: as in
      `scale_by_trust_ratio`.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.scale_by_trust_ratio_with_decay(0.1, 0.001, keep_stats=True)
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.3, 0.4])  # |g + 0.1 w| = 1
    >>> updates, state = tx.update(g, tx.init(w), w)
    >>> updates, lars_jax.layer_stats(state)['trust_ratio']
    (Array([0.003, 0.004], dtype=float32), 0.005)
  """
  return _trust_ratio_transform(
    "scale_by_trust_ratio_with_decay",
    weight_decay=weight_decay,
    trust_coefficient=trust_coefficient,
    eps=eps,
    weight_decay_mask=weight_decay_mask,
    trust_ratio_mask=trust_ratio_mask,
    axis_name=axis_name,
    keep_stats=keep_stats,
    positive_norms_only=positive_norms_only,
  )


def _trust_ratio_transform(
  name: str,
  *,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  trust_coefficient: float | jax.Array,
  eps: float | jax.Array,
  weight_decay_mask: masks_lib.Mask = None,
  trust_ratio_mask: masks_lib.Mask,
  mask_args: tuple[str, str] = ("weight_decay_mask", "trust_ratio_mask"),
  axis_name: AxisNames,
  keep_stats: bool,
  positive_norms_only: bool,
) -> optax.GradientTransformationExtraArgs:
  """Behind `scale_by_trust_ratio(_with_decay)`; `mask_args`: the factory's mask names."""
  decay_arg, ratio_arg = mask_args
  _checks.check_scalar("weight_decay", weight_decay, fix="Use 0.0 to disable weight decay.")
  _checks.check_numbers(trust_coefficient=trust_coefficient, eps=eps)
  _checks.check_scalar("trust_coefficient", trust_coefficient, fix="0.001 is usual.")
  _checks.check_scalar("eps", eps, fix="eps is added to the update norm; use 0.0 or more.")
  _checks.check_bools(keep_stats=keep_stats, positive_norms_only=positive_norms_only)
  if positive_norms_only and not _checks.is_zero_number(eps):
    raise ValueError("`positive_norms_only=True` (TF Model Garden's guard) needs `eps=0.0`.")
  no_decay = _checks.is_zero_number(weight_decay)

  def init_fn(params):
    bits = _tree.init_checks(name, params, trust_ratio_mask, ratio_arg, axis_name)
    _tree.init_checks(name, params, weight_decay_mask, decay_arg)  # a typo fails even at wd 0
    return _stats.init(keep_stats, callable(weight_decay), params, bits)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    u_leaves, p_leaves, treedef, adapt = _tree.flat_update_args(
      name, updates, params, trust_ratio_mask, ratio_arg
    )
    out, source = list(u_leaves), list(u_leaves)
    if not no_decay:
      decay = masks_lib.resolve(weight_decay_mask, params, arg=decay_arg, owner=name)
      wd = _tree.at_count(weight_decay, state)
      for i, (u, p) in enumerate(zip(u_leaves, p_leaves)):
        if decay[i]:
          out[i] = _numerics.decayed(u, p, wd)
          source[i] = _norm_source(out[i], u, p, wd) if adapt[i] else out[i]
    idx = [i for i, b in enumerate(adapt) if b]
    if not idx:
      return treedef.unflatten(out), _stats.step(state, treedef, idx, len(out))
    axes = _tree.checked_leaf_axes(name, axis_name, params, idx)
    pn, un = _numerics.layer_norms([[p_leaves[i] for i in idx], [source[i] for i in idx]], axes)
    if positive_norms_only:
      ratio = _numerics.trust_ratio_if_positive(pn, un, trust_coefficient)
    else:
      ratio = _numerics.trust_ratio(pn, un, trust_coefficient, eps)
    for k, i in enumerate(idx):
      out[i] = _numerics.scale(out[i], ratio[k])
    state = _stats.step(state, treedef, idx, len(out), (pn, un, ratio))
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _norm_source(decayed: jax.Array, u: jax.Array, p: jax.Array, wd: Any) -> jax.Array:
  """`decayed` (= u + wd p) recomputed as ``u - (-wd) p`` (the same rounding), which XLA
  does not merge with it: the norm then reads `u` and `p`, and `decayed` fuses into the
  scaled update, with no temporary. The barrier ties ``-wd`` to this leaf (else leaves of
  equal shape share one materialised broadcast of it). Speed only, never numbers."""
  if not isinstance(decayed, jax.core.Tracer):
    return decayed

  def cpu(u: jax.Array, p: jax.Array, decayed: jax.Array) -> jax.Array:
    pw = p.astype(_numerics.wide_dtype(p.dtype))
    neg, _ = _compat.optimization_barrier((-jnp.asarray(wd, jnp.result_type(wd, pw)), p))
    return (u.astype(_numerics.wide_dtype(u.dtype)) - neg * pw).astype(decayed.dtype)

  # Only XLA CPU needs it: the TPU compiler fuses `decayed` into both consumers itself,
  # and there the barrier costs HBM traffic and temporaries (benchmarks/RESULTS.md).
  return jax.lax.platform_dependent(u, p, decayed, cpu=cpu, default=lambda u, p, d: d)


def scale_by_sum_norms_trust_ratio(
  trust_coefficient: float | jax.Array = 0.001,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  eps: float | jax.Array = 1e-8,
  mask: masks_lib.Mask = None,
  *,
  adapt_without_decay: bool = False,
  clip_learning_rate: optax.ScalarOrSchedule | None = None,
  guard: Literal["pytorch", "timm", "flax"] = "pytorch",
  axis_name: AxisNames = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""The PyTorch LARS gradient rewrite: decay and scale by a sum-of-norms ratio.

  Per leaf :math:`w`, raw gradient :math:`g`, step :math:`c`, with :math:`\lambda_\ell =
  \lambda(c)` where `mask` is True and 0 elsewhere (a group with ``weight_decay=0``):

  .. math::

    r = \frac{\eta\,\|w\|}{\|g\| + \lambda_\ell\|w\| + \epsilon}, \qquad
    a = \min(r / \gamma(c), 1) \text{ with clip\_learning\_rate } \gamma
        \text{ (1 while } \gamma = 0\text{), else } r, \qquad
    d = a\,(g + \lambda_\ell w)

  on adapted leaves (:math:`\lambda_\ell \ne 0`, or all with `adapt_without_decay`); the
  others pass :math:`g` through. The denominator is the *sum* of the norms, on the raw
  gradient. Where a norm is zero the references differ (`guard`; `lars_jax._numerics`):

  * ``'pytorch'`` (Flash, Apex LARC): where a norm is 0, :math:`g` passes through.
  * ``'timm'``: :math:`r = 1` unless both norms are > 0 (NaN too); decay still added.
  * ``'flax'``: :math:`r = 1` where a norm is exactly 0; decay still added.

  Args:
    trust_coefficient: :math:`\eta \ge 0`.
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    eps: :math:`\epsilon \ge 0`, added to the denominator.
    mask: which leaves are in the decayed group (see `lars_jax.masks`); None: all.
    adapt_without_decay: adapt leaves whose decay is 0 too (LARC, timm, flax.optim).
    clip_learning_rate: :math:`\gamma` for LARC's and timm's clip (None: no clip).
    guard: the zero-norm rule, see above.
    axis_name: as in `scale_by_trust_ratio`.
    keep_stats: keep :math:`\|w\|`, :math:`\|g\|` and the applied factor (1 where the
      leaf passed through) in the state (`lars_jax.layer_stats`).

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])  # |w| = 5, |g| = 1
    >>> tx = lars_jax.scale_by_sum_norms_trust_ratio(0.001, weight_decay=0.1, eps=0.0)
    >>> d, _ = tx.update(g, tx.init(w), w)  # 0.001 * 5 / (1 + 0.1 * 5) * (g + 0.1 w)
    >>> d
    Array([0.003, 0.004], dtype=float32)
    >>> zero = jnp.zeros(2)  # a zero gradient: Flash passes it through, timm decays
    >>> for guard in ('pytorch', 'timm'):
    ...   tx = lars_jax.scale_by_sum_norms_trust_ratio(0.001, 0.1, guard=guard)
    ...   print(tx.update(zero, tx.init(w), w)[0])
    [0. 0.]
    [0.3 0.4]
  """
  name = "scale_by_sum_norms_trust_ratio"
  _checks.check_scalar("weight_decay", weight_decay, fix="Use 0.0 to disable it.")
  _checks.check_numbers(trust_coefficient=trust_coefficient, eps=eps)
  _checks.check_scalar("trust_coefficient", trust_coefficient)
  _checks.check_scalar("eps", eps)
  _checks.check_bools(adapt_without_decay=adapt_without_decay, keep_stats=keep_stats)
  if guard not in ("pytorch", "timm", "flax"):
    raise ValueError(f"`guard` must be 'pytorch', 'timm' or 'flax', got {guard!r}.")
  _checks.check_scalar("learning_rate", clip_learning_rate)  # LARC's and timm's name for it
  no_decay = _checks.is_zero_number(weight_decay)
  identity = no_decay and not adapt_without_decay
  counted = callable(weight_decay) or callable(clip_learning_rate)

  def init_fn(params):
    bits = _tree.init_checks(name, params, mask, "mask", axis_name)
    adapted = [b and not identity or adapt_without_decay for b in bits]
    return _stats.init(keep_stats, counted, params, adapted)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if identity:
      return updates, _tree.advance(state)
    g_leaves, p_leaves, treedef, decay = _tree.flat_update_args(name, updates, params, mask)
    idx = [i for i, b in enumerate(decay) if b or adapt_without_decay]
    if not idx:
      return updates, _stats.step(state, treedef, idx, len(g_leaves))
    wd = 0.0 if no_decay else _tree.at_count(weight_decay, state)
    axes = _tree.checked_leaf_axes(name, axis_name, params, idx)
    pn, gn = _numerics.layer_norms([[p_leaves[i] for i in idx], [g_leaves[i] for i in idx]], axes)
    wds = wd * jnp.asarray([decay[i] for i in idx], pn.dtype)
    if guard == "pytorch":
      ratio, ok = _numerics.sum_norms_ratio_if_nonzero(pn, gn, wds, trust_coefficient, eps)
    else:
      timm = guard == "timm"
      fn = _numerics.sum_norms_ratio_if_positive if timm else _numerics.sum_norms_ratio_unless_zero
      ratio, ok = fn(pn, gn, wds, trust_coefficient, eps), jnp.ones_like(pn, bool)
    if not adapt_without_decay:  # a leaf without weight decay passes through
      ok = ok & (wds != 0)
    if clip_learning_rate is not None:
      ratio = _numerics.clip_ratio(ratio, _tree.at_count(clip_learning_rate, state))
    out = list(g_leaves)
    for k, i in enumerate(idx):
      g = g_leaves[i]
      d = _numerics.decayed_wide(g, p_leaves[i], wd) if decay[i] and not no_decay else g
      d = d.astype(_numerics.wide_dtype(g.dtype)) * ratio[k]
      out[i] = jnp.where(ok[k], d, g.astype(d.dtype)).astype(g.dtype)
    applied = jnp.where(ok, ratio, 1.0)
    state = _stats.step(state, treedef, idx, len(out), (pn, gn, applied))
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_learning_rate(
  learning_rate: optax.ScalarOrSchedule, *, flip_sign: bool = True
) -> optax.GradientTransformationExtraArgs:
  r"""Multiplies updates by :math:`-\gamma` (or :math:`+\gamma` with ``flip_sign=False``).

  Update :math:`c = 0, 1, \dots` uses :math:`\gamma(c)`, multiplied in float32 or wider.

  Args:
    learning_rate: :math:`\gamma \ge 0`, or a schedule ``count -> rate``.
    flip_sign: negate, so that ``optax.apply_updates`` descends.

  Examples:
    >>> import jax.numpy as jnp, optax, lars_jax
    >>> tx = lars_jax.scale_by_learning_rate(optax.linear_schedule(0.0, 1.0, 4))
    >>> state = tx.init(jnp.zeros(1))
    >>> u0, state = tx.update(jnp.ones(1), state)  # schedule(0) = 0
    >>> u1, state = tx.update(jnp.ones(1), state)  # schedule(1) = 0.25
    >>> u0, u1
    (Array([-0.], dtype=float32), Array([-0.25], dtype=float32))
  """
  _checks.check_learning_rate(learning_rate)
  _checks.check_bools(flip_sign=flip_sign)
  sign = -1.0 if flip_sign else 1.0

  init_fn = lambda params: _tree.count_state(callable(learning_rate))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    step = sign * _tree.at_count(learning_rate, state)
    return jax.tree.map(lambda u: _numerics.scale(u, step), updates), _tree.advance(state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def trace(
  decay: float | jax.Array, nesterov: bool = False, accumulator_dtype: Any | None = None
) -> optax.GradientTransformationExtraArgs:
  r"""Momentum: :math:`t \leftarrow x + \mu t`; outputs :math:`t` (Nesterov: :math:`x + \mu t`).

  The buffer starts at zero. Same numbers as `optax.trace` (PyTorch's: `torch_trace`).

  Args:
    decay: the momentum :math:`\mu \in [0, 1)`.
    nesterov: use Nesterov momentum.
    accumulator_dtype: dtype of the buffer (default: each parameter's dtype), e.g.
      ``jnp.float32`` for bfloat16 parameters.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.trace(0.5, nesterov=True)
    >>> state = tx.init(jnp.zeros(1))
    >>> u, state = tx.update(jnp.ones(1), state)  # t = 1, out = 1 + 0.5 * 1
    >>> u, state.trace
    (Array([1.5], dtype=float32), Array([1.], dtype=float32))
  """
  name = "trace"
  _checks.check_momentum("decay", decay)
  _checks.check_bools(nesterov=nesterov)
  acc_dtype = _checks.accumulator_dtype(accumulator_dtype)

  def init_fn(params):
    _checks.check_float_leaves(name, params)
    return TraceState(trace=jax.tree.map(lambda p: jnp.zeros_like(p, acc_dtype), params))

  def step(x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    tn = x + decay * t
    return (x + decay * tn if nesterov else tn), tn

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    out, trace = _tree.momentum_map(name, updates, state.trace, step)
    return out, TraceState(trace=trace)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def torch_trace(
  decay: float | jax.Array,
  dampening: float | jax.Array = 0.0,
  *,
  nesterov: bool = False,
  accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""PyTorch's SGD momentum: the buffer is a copy of the first input, then
  :math:`t \leftarrow \mu t + (1 - \tau) x`; outputs :math:`t` (Nesterov:
  :math:`x + \mu t`).

  A Python ``decay`` of 0 is the identity; while an array ``decay`` is 0 the input
  passes through and neither buffer nor count moves, as in PyTorch.

  Args:
    decay: the momentum :math:`\mu \in [0, 1)`.
    dampening: :math:`\tau \in [0, 1]`.
    nesterov: Nesterov momentum (needs :math:`\mu > 0` and :math:`\tau = 0`, as PyTorch).
    accumulator_dtype: dtype of the buffer (default: each parameter's dtype).

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.torch_trace(0.9, dampening=0.5)
    >>> state = tx.init(jnp.zeros(1))
    >>> u, state = tx.update(jnp.ones(1), state)  # first step: t = x = 1
    >>> u, state = tx.update(jnp.ones(1), state)  # t = 0.9 * 1 + 0.5 * 1
    >>> u
    Array([1.4], dtype=float32)
  """
  name = "torch_trace"
  _checks.check_momentum("decay", decay)
  _checks.check_numbers(dampening=dampening)
  _checks.check_scalar("dampening", dampening, upper=1.0, upper_inclusive=True)
  _checks.check_bools(nesterov=nesterov)
  acc_dtype = _checks.accumulator_dtype(accumulator_dtype)
  mu, tau = _checks.concrete_float(decay), _checks.concrete_float(dampening)
  if nesterov and ((mu is not None and mu <= 0) or (tau is not None and tau != 0)):
    raise ValueError(
      f"`nesterov=True` needs momentum > 0 and `dampening` == 0 (as PyTorch), got "
      f"decay={decay!r}, dampening={dampening!r}."
    )
  if _checks.is_zero_number(decay):
    return optax.identity()
  gated = not isinstance(decay, (int, float))  # an array decay may be 0

  def init_fn(params):
    _checks.check_float_leaves(name, params)
    buf = jax.tree.map(lambda p: jnp.zeros_like(p, acc_dtype), params)
    return TorchTraceState(count=jnp.zeros([], jnp.int32), trace=buf)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    first, on = state.count == 0, decay != 0

    def step(x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
      tn = jnp.where(first, x, decay * t + (1 - dampening) * x)
      o = x + decay * tn if nesterov else tn
      return (jnp.where(on, o, x), jnp.where(on, tn, t)) if gated else (o, tn)

    out, trace = _tree.momentum_map(name, updates, state.trace, step)
    count = optax.safe_increment(state.count)
    count = jnp.where(on, count, state.count) if gated else count
    return out, TorchTraceState(count=count, trace=trace)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
