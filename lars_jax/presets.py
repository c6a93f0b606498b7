"""Framework presets: the LARS of TF Model Garden, Lightning Flash and NVIDIA Apex.

Each preset reproduces the update rule of one widely used implementation, so a recipe
tuned there gives the same numbers here. Each is a thin `optax.chain` of composable
transforms; where a framework's semantics differ from the core transforms, a small
transform below supplies the difference:

* `keras_clip`: Keras' ``clipvalue`` / ``clipnorm`` / ``global_clipnorm``.
* `scale_by_sum_norms_trust_ratio`: the PyTorch (Flash) local learning rate
  :math:`\\eta\\|w\\| / (\\|g\\| + \\lambda\\|w\\| + \\epsilon)` applied to :math:`g + \\lambda w`,
  with "no decay and no adaptation" where :math:`\\lambda = 0` or a norm is zero.
* `scale_by_larc`: NVIDIA Apex's LARC gradient rewrite (clip or scale mode).
* `torch_trace`: PyTorch SGD momentum (clone on the first step, dampening).

TF's "popular" momentum needs no new transform: it is `trace` followed by
`scale_by_trust_ratio`, so the ratio is taken on the momentum direction.

Norms are computed in float32 or wider (`lars_jax.transforms.layer_norms`), updates keep
the gradient's dtype, and zero parameters or gradients never produce NaN. Numeric
hyperparameters may be traced (`optax.inject_hyperparams`): they are never branched on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lars_jax import _checks, transforms
from lars_jax import masks as masks_lib
from lars_jax.transforms import AxisNames, ScalarOrSchedule

Patterns = Sequence[str] | None


class TorchTraceState(NamedTuple):
  """Steps taken with momentum so far, and the momentum buffer."""

  count: jax.Array
  trace: optax.Params


class ScaleBySumNormsTrustRatioState(NamedTuple):
  """Step count at which a weight-decay schedule is read next."""

  count: jax.Array


class ScaleByLarcState(NamedTuple):
  """Step count at which the learning-rate / weight-decay schedules are read next."""

  count: jax.Array


def _is_python_number(x: Any) -> bool:
  return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)


def _check_bool(name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise TypeError(f"`{name}` must be a bool (True or False), got {value!r}.")


def _check_not_schedule(name: str, value: Any) -> None:
  if callable(value):
    raise TypeError(
      f"`{name}` must be a number here, not a schedule (the framework this mimics "
      "takes a constant). Wrap the preset in `optax.inject_hyperparams` to change it "
      "during training."
    )


# ----------------------------------------------------------------------------
# Composable transforms.


def keras_clip(
  clipvalue: float | jax.Array | None = None,
  clipnorm: float | jax.Array | None = None,
  global_clipnorm: float | jax.Array | None = None,
  *,
  axis_name: AxisNames = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient clipping as a Keras optimizer's ``clipvalue``/``clipnorm``/``global_clipnorm``.

  Applied in Keras' order, each only when given (``None`` disables it):

  .. math::

    g &\leftarrow \operatorname{clip}(g, -c_v, c_v) \quad\text{elementwise} \\
    g &\leftarrow g \cdot c_n / \max(\|g\|, c_n) \quad\text{per leaf} \\
    g &\leftarrow g \cdot c_g / \max(N, c_g), \qquad N = \sqrt{\textstyle\sum_\ell \|g_\ell\|^2}

  ``clipnorm`` and ``global_clipnorm`` exclude each other, as in Keras. A leaf whose
  norm is within the bound is returned unchanged (no rounding). Norms are in float32
  or wider; under `shard_map` pass `axis_name` as for `scale_by_trust_ratio`.

  Args:
    clipvalue: :math:`c_v \ge 0`, the elementwise bound (real leaves only).
    clipnorm: :math:`c_n \ge 0`, the bound on each leaf's L2 norm.
    global_clipnorm: :math:`c_g \ge 0`, the bound on the norm of all leaves together.
    axis_name: mesh axes each leaf is split over under `shard_map` (see
      `scale_by_trust_ratio`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.keras_clip(clipnorm=1.0)
    >>> g = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([0.5])}
    >>> clipped, _ = tx.update(g, tx.init(g))
    >>> clipped['a'], clipped['b']  # |a| = 5 -> 1; |b| = 0.5 is kept
    (Array([0.6, 0.8], dtype=float32), Array([0.5], dtype=float32))
  """
  name = "keras_clip"
  for arg, value in [
    ("clipvalue", clipvalue),
    ("clipnorm", clipnorm),
    ("global_clipnorm", global_clipnorm),
  ]:
    _check_not_schedule(arg, value)
    _checks.check_scalar(arg, value, fix="Use None to disable it.")
  if clipnorm is not None and global_clipnorm is not None:
    raise ValueError(
      "`clipnorm` and `global_clipnorm` cannot both be set (Keras rejects this too): "
      "pass one of them."
    )
  by_norm = clipnorm if clipnorm is not None else global_clipnorm

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    leaves, treedef = jax.tree.flatten(updates)
    if not leaves:
      return updates, state
    if clipvalue is not None:
      out = []
      for g in leaves:
        if jnp.issubdtype(g.dtype, jnp.complexfloating):
          raise TypeError(
            f"{name}: `clipvalue` clips real values elementwise; got a {g.dtype} "
            "gradient. Use `clipnorm` or `global_clipnorm` for complex parameters."
          )
        wide = g.astype(transforms.wide_dtype(g.dtype))
        out.append(jnp.clip(wide, -clipvalue, clipvalue).astype(g.dtype))
      leaves = out
    if by_norm is not None:
      (norms,) = transforms.layer_norms([leaves], transforms.leaf_axes(axis_name, updates))
      if clipnorm is not None:
        big = norms > clipnorm
        scale = jnp.where(big, clipnorm / jnp.where(big, norms, 1.0), 1.0)
        leaves = [
          jnp.where(big[i], transforms._scale(g, scale[i]), g) for i, g in enumerate(leaves)
        ]
      else:
        total = transforms._safe_sqrt(jnp.sum(jnp.square(norms)))
        big = total > global_clipnorm
        scale = jnp.where(big, global_clipnorm / jnp.where(big, total, 1.0), 1.0)
        leaves = [jnp.where(big, transforms._scale(g, scale), g) for g in leaves]
    return treedef.unflatten(leaves), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_SUM_NORMS_WHERE = " of scale_by_sum_norms_trust_ratio (`weight_decay_mask` in torch_lars)"


