"""Per-layer LARS diagnostics: trust ratios, parameter, gradient and update norms.

`layer_diagnostics` returns the numbers large-batch practitioners debug, one scalar
per statistic and parameter, as a flat ``{'<stat>/<path>': value}`` dict ready for
TensorBoard, CSV or any logger. It is a pure function of params and gradients (and
optionally the updates the optimizer returned): it never changes the update, and it
reuses the norm, mask and axis code of `scale_by_trust_ratio`, so the trust ratio it
reports is the one `lars_jax.lars` applies.

Logging every N steps inside ``jit`` needs no ``lax.cond``: give the train step a
static flag and call the variant that also returns the diagnostics every N steps
(two compilations, no cost on the other steps), or compute them in a separate jitted
function of ``(params, grads)``. See the README section "With Flax".
"""

from __future__ import annotations

import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lars_jax import _checks
from lars_jax import masks as masks_lib
from lars_jax.transforms import (
  AxisNames,
  flatten_like,
  layer_norms,
  leaf_axes,
  trust_ratio,
  wide_dtype,
)

__all__ = ["diagnostics_to_floats", "layer_diagnostics"]

_NAME = "layer_diagnostics"


def layer_diagnostics(
  params: optax.Params,
  grads: optax.Updates,
  *,
  weight_decay: float | jax.Array = 0.0,
  weight_decay_mask: masks_lib.Mask = True,
  trust_coefficient: float | jax.Array = 0.001,
  eps: float | jax.Array = 0.0,
  trust_ratio_mask: masks_lib.Mask = True,
  axis_name: AxisNames = None,
  updates: optax.Updates | None = None,
) -> dict[str, jax.Array]:
  r"""Per-layer LARS statistics of one step, as a flat ``{'<stat>/<path>': scalar}`` dict.

  Pass the same hyperparameters and masks as to `lars_jax.lars`. For every leaf
  (a "layer") with parameter :math:`w` and gradient :math:`g`, with
  :math:`u = g + \lambda w` where `weight_decay_mask` is True and :math:`u = g`
  elsewhere:

  .. math::

    \text{param\_norm} = \|w\|, \quad \text{grad\_norm} = \|g\|, \quad
    \text{decayed\_grad\_norm} = \|u\|, \quad
    \text{trust\_ratio} = \eta \|w\| / (\|u\| + \epsilon)

  where the trust ratio is 1 for leaves outside `trust_ratio_mask` or with a zero
  norm: exactly the factor `lars_jax.lars` multiplies :math:`u` by before the
  learning rate and momentum. (Presets with another ratio, such as `torch_lars`'s
  :math:`\eta\|w\| / (\|g\| + \lambda\|w\| + \epsilon)` or LARC's clipping, apply other
  numbers; the norms here still describe their steps.) With `updates` (what
  ``tx.update`` returned this step) also ``update_norm`` :math:`\|\Delta w\|` and ``update_ratio``
  :math:`\|\Delta w\| / \|w\|`, the relative step actually taken (``inf`` where
  :math:`\|w\| = 0 < \|\Delta w\|`, 0 where both are 0).

  Norms are L2 over all elements of a leaf, in float32 (float64 for float64 leaves),
  computed with `lars_jax.transforms.layer_norms`: the adapted leaves' parameter and
  decayed-gradient norms come from the same call on the same leaves as in
  `scale_by_trust_ratio`, and with `axis_name` they are summed across devices the
  same way. Every value is a float32 (or float64) scalar ``jax.Array``; the function
  is jit-able (masks are resolved in Python from names and shapes) and costs a few
  reductions per leaf.

  Keys are ``'<stat>/<path>'`` with the ``/``-joined parameter path of
  `lars_jax.masks` (``'trust_ratio/params/Conv_0/kernel'`` for Flax Linen,
  ``'trust_ratio/conv/kernel'`` for an NNX state); a bare array has path ``''`` and
  keys ``'<stat>'``. Keys are sorted (``jit`` returns dicts sorted), so statistics
  come grouped: ``decayed_grad_norm/...``, ``grad_norm/...``, ``param_norm/...``,
  ``trust_ratio/...``, ``update_norm/...``, ``update_ratio/...``.

  Args:
    params: the parameters before the step (for Flax NNX, ``nnx.state(model,
      nnx.Param)``, with or without ``nnx.as_pure``).
    grads: the gradients, with the structure of `params` (NNX: what ``nnx.grad``
      returns).
    weight_decay: :math:`\lambda \ge 0`, a scalar. For a weight-decay schedule pass
      its current value, ``schedule(step)``.
    weight_decay_mask: which leaves are decayed (any form `lars_jax.masks` accepts).
    trust_coefficient: :math:`\eta \ge 0`.
    eps: :math:`\epsilon \ge 0`, added to the decayed-gradient norm.
    trust_ratio_mask: which leaves are adapted.
    axis_name: mesh axes each leaf is split over under ``shard_map``, as in
      `scale_by_trust_ratio`.
    updates: optional; the updates ``tx.update`` returned (``new_params - params``).

  Returns:
    A dict of scalar ``jax.Array`` s: ``param_norm``, ``grad_norm``,
    ``decayed_grad_norm``, ``trust_ratio`` and, with `updates`, ``update_norm`` and
    ``update_ratio`` for every leaf. `diagnostics_to_floats` turns it into floats.

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> params = {'dense': {'kernel': jnp.array([[3.0, 4.0]]), 'bias': jnp.zeros(2)}}
    >>> grads = {'dense': {'kernel': jnp.array([[0.6, 0.8]]), 'bias': jnp.ones(2)}}
    >>> skip_bias = lars_jax.masks.exclude_names('bias')
    >>> d = lars_jax.layer_diagnostics(
    ...     params, grads, weight_decay=0.1, weight_decay_mask=skip_bias,
    ...     trust_ratio_mask=skip_bias)  # kernel: u = g + 0.1 w = [0.9, 1.2], |u| = 1.5
    >>> for k, v in lars_jax.diagnostics_to_floats(d).items():
    ...   print(f'{k:30s} {v:.4g}')
    decayed_grad_norm/dense/bias   1.414
    decayed_grad_norm/dense/kernel 1.5
    grad_norm/dense/bias           1.414
    grad_norm/dense/kernel         1
    param_norm/dense/bias          0
    param_norm/dense/kernel        5
    trust_ratio/dense/bias         1
    trust_ratio/dense/kernel       0.003333
  """
  if callable(weight_decay):
    raise TypeError(
      f"{_NAME}: `weight_decay` must be a scalar, got the callable {weight_decay!r}. For a "
      "schedule pass its current value, e.g. `weight_decay=schedule(step)`."
    )
  _checks.check_scalar("weight_decay", weight_decay, fix="Use 0.0 for no weight decay.")
  _checks.check_scalar("trust_coefficient", trust_coefficient, fix="0.001 is usual.")
  _checks.check_scalar("eps", eps, fix="Use 0.0 or a small positive value.")
  for arg, value in (("trust_coefficient", trust_coefficient), ("eps", eps)):
    if callable(value):
      raise TypeError(f"{_NAME}: `{arg}` must be a scalar, got {value!r}.")

  params, grads, updates = (_without_nnx_variables(t) for t in (params, grads, updates))
  p_leaves, treedef = jax.tree.flatten(params)
  g_leaves = flatten_like(grads, treedef, "grads", _NAME)
  upd_leaves = None if updates is None else flatten_like(updates, treedef, "updates", _NAME)
  _checks.check_float_leaves(_NAME, params)
  _checks.check_float_leaves(_NAME, grads)
  if not p_leaves:
    return {}
  decay = masks_lib.resolve(weight_decay_mask, params, arg="weight_decay_mask")
  adapt = masks_lib.resolve(trust_ratio_mask, params, arg="trust_ratio_mask")
  axes = leaf_axes(axis_name, params)
  paths = _unique_paths(params)

  # u exactly as `add_decayed_weights` makes it (a Python 0 skips the decay there too).
  skip_decay = isinstance(weight_decay, (int, float)) and float(weight_decay) == 0.0
  u_leaves = [
    g
    if skip_decay or not b
    else (g.astype(wide_dtype(g.dtype)) + weight_decay * p.astype(wide_dtype(p.dtype))).astype(
      g.dtype
    )
    for g, p, b in zip(g_leaves, p_leaves, decay)
  ]

  # Adapted leaves in one `layer_norms` call on exactly the leaves (and axes) that
  # `scale_by_trust_ratio` norms, so its batching and reduction order, hence its
  # numbers, are the same; the other leaves in a second call.
  n = len(p_leaves)
  stats: dict[str, list[jax.Array | None]] = {
    s: [None] * n for s in ("param_norm", "grad_norm", "decayed_grad_norm", "trust_ratio")
  }
  if upd_leaves is not None:
    stats["update_norm"] = [None] * n
  for group_is_adapted in (True, False):
    idx = [i for i in range(n) if adapt[i] == group_is_adapted]
    if not idx:
      continue
    lists = [[p_leaves[i] for i in idx], [u_leaves[i] for i in idx]]
    lists.append([g_leaves[i] for i in idx])
    if upd_leaves is not None:
      lists.append([upd_leaves[i] for i in idx])
    norms = layer_norms(lists, [axes[i] for i in idx])
    pn, un, gn = norms[:3]
    ratio = trust_ratio(pn, un, trust_coefficient, eps) if group_is_adapted else jnp.ones_like(pn)
    for k, i in enumerate(idx):
      stats["param_norm"][i] = pn[k]
      stats["decayed_grad_norm"][i] = un[k]
      stats["grad_norm"][i] = gn[k]
      stats["trust_ratio"][i] = ratio[k]
      if upd_leaves is not None:
        stats["update_norm"][i] = norms[3][k]
  if upd_leaves is not None:
    stats["update_ratio"] = [
      _relative(un, pn) for un, pn in zip(stats["update_norm"], stats["param_norm"])
    ]
  # Sorted by key, as `jit` returns a dict whatever its insertion order.
  return dict(
    sorted(
      ((_key(s, paths[i]), v) for s, vals in stats.items() for i, v in enumerate(vals)),
      key=lambda kv: kv[0],
    )
  )


