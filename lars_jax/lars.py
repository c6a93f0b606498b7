"""`lars()`: LARS as a thin chain of the public transforms."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lars_jax import _checks, _stats, transforms
from lars_jax import masks as masks_lib
from lars_jax._tree import AxisNames

__all__ = ["lars", "state_from_optax_lars"]


def lars(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  weight_decay_mask: masks_lib.Mask = True,
  trust_coefficient: float = 0.001,
  eps: float = 0.0,
  trust_ratio_mask: masks_lib.Mask = True,
  momentum: float = 0.9,
  nesterov: bool = False,
  *,
  axis_name: AxisNames = None,
  accumulator_dtype: Any | None = None,
  keep_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""LARS (You, Gitman & Ginsburg, 2017): SGD with layer-wise adaptive rates.

  A drop-in replacement for `optax.lars` (same keywords, defaults and numbers). Per leaf
  with parameter :math:`w`, gradient :math:`g`, step :math:`c = 0, 1, \dots`:

  .. math::

    u &= g + \lambda(c)\, w  \quad\text{(where weight\_decay\_mask)} \\
    r &= \eta \|w\| / (\|u\| + \epsilon) \quad\text{(where trust\_ratio\_mask and both
         norms} > 0\text{, else } 1) \\
    v &\leftarrow \mu v + \gamma(c)\, r\, u, \qquad
    w \leftarrow w - v \quad (\text{Nesterov: } w \leftarrow w - (\gamma(c) r u + \mu v))

  Like optax, the default masks decay and adapt *every* leaf; most recipes pass
  ``lars_jax.masks.min_ndim(2)`` as both masks (README: Masks).

  Args:
    learning_rate: :math:`\gamma \ge 0`, or an optax schedule.
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    weight_decay_mask: which leaves to decay (see `lars_jax.masks`).
    trust_coefficient: :math:`\eta \ge 0`.
    eps: :math:`\epsilon \ge 0`, added to the update norm.
    trust_ratio_mask: which leaves to adapt.
    momentum: :math:`\mu \in [0, 1)`.
    nesterov: Nesterov momentum.
    axis_name: under `shard_map`, the mesh axes each leaf is split over (see
      `scale_by_trust_ratio`).
    accumulator_dtype: dtype of the momentum buffer (default: the params' dtype).
    keep_stats: keep per-leaf norms and ratios in the state (`lars_jax.layer_stats`).

  Returns:
    ``chain(scale_by_trust_ratio_with_decay, scale_by_learning_rate, trace)``, the numbers of
    ``chain(add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate, trace)``: the
    learning rate is applied *before* the momentum (TF's "classic momentum").

  Examples:
    >>> import jax, jax.numpy as jnp, optax, lars_jax
    >>> def f(x): return jnp.sum(x ** 2)
    >>> solver = lars_jax.lars(learning_rate=100.0, trust_coefficient=0.001)
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
  _checks.check_momentum("momentum", momentum)
  masks = {"weight_decay_mask": weight_decay_mask, "trust_ratio_mask": trust_ratio_mask}
  return optax.chain(
    transforms.scale_by_trust_ratio_with_decay(
      weight_decay, trust_coefficient, eps, **masks, axis_name=axis_name, keep_stats=keep_stats
    ),
    transforms.scale_by_learning_rate(learning_rate),
    transforms.trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype),
  )


def state_from_optax_lars(optax_state: Any, init_state: Any) -> Any:
  """Converts an `optax.lars` state for `lars_jax.lars`, which continues the run bit for bit.

  Args:
    optax_state: the state of ``optax.lars(...)`` (a 4-tuple).
    init_state: ``lars_jax.lars(...).init(params)`` with the same hyperparameters.

  Returns:
    `init_state`'s structure with `optax_state`'s values (README: Checkpoints).

  Examples:
    >>> import jax.numpy as jnp, optax, lars_jax
    >>> params = {'w': jnp.ones((2, 2))}
    >>> theirs = optax.lars(0.1)
    >>> s = theirs.init(params)
    >>> _, s = theirs.update({'w': jnp.ones((2, 2))}, s, params)
    >>> ours = lars_jax.state_from_optax_lars(s, lars_jax.lars(0.1).init(params))
    >>> bool((ours[-1].trace['w'] == s[-1].trace['w']).all())
    True
  """
  name = "state_from_optax_lars"
  if _is_ours(optax_state) and _is_optax(init_state):
    raise ValueError(
      f"{name}: the arguments look swapped: pass the optax.lars state first and "
      "lars_jax.lars(...).init(params) second."
    )
  theirs = optax_state.inner_state if hasattr(optax_state, "hyperparams") else optax_state
  if hasattr(init_state, "hyperparams"):  # optax.inject_hyperparams(lars_jax.lars)
    new = {"inner_state": state_from_optax_lars(theirs, init_state.inner_state)}
    if theirs is not optax_state:  # injected too: its count and hyperparameters carry over
      new["count"] = optax_state.count
      new["hyperparams"] = {
        k: jnp.asarray(optax_state.hyperparams.get(k, v), jnp.asarray(v).dtype)
        for k, v in init_state.hyperparams.items()
      }
    return init_state._replace(**new)
  if not _is_optax(theirs):
    raise ValueError(
      f"{name}: `optax_state` must be the state of optax.lars(...) (or of "
      "optax.inject_hyperparams(optax.lars)(...)): a 4-tuple (weight decay, trust "
      f"ratio, learning rate, TraceState). Got {_describe(theirs)}."
    )
  if not _is_ours(init_state):
    raise ValueError(
      f"{name}: `init_state` must be lars_jax.lars(...).init(params) (or the state of "
      "optax.inject_hyperparams(lars_jax.lars)): a 3-tuple (trust ratio, learning rate, "
      f"TraceState). Got {_describe(init_state)}."
    )
  decay, _, lr, momentum = theirs
  ratio, ours_lr, ours_trace = init_state
  decay_count, lr_count = (optax.tree_utils.tree_get(s, "count") for s in (decay, lr))
  for what, count, ours in [
    ("weight-decay", decay_count, ratio),
    ("learning-rate", lr_count, ours_lr),
  ]:
    if count is None and isinstance(ours, optax.ScaleByScheduleState):
      raise ValueError(
        f"{name}: lars_jax's state counts {what} steps (a schedule) but optax's does "
        f"not: build both with the same {what}."
      )
  step = decay_count if decay_count is not None else lr_count  # keep_stats counts every step
  if "count" in ratio._fields and step is not None:
    ratio = ratio._replace(count=step)
  if isinstance(ours_lr, optax.ScaleByScheduleState):
    ours_lr = ours_lr._replace(count=lr_count)
  trace, ours = momentum.trace, ours_trace.trace
  if jax.tree.structure(trace) != jax.tree.structure(ours):
    ma, mb = (_masked_paths(t) or "no leaf" for t in (trace, ours))
    note = f" optax.MaskedNode stands at {ma} in optax's, at {mb} in ours." if ma != mb else ""
    raise ValueError(
      f"{name}: the momentum buffers differ in structure: optax {jax.tree.structure(trace)}, "
      f"lars_jax {jax.tree.structure(ours)}.{note} Build both from the same params (and the "
      "same partition, if inside optax.multi_transform)."
    )
  trace = jax.tree.map(lambda t, o: jnp.asarray(t, o.dtype), trace, ours)
  return (ratio, ours_lr, ours_trace._replace(trace=trace))


def _is_optax(state: Any) -> bool:
  return isinstance(state, tuple) and len(state) == 4 and isinstance(state[3], optax.TraceState)


def _is_ours(state: Any) -> bool:
  firsts = (optax.EmptyState, optax.ScaleByScheduleState, _stats.TrustRatioState)
  is_chain = isinstance(state, tuple) and len(state) == 3
  return is_chain and isinstance(state[0], firsts) and isinstance(state[2], transforms.TraceState)


def _describe(state: Any) -> str:
  if isinstance(state, tuple) and not hasattr(state, "_fields"):
    return f"a {len(state)}-tuple ({', '.join(type(s).__name__ for s in state)})"
  return type(state).__name__


def _masked_paths(tree: Any) -> list[str]:
  is_node = lambda x: isinstance(x, optax.MaskedNode)
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_node)[0]
  return [masks_lib.path_str(p) for p, x in leaves if is_node(x)]
