"""The optimizer of Google's MLPerf Training v0.7 JAX ResNet-50 submission, as it ran.

flax.optim's ``MultiOptimizer``: flax.optim ``LARS`` (`lars_jax.flax_lars`) on every leaf
whose path does not contain 'bias' or 'scale', flax ``Momentum`` (`optax.sgd` with
momentum) on those that do, both at the same learning rate: a linear warm-up then a
polynomial decay of power 2 to 1e-4 (`lars_jax.schedules.warmup_polynomial_decay`),
with the submission's step arithmetic (fractional warm-up steps included). The presets
by global batch are the submission's (../shared/LARS_VARIANTS.md, section 5a).

  python examples/mlperf_resnet50_optimizer.py --batch 32768
"""

from __future__ import annotations

import argparse
import math

import jax
import optax

import lars_jax

IMAGES = 1_281_167  # ImageNet-1k training set

# min batch -> (peak lr, warm-up epochs, momentum, weight decay, epochs)
PRESETS = [
  (65536, (23.080977304670448, 33, 0.9537213777059405, 1e-4, 92)),
  (32768, (29.0, 18, 0.929, 1e-4, 64)),
  (16384, (25.0, 5, 0.9, 2e-4, 56)),
  (0, (10.0, 5, 0.9, 2e-4, 56)),
]


def steps_per_epoch(batch: int) -> float:
  """The submission's: each 4-epoch loop rounded up to whole steps."""
  return math.ceil(4 * IMAGES / batch) / 4


def hyperparameters(batch: int) -> dict:
  peak, warmup, momentum, wd, epochs = next(p for b, p in PRESETS if batch >= b)
  spe = steps_per_epoch(batch)
  return dict(
    peak=peak,
    warmup_steps=warmup * spe,
    total_steps=epochs * spe,
    momentum=momentum,
    weight_decay=wd,
  )


def multi_optimizer(
  learning_rate: optax.ScalarOrSchedule, momentum: float, weight_decay: float
) -> optax.GradientTransformation:
  """The ``MultiOptimizer``: flax.optim LARS on every leaf whose path has no 'bias' or
  'scale', flax Momentum (`optax.sgd`) on those that do, one learning rate for both."""
  labels = lambda params: jax.tree.map(
    lambda path: "momentum" if ("bias" in path or "scale" in path) else "lars",
    lars_jax.masks.tree_paths(params),
  )
  return optax.multi_transform(
    {
      "lars": lars_jax.flax_lars(learning_rate, beta=momentum, weight_decay=weight_decay),
      "momentum": optax.sgd(learning_rate, momentum=momentum),
    },
    labels,
  )


def mlperf_optimizer(batch: int) -> optax.GradientTransformation:
  """`multi_optimizer` with the submission's presets and schedule for global batch `batch`."""
  h = hyperparameters(batch)
  lr = lars_jax.schedules.warmup_polynomial_decay(
    h["peak"], h["warmup_steps"], h["total_steps"], end_value=1e-4, power=2.0
  )
  return multi_optimizer(lr, h["momentum"], h["weight_decay"])


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32768)
  args = parser.parse_args()
  print(hyperparameters(args.batch))
  tx = mlperf_optimizer(args.batch)
  print("built", type(tx).__name__)
