"""`lars()`: LARS as a thin chain of the public transforms."""

from __future__ import annotations

from typing import Any

import optax

from lars_jax import _checks, transforms
from lars_jax import masks as masks_lib
from lars_jax.transforms import AxisNames, ScalarOrSchedule


def lars(
  learning_rate: ScalarOrSchedule,
  weight_decay: ScalarOrSchedule = 0.0,
  weight_decay_mask: masks_lib.Mask = True,
  trust_coefficient: float = 0.001,
  eps: float = 0.0,
  trust_ratio_mask: masks_lib.Mask = True,
  momentum: float = 0.9,
  nesterov: bool = False,
  *,
  axis_name: AxisNames = None,
  accumulator_dtype: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""LARS (You, Gitman & Ginsburg, 2017): SGD with layer-wise adaptive rates.

  A drop-in replacement for `optax.lars`: same keywords, same defaults, same numbers.
  For each leaf (a "layer") with parameter :math:`w`, gradient :math:`g`, step
  :math:`c = 0, 1, \dots`:

  .. math::

    u &= g + \lambda(c)\, w  \quad\text{(where weight\_decay\_mask)} \\
    r &= \eta \|w\| / (\|u\| + \epsilon) \quad\text{(where trust\_ratio\_mask and both
         norms} > 0\text{, else } 1) \\
    v &\leftarrow \mu v + \gamma(c)\, r\, u, \qquad
    w \leftarrow w - v \quad (\text{Nesterov: } w \leftarrow w - (\gamma(c) r u + \mu v))

  It is exactly this chain, so you can rebuild it, swap a piece or insert your own::

    optax.chain(
        lars_jax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
        lars_jax.scale_by_trust_ratio(trust_coefficient, eps, mask=trust_ratio_mask),
        lars_jax.scale_by_learning_rate(learning_rate),
        lars_jax.trace(momentum, nesterov=nesterov),
    )

  The learning rate is applied *before* the momentum trace (TF's "classic momentum"):
  under a schedule the buffer remembers the rates it was built with.

  Like optax, the default masks decay and adapt *every* leaf, biases and
  normalisation scales included. Most published recipes exclude them: pass
  ``weight_decay_mask=lars_jax.masks.min_ndim(2)`` and the same for
  ``trust_ratio_mask`` (or a name rule such as ``masks.exclude_names('bias', 'norm')``).

  Args:
    learning_rate: :math:`\gamma \ge 0`, or an optax schedule.
    weight_decay: :math:`\lambda \ge 0`, or a schedule.
    weight_decay_mask: which leaves to decay (see `lars_jax.masks`).
    trust_coefficient: :math:`\eta \ge 0`.
    eps: :math:`\epsilon \ge 0`, added to the update norm.
    trust_ratio_mask: which leaves to adapt; others take plain momentum-SGD steps.
    momentum: :math:`\mu \in [0, 1)`.
    nesterov: Nesterov momentum.
    axis_name: mesh axes each leaf is split over under `shard_map` (see
      `scale_by_trust_ratio`); None under `jit`/pjit and for replicated params.
    accumulator_dtype: dtype of the momentum buffer (default: the params' dtype).

  Returns:
    An `optax.GradientTransformationExtraArgs`.

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
  _checks.check_scalar(
    "learning_rate",
    learning_rate,
    fix="Pass a non-negative number or an optax schedule.",
  )
  _checks.check_scalar("weight_decay", weight_decay, fix="Use 0.0 to disable it.")
  _checks.check_scalar("trust_coefficient", trust_coefficient, fix="0.001 is usual.")
  _checks.check_scalar("eps", eps, fix="Use 0.0 or a small positive value.")
  _checks.check_momentum("momentum", momentum)
  return optax.chain(
    transforms.add_decayed_weights(weight_decay, mask=weight_decay_mask),
    transforms.scale_by_trust_ratio(
      trust_coefficient, eps, mask=trust_ratio_mask, axis_name=axis_name
    ),
    transforms.scale_by_learning_rate(learning_rate),
    transforms.trace(momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype),
  )
