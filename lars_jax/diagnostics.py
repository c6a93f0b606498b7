"""Per-layer statistics for logging: with ``keep_stats=True`` the state holds each adapted
leaf's norms and trust ratio of the last step (`LayerStats`, no extra reduction)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from lars_jax import _compat
from lars_jax import masks as masks_lib
from lars_jax._stats import LayerStats

__all__ = ["layer_stats"]


def _is_stats(x: Any) -> bool:
  return isinstance(x, LayerStats) or (
    isinstance(x, Mapping) and set(x.keys()) == set(LayerStats._fields)
  )


def layer_stats(opt_state: Any) -> dict[str, float]:
  r"""The per-layer statistics kept in an optimizer state, as ``{'<stat>/<path>': float}``.

  Finds every `LayerStats` in `opt_state` (in any optax wrapper or Flax NNX state) and
  returns, per adapted leaf, the norms and ratio the last step used (for `lars`:
  :math:`\|w\|`, :math:`\|g + \lambda w\|`, :math:`r`), NaN and Inf as they are. A key
  seen twice is prefixed with its path in the state. Call it outside the jitted step.

  Args:
    opt_state: a state built with ``keep_stats=True`` (else ``ValueError``).

  Returns:
    Python floats by sorted key (NumPy arrays for a state stacked by `jax.vmap`).

  Examples:
    >>> import jax.numpy as jnp, lars_jax
    >>> params = {'conv': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
    >>> tx = lars_jax.lars(0.1, trust_ratio_mask=lars_jax.masks.min_ndim(2), keep_stats=True)
    >>> grads = {'conv': {'kernel': jnp.full((2, 2), 0.5), 'bias': jnp.ones(2)}}
    >>> _, state = tx.update(grads, tx.init(params), params)
    >>> for key, value in lars_jax.layer_stats(state).items():  # the bias is not adapted
    ...   print(key, value)  # |w| = 2, |g| = 1: ratio 0.001 * 2 / 1
    param_norm/conv/kernel 2.0
    trust_ratio/conv/kernel 0.002
    update_norm/conv/kernel 1.0
  """
  found = jax.tree_util.tree_flatten_with_path(_compat.nnx_values(opt_state), is_leaf=_is_stats)[0]
  found = [(path, node) for path, node in found if _is_stats(node)]
  if not found:
    raise ValueError(
      "layer_stats: this optimizer state holds no statistics (got "
      f"{type(opt_state).__name__}). Build the optimizer with keep_stats=True (lars, "
      "tf_lars, torch_lars, timm_lars, byol_lars, flax_lars, larc or the trust-ratio "
      "transforms) and pass its state, e.g. `state.opt_state`."
    )
  if any(isinstance(x, jax.core.Tracer) for _, node in found for x in jax.tree.leaves(node)):
    raise ValueError(
      "layer_stats: called inside jit (or another transformation) on traced values. "
      "Call it on the concrete state the jitted step returned, outside the step."
    )
  out: dict[str, Any] = {}
  for state_path, node in found:  # a LayerStats, or the mapping nnx.state makes of one
    for path, value in jax.tree_util.tree_leaves_with_path(node):
      if np.size(value) == 0:  # a state built for a tree without leaves
        continue
      key = masks_lib.path_str(path)  # '<stat>/<leaf path>'
      if key in out:
        stat, _, leaf = key.partition("/")
        key = f"{stat}/{masks_lib.path_str(state_path)}/{leaf}"
      out[key] = value
  values = {k: np.asarray(v) for k, v in jax.device_get(out).items()}
  return {k: float(v) if v.ndim == 0 else v for k, v in sorted(values.items())}
