"""Framework presets: the LARS of TF Model Garden, Lightning Flash and NVIDIA Apex.

Each preset reproduces the update rule of one widely used implementation, so a recipe
tuned there gives the same numbers here, zero guards included. Each is a thin
`optax.chain` of composable transforms; where a framework's semantics differ from the
core transforms, a transform below supplies the difference:

* `keras_clip`: Keras' ``clipvalue`` / ``clipnorm`` / ``global_clipnorm``.
* `scale_by_sum_norms_trust_ratio`: the PyTorch local learning rate
  :math:`\\eta\\|w\\| / (\\|g\\| + \\lambda\\|w\\| + \\epsilon)` applied to :math:`g + \\lambda w`
  (Lightning Flash; Apex LARC with ``adapt_without_decay`` and clip mode).

PyTorch's SGD momentum is `lars_jax.trace` with a ``dampening``. TF's "popular"
momentum needs no new transform: it is `trace` followed by `scale_by_trust_ratio`, so
the ratio is taken on the momentum direction.

Numeric hyperparameters may be traced (`optax.inject_hyperparams`): they are never
branched on.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from lars_jax import _checks, _numerics, _tree, transforms
from lars_jax import masks as masks_lib
from lars_jax._tree import AxisNames

Patterns = Sequence[str] | None


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
    _checks.check_not_schedule(arg, value)
    _checks.check_scalar(arg, value, fix="Use None to disable it.")
  _checks.check_one_clipnorm(clipnorm, global_clipnorm)
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
        wide = g.astype(_numerics.wide_dtype(g.dtype))
        out.append(jnp.clip(wide, -clipvalue, clipvalue).astype(g.dtype))
      leaves = out
    if by_norm is not None:
      (norms,) = _numerics.layer_norms([leaves], _tree.leaf_axes(axis_name, updates))
      if clipnorm is not None:
        big = norms > clipnorm
        scale = jnp.where(big, clipnorm / jnp.where(big, norms, 1.0), 1.0)
        leaves = [jnp.where(big[i], _numerics.scale(g, scale[i]), g) for i, g in enumerate(leaves)]
      else:
        total = _numerics.safe_sqrt(jnp.sum(jnp.square(norms)))
        big = total > global_clipnorm
        scale = jnp.where(big, global_clipnorm / jnp.where(big, total, 1.0), 1.0)
        leaves = [jnp.where(big, _numerics.scale(g, scale), g) for g in leaves]
    return treedef.unflatten(leaves), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_sum_norms_trust_ratio(
  trust_coefficient: float | jax.Array = 0.001,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  eps: float | jax.Array = 1e-8,
  mask: masks_lib.Mask = None,
  *,
  adapt_without_decay: bool = False,
  clip_learning_rate: optax.ScalarOrSchedule | None = None,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""The PyTorch LARS gradient rewrite: decay and scale by a sum-of-norms ratio.

  For each leaf with parameter :math:`w` and raw gradient :math:`g`, at step :math:`c`:

  .. math::

    r &= \eta\,\|w\| / (\|g\| + \lambda\|w\| + \epsilon), \qquad
    a = \begin{cases} \min(r / \gamma(c),\ 1) & \text{with clip\_learning\_rate } \gamma \\
                      r & \text{otherwise} \end{cases} \\
    d &= \begin{cases}
      a\,(g + \lambda w) & \text{if } \|w\| \ne 0,\ \|g\| \ne 0
        \text{ (and } \lambda \ne 0 \text{ unless adapt\_without\_decay)} \\
      g & \text{otherwise (no decay, no adaptation)}
    \end{cases}

  Unlike `scale_by_trust_ratio`, the denominator is the *sum* of the norms, taken on
  the raw gradient, and a leaf that is not adapted is not decayed either. The guards
  are PyTorch's ``!= 0`` tests: a NaN or Inf norm makes the whole leaf NaN (or Inf).

  * Lightning Flash: the defaults. A leaf with :math:`\lambda = 0` (or where `mask` is
    False: a PyTorch parameter group with ``weight_decay=0``) is neither decayed nor
    adapted; a Python ``weight_decay`` of 0 makes this the identity.
  * NVIDIA Apex LARC: ``adapt_without_decay=True``, and in its clip mode
    ``clip_learning_rate`` = the inner optimizer's learning rate (or the same
    schedule), so the per-layer rate :math:`\gamma a` never exceeds :math:`\gamma`
    (:math:`a = 1` while :math:`\gamma = 0`).

  Args:
    trust_coefficient: :math:`\eta \ge 0`.
    weight_decay: :math:`\lambda \ge 0`, or a schedule (step :math:`c` from 0 reads
      :math:`\lambda(c)`).
    eps: :math:`\epsilon \ge 0`, added to the denominator.
    mask: which leaves to decay and adapt (see `lars_jax.masks`); None: all.
    adapt_without_decay: adapt leaves with :math:`\lambda = 0` too (LARC).
    clip_learning_rate: :math:`\gamma` for LARC's clip mode (None: scale mode).
    axis_name: mesh axes each leaf is split over under `shard_map` (see
      `scale_by_trust_ratio`).
    keep_stats: keep :math:`\|w\|`, :math:`\|g\|` and the applied factor :math:`a` per
      adapted leaf in the state (`lars_jax.layer_stats`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])  # |w| = 5, |g| = 1
    >>> tx = lars_jax.scale_by_sum_norms_trust_ratio(0.001, weight_decay=0.1, eps=0.0)
    >>> d, _ = tx.update(g, tx.init(w), w)  # 0.001 * 5 / (1 + 0.1 * 5) * (g + 0.1 w)
    >>> d
    Array([0.003, 0.004], dtype=float32)
    >>> larc = lars_jax.scale_by_sum_norms_trust_ratio(
    ...     0.02, eps=0.0, adapt_without_decay=True, clip_learning_rate=0.5)
    >>> d, _ = larc.update(g, larc.init(w), w)  # r = 0.1, a = min(0.1 / 0.5, 1) = 0.2
    >>> d
    Array([0.12, 0.16], dtype=float32)
  """
  name = "scale_by_sum_norms_trust_ratio"
  where = f" of {name} (`weight_decay_mask` in torch_lars)"
  _checks.check_scalar("weight_decay", weight_decay, fix="Use 0.0 to disable it.")
  for arg, value in [("trust_coefficient", trust_coefficient), ("eps", eps)]:
    _checks.check_not_schedule(arg, value)
    _checks.check_scalar(arg, value)
  _checks.check_bool("adapt_without_decay", adapt_without_decay)
  _checks.check_bool("keep_stats", keep_stats)
  if clip_learning_rate is not None:
    _checks.check_scalar(
      "learning_rate", clip_learning_rate, fix="Pass the inner optimizer's learning rate."
    )
  identity = not adapt_without_decay and _checks.is_zero_number(weight_decay)
  counted = callable(weight_decay) or callable(clip_learning_rate)

  def init_fn(params):
    bits = _tree.init_checks(name, params, mask, where, axis_name)
    return transforms.init_stats(keep_stats, counted, params, bits)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if identity:
      return updates, state
    g_leaves, p_leaves, treedef, bits = _tree.flat_update_args(name, updates, params, mask, where)
    idx = [i for i, b in enumerate(bits) if b]
    if not idx:
      return updates, transforms.next_state(state, treedef, idx, len(g_leaves), ())
    wd = _tree.at_count(weight_decay, state)
    axes = _tree.checked_leaf_axes(name, axis_name, params, idx)
    pn, gn = _numerics.layer_norms([[p_leaves[i] for i in idx], [g_leaves[i] for i in idx]], axes)
    ok = (pn != 0) & (gn != 0)
    if not adapt_without_decay:
      ok = ok & (wd != 0)
    denom = jnp.where(ok, gn + wd * pn + eps, 1.0)
    ratio = jnp.where(ok, trust_coefficient * pn / denom, 1.0)
    if clip_learning_rate is not None:  # min(ratio / lr, 1), NaN kept; 1 while lr == 0
      lr = _tree.at_count(clip_learning_rate, state)
      ratio = jnp.where(lr == 0, 1.0, jnp.minimum(ratio / jnp.where(lr == 0, 1.0, lr), 1.0))
    out = list(g_leaves)
    for k, i in enumerate(idx):
      g = g_leaves[i]
      d = _numerics.decayed_wide(g, p_leaves[i], wd) * ratio[k]
      out[i] = jnp.where(ok[k], d, g.astype(d.dtype)).astype(g.dtype)
    state = transforms.next_state(state, treedef, idx, len(out), (pn, gn, ratio))
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


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
  masks_lib.compile_patterns(patterns, arg)  # the error names `arg`
  return masks_lib.exclude_names(*patterns, match="search")


