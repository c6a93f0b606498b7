"""What the optimizer costs inside a real train step: Flax ResNet-50 on XLA CPU.

Usage (from the repository root)::

    python -m benchmarks.train_step              # batch 4, 112x112 images, 15 repeats
    python -m benchmarks.train_step --quick      # batch 2, 64x64, 3 repeats

Times one whole jitted train step (forward, backward, optimizer update, apply; params,
batch-norm statistics and optimizer state donated) of a ResNet-50 (v1.5 bottlenecks,
batch norm, 25,557,032 parameters in 161 leaves, Flax Linen) with each candidate
optimizer, side by side in one process: all compiled, warmed up, then timed
round-robin, medians reported (``benchmarks.harness.time_round_robin``). The
candidates are ``benchmarks.harness.optimizers()``' ``sgd-momentum``, ``optax.lars``
and ``lars_jax.lars`` (lr 0.1, momentum 0.9, weight decay 1e-4; LARS with biases and
batch norm excluded by ``masks.min_ndim(2)``), plus plain ``optax.sgd`` without
momentum: the cheapest real update (one multiply-add per parameter), the floor.

The optimizer's share of the step is reported two ways: the step time minus the
plain-SGD step, over the step time; and the optimizer's update alone (the same
optimizer on the same parameter tree and gradients, ``benchmarks.harness.Compiled``)
over the step time.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks import harness

CANDIDATES = ("sgd-momentum", "optax.lars", "lars_jax.lars")


class Bottleneck(nn.Module):
  """1x1, 3x3 (strided, as in v1.5), 1x1 convolutions; projection when the shape changes."""

  width: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    y = nn.relu(norm()(nn.Conv(self.width, (1, 1), use_bias=False)(x)))
    y = nn.Conv(self.width, (3, 3), (self.strides, self.strides), use_bias=False)(y)
    y = nn.relu(norm()(y))
    y = norm(scale_init=nn.initializers.zeros)(nn.Conv(4 * self.width, (1, 1), use_bias=False)(y))
    if x.shape != y.shape:
      x = nn.Conv(4 * self.width, (1, 1), (self.strides, self.strides), use_bias=False)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet50(nn.Module):
  """ResNet-50: 7x7 stem, max pool, stages of 3, 4, 6, 3 bottlenecks, pooled dense head."""

  num_classes: int = 1000

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding="SAME")
    for stage, blocks in enumerate((3, 4, 6, 3)):
      for b in range(blocks):
        x = Bottleneck(64 * 2**stage, strides=2 if stage > 0 and b == 0 else 1)(x, train)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))


class TrainStep:
  """A compiled, donated train step with its own state (the `harness.Compiled` interface)."""

  def __init__(self, tx: optax.GradientTransformation, model: nn.Module, variables: Any, batch):
    self.state = (
      jax.tree.map(jnp.copy, variables["params"]),
      jax.tree.map(jnp.copy, variables["batch_stats"]),
    )
    self.state = (*self.state, tx.init(self.state[0]))
    self.batch = batch

    def step(state, batch):
      params, batch_stats, opt_state = state
      x, y = batch

      def loss_fn(p):
        logits, new = model.apply(
          {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new["batch_stats"]

      (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    self.exe = jax.jit(step, donate_argnums=0).lower(self.state, batch).compile()

  def run(self) -> float:
    import time

    t0 = time.perf_counter()
    self.state, loss = self.exe(self.state, self.batch)
    jax.block_until_ready((self.state, loss))
    return time.perf_counter() - t0


def run(batch_size: int, image_size: int, repeats: int) -> dict[str, Any]:
  model = ResNet50()
  x = jax.random.normal(jax.random.key(1), (batch_size, image_size, image_size, 3))
  y = jax.random.randint(jax.random.key(2), (batch_size,), 0, 1000)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  n_params = sum(v.size for v in jax.tree.leaves(variables["params"]))
  n_leaves = len(jax.tree.leaves(variables["params"]))
  makers = {"sgd (no momentum)": lambda: optax.sgd(harness.LR)}
  all_opts = harness.optimizers(include_presets=False)
  makers.update({k: all_opts[k] for k in CANDIDATES})
  steps = {k: TrainStep(make(), model, variables, (x, y)) for k, make in makers.items()}
  step_s = harness.time_round_robin(steps, repeats)
  del steps
  # The same optimizers' update alone, on the same tree, with gradient-sized inputs.
  params = variables["params"]
  grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
  updates = {k: harness.Compiled(make(), params, grads) for k, make in makers.items()}
  update_s = harness.time_round_robin(updates, repeats)
  floor = step_s["sgd (no momentum)"]
  rows = [
    dict(
      name=k,
      step_ms=1e3 * step_s[k],
      x_floor=step_s[k] / floor,
      over_floor_ms=1e3 * (step_s[k] - floor),
      share_vs_floor=(step_s[k] - floor) / step_s[k],
      update_ms=1e3 * update_s[k],
      share_update_alone=update_s[k] / step_s[k],
    )
    for k in makers
  ]
  return dict(
    batch_size=batch_size,
    image_size=image_size,
    params=int(n_params),
    leaves=n_leaves,
    repeats=repeats,
    rows=rows,
  )


def table(res: dict[str, Any]) -> str:
  title = (
    f"ResNet-50 ({res['params']:,} params, {res['leaves']} leaves), batch "
    f"{res['batch_size']} of {res['image_size']}x{res['image_size']} images, float32; median "
    f"of {res['repeats']} round-robin repeats."
  )
  columns = [
    "optimizer",
    "train step (ms)",
    "vs plain SGD",
    "step - plain SGD (ms)",
    "update alone (ms)",
    "update alone / step",
  ]
  rows = [
    (
      f"`{r['name']}`",
      f"{r['step_ms']:.0f}",
      f"{r['x_floor']:.3f}x",
      f"{r['over_floor_ms']:+.0f}",
      f"{r['update_ms']:.1f}",
      f"{100 * r['share_update_alone']:.1f}%",
    )
    for r in res["rows"]
  ]
  return harness.markdown_table(title, columns, rows)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.train_step",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ap.add_argument("--quick", action="store_true", help="batch 2, 64x64 images, 3 repeats")
  ap.add_argument("--batch-size", type=int, default=4)
  ap.add_argument("--image-size", type=int, default=112)
  ap.add_argument("--repeats", type=int, default=15)
  ap.add_argument("--json", default=None, help="also write the results here")
  args = ap.parse_args(argv)
  if args.quick:
    args.batch_size, args.image_size, args.repeats = 2, 64, 3
  print(f"{datetime.datetime.now().isoformat(timespec='seconds')}; {harness.machine()}")
  res = run(args.batch_size, args.image_size, args.repeats)
  print(table(res), flush=True)
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(res, fh, indent=1)
  return res


if __name__ == "__main__":
  main()