def diagnostics_to_floats(diagnostics: dict[str, Any]) -> dict[str, float]:
  """Fetches a `layer_diagnostics` dict from the device as Python floats, for logging.

  One ``jax.device_get`` for the whole dict (not one transfer per value).

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> lars_jax.diagnostics_to_floats({'trust_ratio/w': jnp.float32(0.5)})
    {'trust_ratio/w': 0.5}
  """
  if not isinstance(diagnostics, dict):
    raise TypeError(
      f"`diagnostics` must be the dict `layer_diagnostics` returns, got "
      f"{type(diagnostics).__name__}."
    )
  host = jax.device_get(diagnostics)  # (returns the keys sorted; keep the given order)
  out = {}
  for k in diagnostics:
    v = host[k]
    if np.ndim(v) != 0:
      raise ValueError(f"`diagnostics[{k!r}]` must be a scalar, got shape {np.shape(v)}.")
    out[k] = float(v)
  return out


def _relative(num: jax.Array, den: jax.Array) -> jax.Array:
  """num / den; inf where den = 0 < num and 0 where both are 0 (never NaN)."""
  ok = den > 0
  return jnp.where(ok, num / jnp.where(ok, den, 1), jnp.where(num > 0, math.inf, 0.0))


def _without_nnx_variables(tree: Any) -> Any:
  """`tree` with Flax NNX Variables (``nnx.Param``) replaced by their values, so that
  ``nnx.state(model, nnx.Param)``, its ``nnx.as_pure`` form and ``nnx.grad`` output
  (all the same paths) can be mixed."""
  nnx = sys.modules.get("flax.nnx")  # if flax.nnx was never imported, there are none
  if nnx is None or tree is None:
    return tree
  is_var = lambda x: isinstance(x, nnx.Variable)
  if not any(is_var(x) for x in jax.tree.leaves(tree, is_leaf=is_var)):
    return tree
  return nnx.as_pure(tree)


def _key(stat: str, path: str) -> str:
  return f"{stat}/{path}" if path else stat


def _unique_paths(params: Any) -> list[str]:
  paths = masks_lib._leaf_paths(params)
  seen: set[str] = set()
  for p in paths:
    if p in seen:
      raise ValueError(
        f"{_NAME}: two parameters have the same path {p!r} (a key that contains '/'?), "
        "so their statistics would share a key. Rename the keys so that '/'-joined "
        "paths are unique."
      )
    seen.add(p)
  return paths