def tf_lars(
  learning_rate: optax.ScalarOrSchedule = 0.01,
  momentum: float | jax.Array = 0.9,
  weight_decay_rate: optax.ScalarOrSchedule = 0.0,
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
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""TensorFlow Model Garden's LARS (``tfm.optimization.lars.LARS``), same defaults.

  Per leaf :math:`w` named by its '/'-joined path (`lars_jax.masks.path_str`, e.g.
  ``params/Dense_0/kernel``), gradient :math:`g`, step :math:`c = 0, 1, \dots`:

  1. Keras clipping of the raw gradients (`keras_clip`).
  2. :math:`g \leftarrow g + \lambda w`, unless :math:`\lambda = 0` or a pattern of
     `exclude_from_weight_decay` is found in the name (``re.search``).
  3. :math:`\rho(x) = \eta\|w\|/\|x\|` (1 unless both norms are > 0, so a NaN norm
     falls back to 1 and only the NaN elements stay NaN; 1 also if the name matches
     `exclude_from_layer_adaptation`, which defaults to `exclude_from_weight_decay`
     when None or empty: a :math:`\lambda = 0` config still stops adaptation there).
  4. Classic momentum (default): :math:`v \leftarrow \mu v + \gamma(c)\rho(g) g`,
     :math:`w \leftarrow w - v` (Nesterov: :math:`w \leftarrow w - (\mu v + \gamma(c)\rho(g) g)`).
     This is `lars_jax.lars` with ``eps=0``: the learning rate sits inside the buffer.
  5. Popular momentum (``classic_momentum=False``): :math:`v \leftarrow \mu v + g`,
     :math:`u = v` (Nesterov: :math:`\mu v + g`), :math:`w \leftarrow w - \gamma(c)\rho(u) u`:
     the ratio is taken on the momentum direction and the rate sits outside the buffer.

  The chain: ``keras_clip``, then classic: ``scale_by_trust_ratio_with_decay,
  scale_by_learning_rate, trace``; popular: ``add_decayed_weights, trace,
  scale_by_trust_ratio, scale_by_learning_rate`` (ratios with
  ``positive_norms_only=True``, TF's guard). A pattern that matches no
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
    keep_stats: keep per-leaf norms and ratios in the state (`lars_jax.layer_stats`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    Popular momentum takes the ratio on the momentum direction, with the learning rate
    outside the buffer; classic momentum (the default, = `lars_jax.lars` with
    ``eps=0``) puts the scaled step into the buffer. On the second step, with a new
    gradient direction, the two differ:

    >>> import jax.numpy as jnp, optax, lars_jax
    >>> params = {'dense': {'kernel': jnp.array([3.0, 4.0])}}
    >>> grads = [{'dense': {'kernel': jnp.array([1.0, 0.0])}},
    ...          {'dense': {'kernel': jnp.array([0.0, 1.0])}}]
    >>> for classic in (True, False):
    ...   tx = lars_jax.tf_lars(1.0, momentum=0.9, eeta=0.1, classic_momentum=classic)
    ...   state = tx.init(params)
    ...   for g in grads:
    ...     u, state = tx.update(g, state, params)
    ...   print(classic, u['dense']['kernel'])
    True [-0.45 -0.5 ]
    False [-0.33448 -0.37165]
    >>> lars_jax.tf_lars(exclude_from_weight_decay=['bias']).init(params)
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: exclude_names: pattern 'bias' matches no parameter ...

  References:
    You, Gitman & Ginsburg, `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`_, 2017.
  """
  _checks.check_learning_rate(learning_rate)
  _checks.check_momentum("momentum", momentum)
  _checks.check_scalar("weight_decay_rate", weight_decay_rate, fix="Use 0.0 to disable it.")
  _checks.check_not_schedule("eeta", eeta)
  _checks.check_scalar("eeta", eeta, fix="0.001 is usual.")
  _checks.check_bool("nesterov", nesterov)
  _checks.check_bool("classic_momentum", classic_momentum)
  decay_mask = _exclude_mask(exclude_from_weight_decay, "exclude_from_weight_decay")
  if exclude_from_layer_adaptation:
    adapt_mask = _exclude_mask(exclude_from_layer_adaptation, "exclude_from_layer_adaptation")
  else:
    _exclude_mask(exclude_from_layer_adaptation, "exclude_from_layer_adaptation")  # type
    adapt_mask = decay_mask
  clip = keras_clip(clipvalue, clipnorm, global_clipnorm, axis_name=axis_name)
  lr = transforms.scale_by_learning_rate(learning_rate)
  momentum_tx = transforms.trace(momentum, nesterov=nesterov)
  if classic_momentum:
    decay_and_ratio = transforms.scale_by_trust_ratio_with_decay(
      weight_decay_rate,
      eeta,
      0.0,
      weight_decay_mask=decay_mask,
      trust_ratio_mask=adapt_mask,
      axis_name=axis_name,
      keep_stats=keep_stats,
      positive_norms_only=True,
    )
    return optax.chain(clip, decay_and_ratio, lr, momentum_tx)
  decay = transforms.add_decayed_weights(weight_decay_rate, mask=decay_mask)
  ratio = transforms.scale_by_trust_ratio(
    eeta,
    0.0,
    mask=adapt_mask,
    axis_name=axis_name,
    keep_stats=keep_stats,
    positive_norms_only=True,
  )
  return optax.chain(clip, decay, momentum_tx, ratio, lr)


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

  Per leaf :math:`w` with raw gradient :math:`g`:

  .. math::

    d &= \frac{\eta\|w\|}{\|g\| + \lambda\|w\| + \epsilon}\,(g + \lambda w)
      \quad\text{if } \lambda \ne 0,\ \|w\| > 0,\ \|g\| > 0\text{, else } g \\
    b &= d \ \text{(first step)}, \quad b \leftarrow \mu b + (1 - \tau) d \ \text{(later)},
      \qquad d \leftarrow d + \mu b \text{ (Nesterov) or } b \\
    w &\leftarrow w - \gamma(c)\, d

  The chain ``scale_by_sum_norms_trust_ratio, trace(dampening=...),
  scale_by_learning_rate``:
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
    keep_stats: keep per-leaf norms and ratios in the state (`lars_jax.layer_stats`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    The ratio divides by :math:`\|g\| + \lambda\|w\|`, not :math:`\|g + \lambda w\|`
    as in `lars_jax.lars`, and the learning rate comes after the momentum. With
    :math:`w = (3, 4)`, :math:`g = (0.4, -0.3)` (orthogonal to :math:`w`), :math:`\lambda = 0.1`:

    >>> import jax.numpy as jnp, lars_jax
    >>> w, g = jnp.array([3.0, 4.0]), jnp.array([0.4, -0.3])
    >>> for tx in (lars_jax.torch_lars(1.0, weight_decay=0.1, eps=0.0),
    ...            lars_jax.lars(1.0, weight_decay=0.1)):
    ...   u, _ = tx.update(g, tx.init(w), w)
    ...   print(u)  # torch_lars: 0.005 / 1.0 * (0.7, 0.1); lars: 0.005 / 0.7071 * (0.7, 0.1)
    [-0.0035 -0.0005]
    [-0.00495 -0.00071]

  References:
    You, Gitman & Ginsburg, `Large Batch Training of Convolutional Networks
    <https://arxiv.org/abs/1708.03888>`_, 2017.
  """
  _checks.check_learning_rate(learning_rate)
  _checks.check_momentum("momentum", momentum)
  return optax.chain(
    scale_by_sum_norms_trust_ratio(
      trust_coefficient,
      weight_decay,
      eps,
      mask=weight_decay_mask,
      axis_name=axis_name,
      keep_stats=keep_stats,
    ),
    transforms.trace(momentum, nesterov=nesterov, dampening=dampening),
    transforms.scale_by_learning_rate(learning_rate),
  )


def larc(
  inner: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  *,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  trust_coefficient: float | jax.Array = 0.02,
  clip: bool = True,
  eps: float | jax.Array = 1e-8,
  axis_name: AxisNames = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""NVIDIA Apex's LARC around any optax optimizer.

  ``chain(scale_by_sum_norms_trust_ratio(..., adapt_without_decay=True,
  clip_learning_rate=learning_rate if clip else None), inner)``: each gradient is
  rewritten (sum-of-norms ratio, clip mode
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
    keep_stats: keep per-leaf norms and the applied factor in the state
      (`lars_jax.layer_stats`).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

  Examples:
    Clip mode caps each layer's rate at the global one: a layer whose ratio is above
    the learning rate takes plain SGD steps, one below it is slowed down.

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
  _checks.check_bool("clip", clip)
  return optax.chain(
    scale_by_sum_norms_trust_ratio(
      trust_coefficient,
      weight_decay,
      eps,
      adapt_without_decay=True,
      clip_learning_rate=learning_rate if clip else None,
      axis_name=axis_name,
      keep_stats=keep_stats,
    ),
    inner,
  )