def _sum_norms_rewrite(
  name: str,
  updates: Any,
  params: Any,
  *,
  trust_coefficient: Any,
  weight_decay: Any,
  eps: Any,
  mask: masks_lib.Mask,
  axis_name: AxisNames,
  need_decay: bool,
  clip_lr: Any = None,
) -> Any:
  """Shared by Flash and LARC: d = a (g + wd w) where adapted, else g untouched."""
  g_leaves, p_leaves, treedef, bits = transforms.flat_update_args(
    name, updates, params, mask, _SUM_NORMS_WHERE
  )
  idx = [i for i, b in enumerate(bits) if b]
  if not idx:
    return updates
  axes = transforms.leaf_axes(axis_name, params)
  pn, gn = transforms.layer_norms(
    [[p_leaves[i] for i in idx], [g_leaves[i] for i in idx]], [axes[i] for i in idx]
  )
  ok = (pn > 0) & (gn > 0)
  if need_decay:
    ok = ok & (weight_decay != 0)
  denom = jnp.where(ok, gn + weight_decay * pn + eps, 1.0)
  ratio = jnp.where(ok, trust_coefficient * pn / denom, 1.0)
  if clip_lr is not None:  # min(ratio / lr, 1); 1 when lr == 0 (no NaN)
    small = ratio < clip_lr
    ratio = jnp.where(small, ratio / jnp.where(small, clip_lr, 1.0), 1.0)
  out = list(g_leaves)
  for k, i in enumerate(idx):
    g, p = g_leaves[i], p_leaves[i]
    gw, pw = g.astype(transforms.wide_dtype(g.dtype)), p.astype(transforms.wide_dtype(p.dtype))
    out[i] = jnp.where(ok[k], (gw + weight_decay * pw) * ratio[k], gw).astype(g.dtype)
  return treedef.unflatten(out)


