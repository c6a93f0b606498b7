"""A float64 NumPy reference of the published LARS update (optax / TF classic momentum).

Written from the equations in shared/LARS_VARIANTS.md, section 1, "Resulting update",
not from any implementation. For each leaf, at step c = 0, 1, ... with weight-decay mask
a_wd and trust-ratio mask a_tr:

    u = g + a_wd * wd(c) * p
    r = eta * |p| / (|u| + eps)   if a_tr and |p| > 0 and |u| > 0, else 1
    v <- mu * v + lr(c) * r * u   (v starts at 0)
    p <- p - v                    (nesterov: p <- p - (lr(c) * r * u + mu * v))

|x| is the L2 norm over all elements of the leaf (the modulus for complex leaves).
The returned "update" is what optax adds to the params: -v, or the Nesterov step.

Alongside, the reference tracks per element the sum of the magnitudes of every term
that went into each update and param (`update_scale`, `param_scale`). Rounding error
in a sum is bounded relative to that, not to the result, which can be far smaller when
momentum cancels; tests use it as the scale of their absolute tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

Scalar = float | Callable[[int], float]


def _at(x: Scalar, c: int) -> float:
  return float(x(c)) if callable(x) else float(x)


def _wide(x) -> np.ndarray:
  x = np.asarray(x)
  return x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)


@dataclass
class LarsReference:
  """LARS on a flat list of leaves, in float64 (complex128 for complex leaves).

  Attributes:
    learning_rate: lr, a number or a function of the step count c.
    weight_decay: wd, a number or a function of c.
    trust_coefficient: eta.
    eps: added to the update norm.
    momentum: mu.
    nesterov: Nesterov momentum.
    wd_mask: one bool per leaf (None: all True).
    tr_mask: one bool per leaf (None: all True).
  """

  learning_rate: Scalar
  weight_decay: Scalar = 0.0
  trust_coefficient: float = 0.001
  eps: float = 0.0
  momentum: float = 0.9
  nesterov: bool = False
  wd_mask: Sequence[bool] | None = None
  tr_mask: Sequence[bool] | None = None
  count: int = 0
  velocity: list[np.ndarray] | None = field(default=None)
  velocity_scale: list[np.ndarray] | None = field(default=None)
  update_scale: list[np.ndarray] | None = field(default=None)
  param_scale: list[np.ndarray] | None = field(default=None)

  def ratios(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> list[float]:
    """Trust ratios r of the current step (before it is taken)."""
    n = len(params)
    wd_mask = self.wd_mask if self.wd_mask is not None else [True] * n
    tr_mask = self.tr_mask if self.tr_mask is not None else [True] * n
    wd = _at(self.weight_decay, self.count)
    out = []
    for p, g, a_wd, a_tr in zip(params, grads, wd_mask, tr_mask):
      p, g = _wide(p), _wide(g)
      u = g + wd * p if a_wd else g
      pn, un = np.linalg.norm(p.ravel()), np.linalg.norm(u.ravel())
      out.append(
        self.trust_coefficient * pn / (un + self.eps) if a_tr and pn > 0 and un > 0 else 1.0
      )
    return out

  def step(
    self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]
  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One LARS step. Returns (updates, new params), both in float64/complex128."""
    n = len(params)
    wd_mask = self.wd_mask if self.wd_mask is not None else [True] * n
    if self.velocity is None:
      self.velocity = [np.zeros_like(_wide(p)) for p in params]
      self.velocity_scale = [np.zeros(np.shape(p)) for p in params]
      self.param_scale = [np.abs(_wide(p)) for p in params]
    lr, wd = _at(self.learning_rate, self.count), _at(self.weight_decay, self.count)
    mu = self.momentum
    ratios = self.ratios(params, grads)
    updates, new_params, self.update_scale = [], [], []
    for i, (p, g, a_wd, r) in enumerate(zip(params, grads, wd_mask, ratios)):
      p, g = _wide(p), _wide(g)
      u = g + wd * p if a_wd else g
      self.velocity[i] = mu * self.velocity[i] + lr * r * u
      step = lr * r * u + mu * self.velocity[i] if self.nesterov else self.velocity[i]
      updates.append(-step)
      new_params.append(p - step)
      # Magnitudes of the terms summed above (same recursions, absolute values).
      u_scale = lr * r * (np.abs(g) + (wd * np.abs(p) if a_wd else 0.0))
      self.velocity_scale[i] = mu * self.velocity_scale[i] + u_scale
      step_scale = (
        u_scale + mu * self.velocity_scale[i] if self.nesterov else self.velocity_scale[i]
      )
      self.update_scale.append(step_scale)
      self.param_scale[i] = self.param_scale[i] + step_scale
    self.count += 1
    return updates, new_params
