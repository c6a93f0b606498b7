"""The PyTorch LARS family: Lightning Flash (`torch_lars`), NVIDIA Apex (`larc`), timm
(`timm_lars`), and the gradient rewrite they share (`scale_by_sum_norms_trust_ratio`).

PyTorch's SGD momentum is `lars_jax.torch_trace`. As in `lars_jax.presets`, numeric
hyperparameters may be traced, and every preset takes ``axis_name`` and ``keep_stats``.
"""

from __future__ import annotations

import types
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from lars_jax import _checks, _numerics, _stats, _tree, transforms
from lars_jax import masks as masks_lib
from lars_jax._tree import AxisNames

__all__ = ["larc", "scale_by_sum_norms_trust_ratio", "timm_lars", "torch_lars"]

Guard = Literal["pytorch", "timm", "flax"]
_RATIOS = types.MappingProxyType(
  {
    "timm": _numerics.sum_norms_ratio_if_positive,
    "flax": _numerics.sum_norms_ratio_unless_zero,
  }
)


def scale_by_sum_norms_trust_ratio(
  trust_coefficient: float | jax.Array = 0.001,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  eps: float | jax.Array = 1e-8,
  mask: masks_lib.Mask = None,
  *,
  adapt_without_decay: bool = False,
  clip_learning_rate: optax.ScalarOrSchedule | None = None,
  guard: Guard = "pytorch",
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

  Returns:
    An `optax.GradientTransformationExtraArgs`.

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
  if clip_learning_rate is not None:
    _checks.check_scalar(
      "learning_rate", clip_learning_rate, fix="Pass the inner optimizer's learning rate."
    )
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
      ratio, ok = _numerics.sum_norms_ratio_if_nonzero(
        pn, gn, wds, trust_coefficient, eps, need_decay=not adapt_without_decay
      )
    else:
      ratio = _RATIOS[guard](pn, gn, wds, trust_coefficient, eps)
      ok = jnp.ones_like(ratio, bool) if adapt_without_decay else wds != 0
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


def torch_lars(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float | jax.Array = 0.0,
  dampening: float | jax.Array = 0.0,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  nesterov: bool = False,
  trust_coefficient: float | jax.Array = 0.001,
  eps: float | jax.Array = 1e-8,
  weight_decay_mask: masks_lib.Mask = True,
  *,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""The PyTorch LARS of Lightning Flash (SimCLR/BYOL lineage), same defaults.

  .. math::

    d &= \frac{\eta\|w\|}{\|g\| + \lambda\|w\| + \epsilon}\,(g + \lambda w)
      \quad\text{if } \lambda \ne 0,\ \|w\| > 0,\ \|g\| > 0\text{, else } g \\
    b &= d \ \text{(first step)}, \quad b \leftarrow \mu b + (1 - \tau) d \ \text{(later)},
      \qquad d \leftarrow d + \mu b \text{ (Nesterov) or } b \\
    w &\leftarrow w - \gamma(c)\, d

  with :math:`g` the raw gradient. Leaves where `weight_decay_mask` is False (a group
  with ``weight_decay=0``) are neither decayed nor adapted.

  Args:
    learning_rate: :math:`\gamma \ge 0`, or a schedule (read at 0 on the first step).
    momentum: :math:`\mu \in [0, 1)`.
    dampening: :math:`\tau \in [0, 1]`.
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    nesterov: Nesterov momentum (needs :math:`\mu > 0`, :math:`\tau = 0`).
    trust_coefficient: :math:`\eta \ge 0`.
    eps: :math:`\epsilon \ge 0`, added to the denominator.
    weight_decay_mask: which leaves are in the decayed group (see `lars_jax.masks`).

  Returns:
    An `optax.GradientTransformationExtraArgs`: ``chain(scale_by_sum_norms_trust_ratio,
    torch_trace, scale_by_learning_rate)``.

  Examples:
    The ratio divides by :math:`\|g\| + \lambda\|w\|`, `lars` by :math:`\|g + \lambda w\|`:

    >>> import jax.numpy as jnp, lars_jax
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.4, -0.3])
    >>> for tx in (lars_jax.torch_lars(1.0, weight_decay=0.1, eps=0.0),
    ...            lars_jax.lars(1.0, weight_decay=0.1)):
    ...   u, _ = tx.update(g, tx.init(w), w)
    ...   print(u)  # torch_lars: 0.005 / 1.0 * (0.7, 0.1); lars: 0.005 / 0.7071 * (0.7, 0.1)
    [-0.0035 -0.0005]
    [-0.00495 -0.00071]
  """
  _checks.check_learning_rate(learning_rate)
  _checks.check_momentum("momentum", momentum)
  stats = {"axis_name": axis_name, "keep_stats": keep_stats}
  rewrite = scale_by_sum_norms_trust_ratio(
    trust_coefficient, weight_decay, eps, weight_decay_mask, **stats
  )
  return _torch_sgd(rewrite, learning_rate, momentum, dampening, nesterov)


def _torch_sgd(rewrite, learning_rate, momentum, dampening, nesterov):
  """`rewrite`, then PyTorch's SGD momentum, then the learning rate."""
  trace = transforms.torch_trace(momentum, dampening, nesterov=nesterov)
  return optax.chain(rewrite, trace, transforms.scale_by_learning_rate(learning_rate))