def scale_by_sum_norms_trust_ratio(
  trust_coefficient: float | jax.Array = 0.001,
  weight_decay: ScalarOrSchedule = 0.0,
  eps: float | jax.Array = 1e-8,
  mask: masks_lib.Mask = None,
  *,
  axis_name: AxisNames = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The PyTorch (Lightning Flash) LARS rewrite: decay and scale by a sum-of-norms ratio.

  For each leaf with parameter :math:`w` and raw gradient :math:`g`:

  .. math::

    d = \begin{cases}
      \dfrac{\eta\,\|w\|}{\|g\| + \lambda\|w\| + \epsilon}\,(g + \lambda w)
        & \text{if } \lambda \ne 0,\ \|w\| > 0,\ \|g\| > 0 \\
      g & \text{otherwise (no decay, no adaptation)}
    \end{cases}

  Unlike `scale_by_trust_ratio`, the denominator is the *sum* of the norms, taken on
  the raw gradient, and a leaf that is not adapted is not decayed either. Leaves where
  `mask` is False pass through untouched, as a PyTorch parameter group with
  ``weight_decay=0``. A Python ``weight_decay`` of 0 makes this the identity.

  Args:
    trust_coefficient: :math:`\eta \ge 0`.
    weight_decay: :math:`\lambda \ge 0`, or a schedule (step :math:`c` from 0 reads
      :math:`\lambda(c)`).
    eps: :math:`\epsilon \ge 0`, added to the denominator.
    mask: which leaves to decay and adapt (see `lars_jax.masks`); None: all.
    axis_name: mesh axes each leaf is split over under `shard_map` (see
      `scale_by_trust_ratio`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.scale_by_sum_norms_trust_ratio(0.001, weight_decay=0.1, eps=0.0)
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])  # |w| = 5, |g| = 1
    >>> d, _ = tx.update(g, tx.init(w), w)  # 0.001 * 5 / (1 + 0.1 * 5) * (g + 0.1 w)
    >>> d
    Array([0.003, 0.004], dtype=float32)
  """
  name = "scale_by_sum_norms_trust_ratio"
  _checks.check_scalar("weight_decay", weight_decay, fix="Use 0.0 to disable it.")
  for arg, value in [("trust_coefficient", trust_coefficient), ("eps", eps)]:
    _check_not_schedule(arg, value)
    _checks.check_scalar(arg, value)
  identity = _is_python_number(weight_decay) and float(weight_decay) == 0.0
  counted = callable(weight_decay)

  def init_fn(params):
    _checks.check_float_leaves(name, params)
    if jax.tree.leaves(params):  # not optax.tree_map_params' leafless placeholder
      masks_lib.resolve(mask, params, arg="mask", where=_SUM_NORMS_WHERE)
      transforms.leaf_axes(axis_name, params)
    if counted:
      return ScaleBySumNormsTrustRatioState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if identity:
      return updates, state
    wd = weight_decay
    if counted:
      wd = weight_decay(state.count)
      state = ScaleBySumNormsTrustRatioState(count=optax.safe_increment(state.count))
    out = _sum_norms_rewrite(
      name,
      updates,
      params,
      trust_coefficient=trust_coefficient,
      weight_decay=wd,
      eps=eps,
      mask=mask,
      axis_name=axis_name,
      need_decay=True,
    )
    return out, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_larc(
  learning_rate: ScalarOrSchedule,
  *,
  weight_decay: ScalarOrSchedule = 0.0,
  trust_coefficient: float | jax.Array = 0.02,
  clip: bool = True,
  eps: float | jax.Array = 1e-8,
  axis_name: AxisNames = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NVIDIA Apex's LARC gradient rewrite, to place before any optax optimizer.

  For each leaf with parameter :math:`w` and gradient :math:`g`, at step :math:`c`
  (counting from 0, as the inner optimizer's schedule):

  .. math::

    r &= \eta\,\|w\| / (\|g\| + \lambda\|w\| + \epsilon), \qquad
    a = \begin{cases} \min(r / \gamma(c),\ 1) & \text{clip mode} \\
                      r & \text{scale mode} \end{cases} \\
    g &\leftarrow a\,(g + \lambda w) \quad\text{if } \|w\| > 0 \text{ and }
      \|g\| > 0\text{, else } g \text{ untouched (no decay)}

  In clip mode the per-layer rate :math:`\gamma a` never exceeds the global
  :math:`\gamma` (with :math:`\gamma = 0`, :math:`a = 1`). The inner optimizer must
  not decay the weights again. `larc` chains this with the inner optimizer.

  Args:
    learning_rate: :math:`\gamma`, the inner optimizer's learning rate (or its
      schedule); only clip mode reads it.
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    trust_coefficient: :math:`\eta \ge 0` (Apex's default 0.02).
    clip: clip mode (Apex's default) if True, scale mode if False.
    eps: :math:`\epsilon \ge 0`.
    axis_name: mesh axes each leaf is split over under `shard_map` (see
      `scale_by_trust_ratio`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])  # |w| = 5, |g| = 1
    >>> tx = lars_jax.scale_by_larc(learning_rate=0.5, trust_coefficient=0.02, eps=0.0)
    >>> d, _ = tx.update(g, tx.init(w), w)  # r = 0.1, a = min(0.1 / 0.5, 1) = 0.2
    >>> d
    Array([0.12, 0.16], dtype=float32)
  """
  name = "scale_by_larc"
  _checks.check_scalar(
    "learning_rate", learning_rate, fix="Pass the inner optimizer's learning rate or schedule."
  )
  _checks.check_scalar("weight_decay", weight_decay, fix="Use 0.0 to disable it.")
  for arg, value in [("trust_coefficient", trust_coefficient), ("eps", eps)]:
    _check_not_schedule(arg, value)
    _checks.check_scalar(arg, value)
  _check_bool("clip", clip)
  counted = (clip and callable(learning_rate)) or callable(weight_decay)

  def init_fn(params):
    _checks.check_float_leaves(name, params)
    if jax.tree.leaves(params):
      transforms.leaf_axes(axis_name, params)
    if counted:
      return ScaleByLarcState(count=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    at = lambda x: x(state.count) if callable(x) else x  # noqa: E731
    out = _sum_norms_rewrite(
      name,
      updates,
      params,
      trust_coefficient=trust_coefficient,
      weight_decay=at(weight_decay),
      eps=eps,
      mask=None,
      axis_name=axis_name,
      need_decay=False,
      clip_lr=at(learning_rate) if clip else None,
    )
    if counted:
      state = ScaleByLarcState(count=optax.safe_increment(state.count))
    return out, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def torch_trace(
  momentum: float | jax.Array,
  dampening: float | jax.Array = 0.0,
  *,
  nesterov: bool = False,
  accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""PyTorch SGD momentum: clone on the first step, then dampened accumulation.

  .. math::

    b_1 = d_1, \qquad b_t = \mu\, b_{t-1} + (1 - \tau)\, d_t \ (t > 1), \qquad
    \text{out}_t = \begin{cases} d_t + \mu\, b_t & \text{Nesterov} \\ b_t \end{cases}

  with dampening :math:`\tau`. With :math:`\tau = 0` this equals `trace`. A Python
  ``momentum`` of 0 keeps no buffer (the identity, as PyTorch); an array momentum
  (e.g. under `optax.inject_hyperparams`) keeps one, and while it is 0 the input
  passes through and the buffer is left alone.

  Args:
    momentum: :math:`\mu \in [0, 1)`.
    dampening: :math:`\tau \in [0, 1]`.
    nesterov: Nesterov momentum (needs :math:`\mu > 0` and :math:`\tau = 0`).
    accumulator_dtype: dtype of the buffer; defaults to each parameter's dtype.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.torch_trace(0.9, dampening=0.5)
    >>> state = tx.init(jnp.zeros(1))
    >>> u, state = tx.update(jnp.ones(1), state)  # first step: b = d = 1
    >>> u, state = tx.update(jnp.ones(1), state)  # b = 0.9 * 1 + 0.5 * 1
    >>> u
    Array([1.4], dtype=float32)
  """
  name = "torch_trace"
  _checks.check_momentum("momentum", momentum)
  _checks.check_scalar("dampening", dampening, upper=1.0, upper_inclusive=True)
  _check_bool("nesterov", nesterov)
  if nesterov:
    mu, tau = _checks.concrete_float(momentum), _checks.concrete_float(dampening)
    if (mu is not None and mu <= 0) or (tau is not None and tau != 0):
      raise ValueError(
        f"`nesterov=True` needs `momentum` > 0 and `dampening` == 0 (as PyTorch), got "
        f"momentum={momentum!r}, dampening={dampening!r}."
      )
  no_buffer = _is_python_number(momentum) and float(momentum) == 0.0
  always_on = _is_python_number(momentum)
  acc_dtype = None if accumulator_dtype is None else jnp.dtype(accumulator_dtype)

  def init_fn(params):
    if no_buffer:
      return optax.EmptyState()
    _checks.check_float_leaves(name, params)
    return TorchTraceState(
      count=jnp.zeros([], jnp.int32),
      trace=jax.tree.map(lambda p: transforms._zeros_like(p, acc_dtype), params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if no_buffer:
      return updates, state
    d_leaves, treedef = jax.tree.flatten(updates)
    b_leaves = transforms.flatten_like(state.trace, treedef, "state.trace", name)
    first = state.count == 0
    on = None if always_on else momentum != 0
    new_b, out = [], []
    for d, b in zip(d_leaves, b_leaves):
      acc = jnp.promote_types(transforms.wide_dtype(d.dtype), transforms.wide_dtype(b.dtype))
      dw, bw = d.astype(acc), b.astype(acc)
      bn = jnp.where(first, dw, momentum * bw + (1 - dampening) * dw)
      o = dw + momentum * bn if nesterov else bn
      if on is not None:
        bn, o = jnp.where(on, bn, bw), jnp.where(on, o, dw)
      new_b.append(bn.astype(b.dtype))
      out.append(o.astype(d.dtype))
    count = optax.safe_increment(state.count)
    if on is not None:
      count = jnp.where(on, count, state.count)
    return treedef.unflatten(out), TorchTraceState(count=count, trace=treedef.unflatten(new_b))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----------------------------------------------------------------------------
# Presets.


def _exclude_mask(patterns: Patterns, arg: str) -> masks_lib.Mask:
  """True where no pattern is found (re.search) in the '/'-joined path."""
  if patterns is None:
    return True
  if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Sequence):
    raise TypeError(
      f"`{arg}` must be a list of regular expressions (e.g. ['bias', 'BatchNorm']), "
      f"got {patterns!r}."
    )
  if not patterns:
    return True
  for p in patterns:
    if not isinstance(p, str):
      raise TypeError(f"`{arg}`: patterns must be strings, got {p!r}.")
    try:
      re.compile(p)
    except re.error as e:
      raise ValueError(f"`{arg}`: {p!r} is not a valid regular expression: {e}.") from e
  return masks_lib.exclude_names(*patterns, match="search")


def tf_lars(
  learning_rate: ScalarOrSchedule = 0.01,
  momentum: float | jax.Array = 0.9,
  weight_decay_rate: ScalarOrSchedule = 0.0,
  eeta: float | jax.Array = 0.001,
  nesterov: bool = False,
  classic_momentum: bool = True,
  exclude_from_weight_decay: Patterns = None,
  exclude_from_layer_adaptation: Patterns = None,
  clipnorm: float | jax.Array | None = None,
  clipvalue: float | jax.Array | None = None,
  global_clipnorm: float | jax.Array | None = None,
  *,
  axis_name: AxisNames = None,
) -> optax.GradientTransformationExtraArgs:
  r"""TensorFlow Model Garden's LARS (``tfm.optimization.lars.LARS``), same defaults.

  Per leaf :math:`w` named by its '/'-joined path (`lars_jax.masks.path_str`, e.g.
  ``params/Dense_0/kernel``), gradient :math:`g`, step :math:`c = 0, 1, \dots`:

  1. Keras clipping of the raw gradients (`keras_clip`).
  2. :math:`g \leftarrow g + \lambda w`, unless :math:`\lambda = 0` or a pattern of
     `exclude_from_weight_decay` is found in the name (``re.search``).
  3. :math:`\rho(x) = \eta\|w\|/\|x\|` (1 if either norm is 0, or if the name matches
     `exclude_from_layer_adaptation`, which defaults to `exclude_from_weight_decay`
     when None or empty: a :math:`\lambda = 0` config still stops adaptation there).
  4. Classic momentum (default): :math:`v \leftarrow \mu v + \gamma(c)\rho(g) g`,
     :math:`w \leftarrow w - v` (Nesterov: :math:`w \leftarrow w - (\mu v + \gamma(c)\rho(g) g)`).
     This is `lars_jax.lars` with ``eps=0``: the learning rate sits inside the buffer.
  5. Popular momentum (``classic_momentum=False``): :math:`v \leftarrow \mu v + g`,
     :math:`u = v` (Nesterov: :math:`\mu v + g`), :math:`w \leftarrow w - \gamma(c)\rho(u) u`:
     the ratio is taken on the momentum direction and the rate sits outside the buffer.

  The chain (``keras_clip, add_decayed_weights``, then classic:
  ``scale_by_trust_ratio, scale_by_learning_rate, trace``; popular:
  ``trace, scale_by_trust_ratio, scale_by_learning_rate``). A pattern that matches no
  parameter raises ``ValueError`` listing real paths (Model Garden ignores it
  silently; here it is almost always a Keras name such as ``batch_normalization``
  that your JAX model spells ``BatchNorm_0``).

  Args:
    learning_rate: :math:`\gamma \ge 0`, or a schedule (read at 0 on the first step).
    momentum: :math:`\mu \in [0, 1)`.
    weight_decay_rate: :math:`\lambda \ge 0`, or a schedule (Keras takes a number).
    eeta: the trust coefficient :math:`\eta \ge 0`.
    nesterov: Nesterov momentum.
    classic_momentum: classic (True) or popular (False) momentum, see above.
    exclude_from_weight_decay: regexes; matching leaves are not decayed.
    exclude_from_layer_adaptation: regexes; matching leaves get :math:`\rho = 1`.
    clipnorm: Keras per-tensor norm clipping (None: off).
    clipvalue: Keras elementwise value clipping (None: off).
    global_clipnorm: Keras global norm clipping (None: off).
    axis_name: mesh axes each leaf is split over under `shard_map` (see
      `scale_by_trust_ratio`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, lars_jax
    >>> def f(p): return jnp.sum(p['dense']['kernel'] ** 2)
    >>> params = {'dense': {'kernel': jnp.array([1.0, 2.0, 3.0])}}
    >>> lars_jax.tf_lars(exclude_from_weight_decay=['bias']).init(params)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: exclude_names: pattern 'bias' matches no parameter ... 'dense/kernel'.
    >>> solver = lars_jax.tf_lars(learning_rate=100.0, weight_decay_rate=1e-4)
    >>> opt_state = solver.init(params)
    >>> for _ in range(5):
    ...   grads = jax.grad(f)(params)
    ...   updates, opt_state = solver.update(grads, opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f'Objective function: {f(params):.2E}')
    Objective function: 1.13E+01
    Objective function: 7.26E+00
    Objective function: 3.31E+00
    Objective function: 7.20E-01
    Objective function: 1.19E-02

  References:
    You, Gitman & Ginsburg, `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`_, 2017.
  """
  _checks.check_scalar(
    "learning_rate", learning_rate, fix="Pass a non-negative number or an optax schedule."
  )
  _checks.check_momentum("momentum", momentum)
  _checks.check_scalar("weight_decay_rate", weight_decay_rate, fix="Use 0.0 to disable it.")
  _check_not_schedule("eeta", eeta)
  _checks.check_scalar("eeta", eeta, fix="0.001 is usual.")
  _check_bool("nesterov", nesterov)
  _check_bool("classic_momentum", classic_momentum)
  decay_mask = _exclude_mask(exclude_from_weight_decay, "exclude_from_weight_decay")
  if exclude_from_layer_adaptation:
    adapt_mask = _exclude_mask(exclude_from_layer_adaptation, "exclude_from_layer_adaptation")
  else:
    _exclude_mask(exclude_from_layer_adaptation, "exclude_from_layer_adaptation")  # type
    adapt_mask = decay_mask
  clip = keras_clip(clipvalue, clipnorm, global_clipnorm, axis_name=axis_name)
  decay = transforms.add_decayed_weights(weight_decay_rate, mask=decay_mask)
  ratio = transforms.scale_by_trust_ratio(eeta, 0.0, mask=adapt_mask, axis_name=axis_name)
  lr = transforms.scale_by_learning_rate(learning_rate)
  momentum_tx = transforms.trace(momentum, nesterov=nesterov)
  if classic_momentum:
    return optax.chain(clip, decay, ratio, lr, momentum_tx)
  return optax.chain(clip, decay, momentum_tx, ratio, lr)


def torch_lars(
  learning_rate: ScalarOrSchedule,
  momentum: float | jax.Array = 0.0,
  dampening: float | jax.Array = 0.0,
  weight_decay: ScalarOrSchedule = 0.0,
  nesterov: bool = False,
  trust_coefficient: float | jax.Array = 0.001,
  eps: float | jax.Array = 1e-8,
  weight_decay_mask: masks_lib.Mask = True,
  *,
  axis_name: AxisNames = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The PyTorch LARS of Lightning Flash (SimCLR/BYOL lineage), same defaults.

  Per leaf :math:`w` with raw gradient :math:`g`:

  .. math::

    d &= \frac{\eta\|w\|}{\|g\| + \lambda\|w\| + \epsilon}\,(g + \lambda w)
      \quad\text{if } \lambda \ne 0,\ \|w\| > 0,\ \|g\| > 0\text{, else } g \\
    b &= d \ \text{(first step)}, \quad b \leftarrow \mu b + (1 - \tau) d \ \text{(later)},
      \qquad d \leftarrow d + \mu b \text{ (Nesterov) or } b \\
    w &\leftarrow w - \gamma(c)\, d

  The chain ``scale_by_sum_norms_trust_ratio, torch_trace, scale_by_learning_rate``:
  the learning rate is applied *after* the momentum. Leaves where `weight_decay_mask`
  is False behave as a parameter group with ``weight_decay=0``: neither decayed nor
  adapted (plain momentum SGD). With the defaults (:math:`\lambda = 0`, :math:`\mu = 0`)
  this is plain SGD, as in Flash. A Python ``momentum=0`` keeps no buffer.

  Args:
    learning_rate: :math:`\gamma \ge 0`, or a schedule (read at 0 on the first step).
    momentum: :math:`\mu \in [0, 1)`.
    dampening: :math:`\tau \in [0, 1]`.
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    nesterov: Nesterov momentum (needs :math:`\mu > 0`, :math:`\tau = 0`).
    trust_coefficient: :math:`\eta \ge 0`.
    eps: :math:`\epsilon \ge 0`, added to the denominator.
    weight_decay_mask: which leaves are in the decayed group (see `lars_jax.masks`).
    axis_name: mesh axes each leaf is split over under `shard_map` (see
      `scale_by_trust_ratio`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, lars_jax
    >>> def f(x): return jnp.sum(x ** 2)
    >>> solver = lars_jax.torch_lars(learning_rate=100.0, momentum=0.9, weight_decay=1e-4)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> opt_state = solver.init(params)
    >>> for _ in range(5):
    ...   grad = jax.grad(f)(params)
    ...   updates, opt_state = solver.update(grad, opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f'Objective function: {f(params):.2E}')
    Objective function: 1.13E+01
    Objective function: 7.26E+00
    Objective function: 3.31E+00
    Objective function: 7.20E-01
    Objective function: 1.19E-02

  References:
    You, Gitman & Ginsburg, `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`_, 2017.
  """
  _checks.check_scalar(
    "learning_rate", learning_rate, fix="Pass a non-negative number or an optax schedule."
  )
  return optax.chain(
    scale_by_sum_norms_trust_ratio(
      trust_coefficient, weight_decay, eps, mask=weight_decay_mask, axis_name=axis_name
    ),
    torch_trace(momentum, dampening, nesterov=nesterov),
    transforms.scale_by_learning_rate(learning_rate),
  )


def larc(
  inner: optax.GradientTransformation,
  learning_rate: ScalarOrSchedule,
  *,
  weight_decay: ScalarOrSchedule = 0.0,
  trust_coefficient: float | jax.Array = 0.02,
  clip: bool = True,
  eps: float | jax.Array = 1e-8,
  axis_name: AxisNames = None,
) -> optax.GradientTransformationExtraArgs:
  r"""NVIDIA Apex's LARC around any optax optimizer: ``chain(scale_by_larc(...), inner)``.

  Each gradient is rewritten by `scale_by_larc` (sum-of-norms ratio, clip mode
  :math:`\min(r/\gamma, 1)` or scale mode :math:`r`, decay added only where both norms
  are non-zero), then `inner` runs. Pass the inner optimizer's learning rate (or the
  same schedule: both count steps from 0) as `learning_rate`, and give `inner` no
  weight decay of its own. ``larc(optax.sgd(lr, momentum=m), learning_rate=lr,
  weight_decay=wd, clip=False)`` equals ``torch_lars(lr, momentum=m,
  weight_decay=wd, trust_coefficient=0.02)`` (Apex over ``torch.optim.SGD``).

  Args:
    inner: the optimizer to wrap, e.g. ``optax.sgd(lr, momentum=0.9)``.
    learning_rate: :math:`\gamma`, the inner optimizer's learning rate or schedule.
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    trust_coefficient: :math:`\eta \ge 0` (Apex's default 0.02).
    clip: clip mode (Apex's default) if True, scale mode if False.
    eps: :math:`\epsilon \ge 0`.
    axis_name: mesh axes each leaf is split over under `shard_map` (see
      `scale_by_trust_ratio`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, lars_jax
    >>> def f(x): return jnp.sum(x ** 2)
    >>> solver = lars_jax.larc(optax.sgd(0.1, momentum=0.9), learning_rate=0.1)
    >>> params = jnp.array([1.0, 2.0, 3.0])
    >>> opt_state = solver.init(params)
    >>> for _ in range(5):
    ...   grad = jax.grad(f)(params)
    ...   updates, opt_state = solver.update(grad, opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f'Objective function: {f(params):.2E}')
    Objective function: 1.34E+01
    Objective function: 1.24E+01
    Objective function: 1.11E+01
    Objective function: 9.52E+00
    Objective function: 7.86E+00
  """
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      "`inner` must be an optax GradientTransformation (e.g. optax.sgd(lr, "
      f"momentum=0.9)), got {type(inner).__name__}."
    )
  return optax.chain(
    scale_by_larc(
      learning_rate,
      weight_decay=weight_decay,
      trust_coefficient=trust_coefficient,
      clip=clip,
      eps=eps,
      axis_name=axis_name,
    ),
    inner,
  )
