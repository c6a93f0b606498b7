"""Framework presets, each a thin `optax.chain` of the public transforms with its reference's
numbers and zero guards (README: "How the variants differ"): TF Model Garden (`tf_lars`, and
`keras_clip`), DeepMind BYOL (`byol_lars`), flax.optim (`flax_lars`), Lightning Flash
(`torch_lars`), NVIDIA Apex (`larc`) and timm (`timm_lars`). Numeric hyperparameters may be
traced; each preset also takes ``axis_name`` and ``keep_stats`` (as `scale_by_trust_ratio`)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from lars_jax import _checks, _numerics, _tree, transforms
from lars_jax import masks as masks_lib
from lars_jax._tree import AxisNames

__all__ = ["byol_lars", "flax_lars", "keras_clip", "larc", "tf_lars", "timm_lars", "torch_lars"]


def keras_clip(
  clipvalue: float | jax.Array | None = None,
  clipnorm: float | jax.Array | None = None,
  global_clipnorm: float | jax.Array | None = None,
  *,
  axis_name: AxisNames = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient clipping as a Keras optimizer's ``clipvalue``/``clipnorm``/``global_clipnorm``,
  in Keras' order, each only when given:

  .. math::

    g &\leftarrow \operatorname{clip}(g, -c_v, c_v) \quad\text{elementwise} \\
    g &\leftarrow g \cdot c_n / \max(\|g\|, c_n) \quad\text{per leaf} \\
    g &\leftarrow g \cdot c_g / \max(N, c_g), \qquad N = \sqrt{\textstyle\sum_\ell \|g_\ell\|^2}

  ``clipnorm`` and ``global_clipnorm`` exclude each other, as in Keras. A leaf within
  the bound is returned unchanged.

  Args:
    clipvalue: :math:`c_v \ge 0`, the elementwise bound (real leaves only).
    clipnorm: :math:`c_n \ge 0`, the bound on each leaf's L2 norm.
    global_clipnorm: :math:`c_g \ge 0`, the bound on the norm of all leaves together.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> tx = lars_jax.keras_clip(clipnorm=1.0)
    >>> g = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([0.5])}
    >>> clipped, _ = tx.update(g, tx.init(g))
    >>> clipped['a'], clipped['b']  # |a| = 5 -> 1; |b| = 0.5 is kept
    (Array([0.6, 0.8], dtype=float32), Array([0.5], dtype=float32))
  """
  name = "keras_clip"
  bounds = {"clipvalue": clipvalue, "clipnorm": clipnorm, "global_clipnorm": global_clipnorm}
  _checks.check_numbers(**bounds)
  for arg, value in bounds.items():
    _checks.check_scalar(arg, value, fix="Use None to disable it.")
  if clipnorm is not None and global_clipnorm is not None:
    raise ValueError(
      "`clipnorm` and `global_clipnorm` cannot both be set (Keras rejects this too): "
      "pass one of them."
    )
  by_norm = clipnorm if clipnorm is not None else global_clipnorm

  init_fn = lambda params: optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    leaves, treedef = jax.tree.flatten(updates)
    if not leaves:
      return updates, state
    if clipvalue is not None:
      if any(jnp.iscomplexobj(g) for g in leaves):
        raise TypeError(
          f"{name}: `clipvalue` clips real values elementwise; got a complex gradient. "
          "Use `clipnorm` or `global_clipnorm` for complex parameters."
        )
      wide = lambda g: g.astype(_numerics.wide_dtype(g.dtype))
      leaves = [jnp.clip(wide(g), -clipvalue, clipvalue).astype(g.dtype) for g in leaves]
    if by_norm is not None:
      (norms,) = _numerics.layer_norms([leaves], _tree.leaf_axes(axis_name, updates))
      if clipnorm is None:  # one global norm for every leaf
        norms = jnp.broadcast_to(_numerics.safe_sqrt(jnp.sum(jnp.square(norms))), norms.shape)
      big = norms > by_norm
      scale = _numerics.ratio_where(big, by_norm, norms)
      leaves = [jnp.where(big[i], _numerics.scale(g, scale[i]), g) for i, g in enumerate(leaves)]
    return treedef.unflatten(leaves), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _exclude_mask(patterns: Sequence[str] | None, arg: str) -> masks_lib.Mask:
  """True where no pattern is found (re.search) in the '/'-joined path."""
  if patterns is None:
    return True
  if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Sequence):
    raise TypeError(
      f"`{arg}` must be a list of regular expressions (e.g. ['bias', 'BatchNorm']), "
      f"got {patterns!r}."
    )
  masks_lib.compile_patterns(patterns, arg)  # the error names `arg`
  return masks_lib.exclude_names(*patterns, match="search")