def larc(
  inner: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  *,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  trust_coefficient: float | jax.Array = 0.02,
  clip: bool = True,
  eps: float | jax.Array = 1e-8,
  weight_decay_mask: masks_lib.Mask = True,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""NVIDIA Apex's LARC around any optax optimizer.

  Each gradient is rewritten (`scale_by_sum_norms_trust_ratio` with
  ``adapt_without_decay=True``, clip mode :math:`\min(r/\gamma, 1)` or scale mode
  :math:`r`), then `inner` runs; give `inner` no weight decay. With ``optax.sgd`` and
  ``clip=False`` this is `torch_lars` with ``trust_coefficient=0.02``.

  Args:
    inner: the optimizer to wrap, e.g. ``optax.sgd(lr, momentum=0.9)``.
    learning_rate: :math:`\gamma`, the inner optimizer's learning rate or schedule.
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    trust_coefficient: :math:`\eta \ge 0` (Apex's default 0.02).
    clip: clip mode (Apex's default) if True, scale mode if False.
    eps: :math:`\epsilon \ge 0`.
    weight_decay_mask: which leaves are in the decayed parameter group; the others
      are adapted without decay, as LARC does.

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    Clip mode caps each layer's rate at the global one:

    >>> import jax.numpy as jnp, optax, lars_jax
    >>> params = {'big': jnp.array([30.0, 40.0]), 'small': jnp.array([0.3, 0.4])}
    >>> g = {'big': jnp.array([0.6, 0.8]), 'small': jnp.array([0.6, 0.8])}  # |g| = 1
    >>> tx = lars_jax.larc(optax.sgd(0.1), learning_rate=0.1, eps=0.0)
    >>> u, _ = tx.update(g, tx.init(params), params)  # r = 1.0 and 0.01
    >>> print(u['big'], u['small'])  # rates min(r, 0.1): 0.1 and 0.01
    [-0.06 -0.08] [-0.006 -0.008]
  """
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(
      "`inner` must be an optax GradientTransformation (e.g. optax.sgd(lr, "
      f"momentum=0.9)), got {type(inner).__name__}."
    )
  _checks.check_learning_rate(learning_rate)
  _checks.check_bools(clip=clip)
  kw = {"adapt_without_decay": True, "clip_learning_rate": learning_rate if clip else None}
  stats = {"axis_name": axis_name, "keep_stats": keep_stats}
  rewrite = scale_by_sum_norms_trust_ratio(
    trust_coefficient, weight_decay, eps, weight_decay_mask, **kw, **stats
  )
  return optax.chain(rewrite, inner)


def timm_lars(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float | jax.Array = 0.0,
  dampening: float | jax.Array = 0.0,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  *,
  nesterov: bool = False,
  trust_coeff: float | jax.Array = 0.001,
  eps: float | jax.Array = 1e-8,
  trust_clip: bool = False,
  always_adapt: bool = False,
  weight_decay_mask: masks_lib.Mask = True,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""timm's ``Lars`` (``timm.optim.Lars``), same keywords and defaults.

  Per leaf :math:`w`, raw gradient :math:`g`, group decay :math:`\lambda` (0 where
  `weight_decay_mask` is False):

  .. math::

    r &= \eta\|w\| / (\|g\| + \lambda\|w\| + \epsilon) \ \text{(1 unless both norms} > 0),
      \quad r \leftarrow \min(r / \gamma(c), 1) \text{ with trust\_clip} \\
    d &= r\,(g + \lambda w) \ \text{if } \lambda \ne 0 \text{ or always\_adapt, else } g \\
    b &= d \ \text{(first step)}, \quad b \leftarrow \mu b + (1 - \tau) d, \qquad
    w \leftarrow w - \gamma(c)\,(b \text{, or } d + \mu b \text{ with Nesterov})

  Args:
    learning_rate, momentum, dampening, weight_decay, nesterov, eps: as in `torch_lars`.
    trust_coeff: :math:`\eta \ge 0`.
    trust_clip: clip the ratio to :math:`\min(r/\gamma, 1)`.
    always_adapt: adapt the group without weight decay too.
    weight_decay_mask: which leaves are in the decayed group (see `lars_jax.masks`).

  Returns:
    An `optax.GradientTransformationExtraArgs`: ``chain(scale_by_sum_norms_trust_ratio(
    guard='timm'), torch_trace, scale_by_learning_rate)``.

  Examples:
    ``trust_clip`` clips the zero-gradient fallback ratio 1 to :math:`1/\gamma`:

    >>> import jax.numpy as jnp, lars_jax
    >>> w, g = jnp.array([3.0, 4.0]), jnp.zeros(2)
    >>> for clip in (False, True):
    ...   tx = lars_jax.timm_lars(2.0, weight_decay=0.1, trust_clip=clip)
    ...   print(tx.update(g, tx.init(w), w)[0])  # -2 * r * 0.1 * w, r = 1 then 0.5
    [-0.6 -0.8]
    [-0.3 -0.4]
  """
  _checks.check_learning_rate(learning_rate)
  _checks.check_momentum("momentum", momentum)
  _checks.check_bools(trust_clip=trust_clip, always_adapt=always_adapt)
  clip_lr = learning_rate if trust_clip else None
  kw = {"adapt_without_decay": always_adapt, "clip_learning_rate": clip_lr, "guard": "timm"}
  stats = {"axis_name": axis_name, "keep_stats": keep_stats}
  rewrite = scale_by_sum_norms_trust_ratio(
    trust_coeff, weight_decay, eps, weight_decay_mask, **kw, **stats
  )
  return _torch_sgd(rewrite, learning_rate, momentum, dampening, nesterov)