def tf_lars(
  learning_rate: optax.ScalarOrSchedule = 0.01,
  momentum: float | jax.Array = 0.9,
  weight_decay_rate: optax.ScalarOrSchedule = 0.0,
  eeta: float | jax.Array = 0.001,
  nesterov: bool = False,
  classic_momentum: bool = True,
  exclude_from_weight_decay: Sequence[str] | None = None,
  exclude_from_layer_adaptation: Sequence[str] | None = None,
  clipnorm: float | jax.Array | None = None,
  clipvalue: float | jax.Array | None = None,
  global_clipnorm: float | jax.Array | None = None,
  *,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""TensorFlow Model Garden's LARS (``tfm.optimization.lars.LARS``), same defaults.

  Per leaf :math:`w` named by its '/'-joined path, gradient :math:`g`, step :math:`c`:

  1. Keras clipping of the raw gradients (`keras_clip`).
  2. :math:`g \leftarrow g + \lambda w` unless `exclude_from_weight_decay` matches the
     name (``re.search``; a pattern that matches no parameter raises).
  3. :math:`\rho(x) = \eta\|w\|/\|x\|`, 1 unless both norms are > 0 or where
     `exclude_from_layer_adaptation` (by default `exclude_from_weight_decay`) matches.
  4. Classic momentum: :math:`v \leftarrow \mu v + \gamma(c)\rho(g) g`, :math:`w \leftarrow
     w - v` (`lars` with ``eps=0``); popular: :math:`v \leftarrow \mu v + g`, :math:`w
     \leftarrow w - \gamma(c)\rho(v) v`. Nesterov uses :math:`\mu v` + this step's term.

  Args:
    learning_rate: :math:`\gamma \ge 0`, or a schedule.
    momentum: :math:`\mu \in [0, 1)`.
    weight_decay_rate: :math:`\lambda \ge 0`, or a schedule.
    eeta: the trust coefficient :math:`\eta \ge 0`.
    nesterov: Nesterov momentum.
    classic_momentum: classic (True) or popular (False) momentum, see above.
    exclude_from_weight_decay: regexes; matching leaves are not decayed.
    exclude_from_layer_adaptation: regexes; matching leaves get :math:`\rho = 1`.
    clipnorm, clipvalue, global_clipnorm: Keras clipping (`keras_clip`; None: off).

  Returns:
    Classic ``chain(keras_clip, scale_by_trust_ratio_with_decay, scale_by_learning_rate,
    trace)``; popular ``chain(keras_clip, add_decayed_weights, trace, scale_by_trust_ratio,
    scale_by_learning_rate)``; ratios with ``positive_norms_only=True``.

  Examples:
    >>> import jax.numpy as jnp, optax, lars_jax
    >>> params = {'dense': {'kernel': jnp.array([3.0, 4.0])}}
    >>> grads = [{'dense': {'kernel': jnp.array([1.0, 0.0])}},
    ...          {'dense': {'kernel': jnp.array([0.0, 1.0])}}]
    >>> for classic in (True, False):
    ...   tx = lars_jax.tf_lars(1.0, momentum=0.9, eeta=0.1, classic_momentum=classic)
    ...   state = tx.init(params)
    ...   for g in grads:
    ...     u, state = tx.update(g, state, params)
    ...   print(classic, u['dense']['kernel'])  # the second step differs
    True [-0.45 -0.5 ]
    False [-0.33448 -0.37165]
    >>> lars_jax.tf_lars(exclude_from_weight_decay=['bias']).init(params)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: exclude_names: pattern 'bias' matches no parameter ...
  """
  lr = transforms.scale_by_learning_rate(learning_rate)
  _checks.check_momentum("momentum", momentum)
  _checks.check_scalar("weight_decay_rate", weight_decay_rate, fix="Use 0.0 to disable it.")
  _checks.check_numbers(eeta=eeta)
  _checks.check_scalar("eeta", eeta, fix="0.001 is usual.")
  _checks.check_bools(nesterov=nesterov, classic_momentum=classic_momentum)
  decay_mask = _exclude_mask(exclude_from_weight_decay, "exclude_from_weight_decay")
  adapt_mask = _exclude_mask(exclude_from_layer_adaptation, "exclude_from_layer_adaptation")
  adapt_mask = adapt_mask if exclude_from_layer_adaptation else decay_mask
  clip = keras_clip(clipvalue, clipnorm, global_clipnorm, axis_name=axis_name)
  trace = transforms.trace(momentum, nesterov=nesterov)
  kw = {"axis_name": axis_name, "keep_stats": keep_stats, "positive_norms_only": True}
  if classic_momentum:
    masks = {"weight_decay_mask": decay_mask, "trust_ratio_mask": adapt_mask}
    ratio = transforms.scale_by_trust_ratio_with_decay(weight_decay_rate, eeta, **masks, **kw)
    return optax.chain(clip, ratio, lr, trace)
  decay = transforms.add_decayed_weights(weight_decay_rate, mask=decay_mask)
  return optax.chain(
    clip, decay, trace, transforms.scale_by_trust_ratio(eeta, 0.0, adapt_mask, **kw), lr
  )


def byol_lars(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  momentum: float | jax.Array = 0.9,
  eta: float | jax.Array = 1e-3,
  *,
  weight_decay_mask: masks_lib.Mask = True,
  trust_ratio_mask: masks_lib.Mask = True,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""DeepMind BYOL's LARS (``byol/utils/optimizers.py``), same defaults.

  .. math::

    u = g + \lambda w \ \text{(where weight\_decay\_mask)}, \qquad
    r = \eta\|w\| / \|u\| \ \text{(1 unless both norms} > 0\text{)}, \qquad
    m \leftarrow \mu m + r u, \qquad w \leftarrow w - \gamma(c)\, m

  The chain ``scale_by_trust_ratio_with_decay(positive_norms_only=True), trace,
  scale_by_learning_rate``: the rate multiplies the buffer (README, Migrating: BYOL).

  Args:
    learning_rate: :math:`\gamma \ge 0`, or a schedule (BYOL: warm-up + cosine).
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    momentum: :math:`\mu \in [0, 1)`.
    eta: the trust coefficient :math:`\eta \ge 0`.
    weight_decay_mask: which leaves to decay (BYOL's ``weight_decay_filter``).
    trust_ratio_mask: which leaves to adapt (BYOL's ``lars_adaptation_filter``).

  Examples:
    Under a warm-up, step 2 applies 0.2 to both gradients (`lars`: 0.1, then 0.2).

    >>> import jax.numpy as jnp, optax, lars_jax
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])  # r = 0.005
    >>> warmup = optax.linear_schedule(0.1, 0.2, 1)
    >>> for tx in (lars_jax.byol_lars(warmup), lars_jax.lars(warmup)):
    ...   state = tx.init(w)
    ...   for _ in range(2):
    ...     u, state = tx.update(g, state, w)
    ...   print(u)  # 0.2 * 0.005 * 1.9 * g;  (0.2 + 0.9 * 0.1) * 0.005 * g
    [-0.00114 -0.00152]
    [-0.00087 -0.00116]
  """
  lr = transforms.scale_by_learning_rate(learning_rate)
  _checks.check_momentum("momentum", momentum)
  _checks.check_numbers(eta=eta)
  kw = {"axis_name": axis_name, "keep_stats": keep_stats, "positive_norms_only": True}  # TF's guard
  masks = {"weight_decay_mask": weight_decay_mask, "trust_ratio_mask": trust_ratio_mask}
  ratio = transforms.scale_by_trust_ratio_with_decay(weight_decay, eta, **masks, **kw)
  return optax.chain(ratio, transforms.trace(momentum), lr)


def flax_lars(
  learning_rate: optax.ScalarOrSchedule,
  beta: float | jax.Array = 0.9,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  trust_coefficient: float | jax.Array = 0.001,
  eps: float | jax.Array = 0.0,
  *,
  nesterov: bool = False,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""flax.optim's ``LARS`` (the optimizer of the MLPerf v0.7 JAX ResNet-50), same defaults.

  .. math::

    r = \eta\|w\| / (\|g\| + \lambda\|w\| + \epsilon) \ \text{(1 where a norm is 0)},
    \qquad v \leftarrow \beta v + \gamma(c)\, r\,(g + \lambda w), \qquad w \leftarrow w - v

  (Nesterov: :math:`w \leftarrow w - (\gamma(c) r (g + \lambda w) + \beta v)`): the
  chain ``scale_by_sum_norms_trust_ratio(guard='flax', adapt_without_decay=True),
  scale_by_learning_rate, trace``, with flax's zero guard of September 2020.

  Args:
    learning_rate: :math:`\gamma \ge 0`, or a schedule.
    beta: the momentum :math:`\beta \in [0, 1)`.
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    trust_coefficient: :math:`\eta \ge 0`.
    eps: :math:`\epsilon \ge 0`.
    nesterov: Nesterov momentum.

  Examples:
    A zero gradient: `flax_lars` still decays the leaf; `torch_lars` passes it through.

    >>> import jax.numpy as jnp, lars_jax
    >>> w, g = jnp.array([3.0, 4.0]), jnp.zeros(2)
    >>> for tx in (lars_jax.flax_lars(0.5, weight_decay=0.1),
    ...            lars_jax.torch_lars(0.5, weight_decay=0.1)):
    ...   print(tx.update(g, tx.init(w), w)[0])  # -0.5 * 0.1 * w; 0
    [-0.15 -0.2 ]
    [-0. -0.]
  """
  lr = transforms.scale_by_learning_rate(learning_rate)
  _checks.check_momentum("beta", beta)
  trace = transforms.trace(beta, nesterov=nesterov)
  kw = {"adapt_without_decay": True, "guard": "flax", "axis_name": axis_name}
  rewrite = transforms.scale_by_sum_norms_trust_ratio(
    trust_coefficient, weight_decay, eps, **kw, keep_stats=keep_stats
  )
  return optax.chain(rewrite, lr, trace)


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
    ``chain(scale_by_sum_norms_trust_ratio, torch_trace, scale_by_learning_rate)``.

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
  _checks.check_momentum("momentum", momentum)
  stats = {"axis_name": axis_name, "keep_stats": keep_stats}
  rewrite = transforms.scale_by_sum_norms_trust_ratio(
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
  rewrite = transforms.scale_by_sum_norms_trust_ratio(
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
    ``chain(scale_by_sum_norms_trust_ratio(guard='timm'), torch_trace, scale_by_learning_rate)``.

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
  _checks.check_momentum("momentum", momentum)
  _checks.check_bools(trust_clip=trust_clip, always_adapt=always_adapt)
  clip_lr = learning_rate if trust_clip else None
  kw = {"adapt_without_decay": always_adapt, "clip_learning_rate": clip_lr, "guard": "timm"}
  stats = {"axis_name": axis_name, "keep_stats": keep_stats}
  rewrite = transforms.scale_by_sum_norms_trust_ratio(
    trust_coeff, weight_decay, eps, weight_decay_mask, **kw, **stats
  )
  return _torch_sgd(rewrite, learning_rate, momentum, dampening, nesterov)
