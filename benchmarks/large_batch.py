"""Large-batch training on MNIST-1D: LARS, SGD-momentum and AdamW, each tuned per batch size.

Run from the repository root (needs the ``demo`` extra: flax, mnist1d, matplotlib, tqdm)::

  python -m benchmarks.large_batch            # the full comparison
  python -m benchmarks.large_batch --quick    # about a minute: small data, 2 batch sizes, 1 seed

**Data.** MNIST-1D (Greydanus 2020) made offline by ``mnist1d.data.make_dataset``
from the templates that ship with the package (never ``get_dataset``, which downloads),
with a fixed seed: 70,000 training and 10,000 test sequences of length 40. The last
10,000 training sequences are the validation split the learning rates are chosen on; the
models train on the other 60,000. The arrays are cached in ``--cache-dir`` (default
``$XDG_CACHE_HOME/lars_jax`` or ``~/.cache/lars_jax``) after the first run.

**Model.** A small 1-D CNN (Flax Linen): three convolutions (16, 32, 32 channels,
kernels 5, 3, 3, stride 2) each with batch norm and ReLU, then a dense head. The
convolutions are patches + matmul, much faster than ``lax.conv`` on XLA CPU. Before
testing, the batch-norm statistics are recomputed on training data ("precise BN").

**Optimizers.** ``lars_jax.lars`` (trust coefficient 0.001, momentum 0.9: every leaf is
adapted, optax's default, so no parameter ever takes the raw LARS learning rate),
``optax.sgd`` with momentum 0.9, and ``optax.adamw``. All decay the kernels only
(``lars_jax.masks.min_ndim(2)``): LARS and SGD by L2 (``g + 5e-4 w``), AdamW by its
decoupled decay (0.05). All share one schedule shape,
`lars_jax.schedules.warmup_polynomial_decay` (linear warm-up, then power-2 decay to 0),
scaled by the peak learning rate, and the same number of epochs at every batch size.

**Tuning.** For each optimizer and batch size, a grid of peak learning rates a factor 2
apart, trained with seed 0 and scored on the validation split. At the smallest batch it
starts around a first guess; at a larger batch ``B`` it spans from the smallest batch's
best rate to twice the linear-scaling value (best x ``B / B_min`` x 2). A best rate on
an edge of the grid extends the grid on that side. The chosen rate is then trained with
more seeds; the table reports test accuracy over all of them (seed 0 included).

All models of one grid (or the extra seeds) train at once under ``jax.vmap``, with the
peak learning rate as a traced argument: one jitted dispatch per step for the lot.

**Diagnostics** at the largest batch: per layer, the step each optimizer takes,
``|update| / |w|``, and the LARS trust ratios read from the optimizer's own state
(``keep_stats=True`` and `lars_jax.layer_stats`).

**Outputs** in ``--out`` (default ``large_batch_out/``): ``results.md`` (the table and
the grids), ``results.json`` (every run, every seed), ``accuracy_vs_batch_size.png``,
``accuracy_vs_lr.png``, ``trust_ratios.png`` and ``update_ratios.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lars_jax

NUM_CLASSES = 10
SEQ_LEN = 40  # mnist1d's final_seq_length
DEFAULT_OUT = "large_batch_out"
BN_CHUNK = 4096  # examples per batch-norm statistics chunk (precise BN)

#: Leaves with weight decay, for every optimizer: kernels (biases and batch norm are not).
DECAYED = lars_jax.masks.min_ndim(2)


# ----------------------------------------------------------------------------
# Data.


def default_cache_dir() -> Path:
  """``$XDG_CACHE_HOME/lars_jax``, or ``~/.cache/lars_jax``."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(root) / "lars_jax"


def make_mnist1d(
  n_train: int, n_test: int, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
  """MNIST-1D made offline with mnist1d's own generator, cached as ``.npz``.

  ``mnist1d.data.make_dataset`` draws ``n_train + n_test`` sequences (a multiple of 10:
  the same number per class) from the package's templates, shuffles them, standardises
  them and splits them; nothing is downloaded. It seeds NumPy's global generator, whose
  state is restored afterwards.

  Returns:
    ``{'x_train': (n_train, 40) float32, 'y_train': (n_train,) int32, 'x_test', 'y_test'}``.
  """
  total = n_train + n_test
  if n_train <= 0 or n_test <= 0 or total % NUM_CLASSES:
    raise ValueError(
      f"n_train + n_test must be a positive multiple of {NUM_CLASSES} (one number of "
      f"examples per class), got {n_train} + {n_test}."
    )
  cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
  path = cache / f"mnist1d_{n_train}_{n_test}_seed{seed}.npz"
  if path.exists():
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  import mnist1d.data

  args = mnist1d.data.get_dataset_args()
  args.num_samples = total
  args.train_split = (n_train + 0.5) / total  # make_dataset splits at int(total * split)
  args.seed = seed
  saved = np.random.get_state()
  try:
    ds = mnist1d.data.make_dataset(args)
  finally:
    np.random.set_state(saved)
  data = {
    "x_train": ds["x"].astype(np.float32),
    "y_train": ds["y"].astype(np.int32),
    "x_test": ds["x_test"].astype(np.float32),
    "y_test": ds["y_test"].astype(np.int32),
  }
  cache.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, **data)
  tmp.replace(path)
  return data


# ----------------------------------------------------------------------------
# Model.


class PatchConv(nn.Module):
  """1-D convolution ('SAME' padding) as one matmul of the input's patches.

  The kernel has the usual shape ``(kernel_size, in_features, features)``.
  """

  features: int
  kernel_size: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, length, c = x.shape
    k, s = self.kernel_size, self.stride
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, c, self.features))
    out_len = -(-length // s)
    pad = max((out_len - 1) * s + k - length, 0)
    x = jnp.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (0, 0)))
    patches = jnp.concatenate([x[:, i : i + s * (out_len - 1) + 1 : s] for i in range(k)], -1)
    return patches @ kernel.reshape(k * c, self.features)


class CNN(nn.Module):
  """Convolutions with batch norm and ReLU, flattened into a dense head."""

  widths: Sequence[int] = (16, 32, 32)
  kernel_sizes: Sequence[int] = (5, 3, 3)
  stride: int = 2
  num_classes: int = NUM_CLASSES
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x[..., None]
    for w, k in zip(self.widths, self.kernel_sizes):
      x = PatchConv(w, k, self.stride)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x)
      x = nn.relu(x)
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


# ----------------------------------------------------------------------------
# Optimizers: each is built from a peak learning rate (traced under vmap) and a schedule
# shape with peak 1, so that one compiled step serves a whole grid of rates.


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """A named optimizer: ``build(learning_rate_schedule) -> GradientTransformation``."""

  name: str
  label: str
  build: Callable[[optax.Schedule], optax.GradientTransformation]
  first_lr: float  # centre of the first grid at the smallest batch (an earlier run's best)


def optimizers(
  weight_decay: float = 5e-4, adamw_weight_decay: float = 0.05, trust_coefficient: float = 1e-3
) -> dict[str, Optimizer]:
  """The candidates. ``lars_jax.lars`` keeps its per-layer statistics in its state."""
  l2 = lambda: optax.add_decayed_weights(weight_decay, mask=DECAYED)
  return {
    o.name: o
    for o in (
      Optimizer(
        "lars",
        "LARS",
        lambda lr: lars_jax.lars(
          lr,
          weight_decay=weight_decay,
          weight_decay_mask=DECAYED,
          trust_coefficient=trust_coefficient,
          momentum=0.9,
          keep_stats=True,
        ),
        16.0,
      ),
      Optimizer("sgd", "SGD-momentum", lambda lr: optax.chain(l2(), optax.sgd(lr, 0.9)), 1.6),
      Optimizer(
        "adamw",
        "AdamW",
        lambda lr: optax.adamw(lr, weight_decay=adamw_weight_decay, mask=DECAYED),
        0.128,
      ),
      Optimizer(
        "nesterov",
        "SGD-Nesterov",
        lambda lr: optax.chain(l2(), optax.sgd(lr, 0.9, nesterov=True)),
        1.6,
      ),
      Optimizer(
        "torch_lars",
        "torch_lars",
        lambda lr: lars_jax.torch_lars(
          lr,
          momentum=0.9,
          weight_decay=weight_decay,
          weight_decay_mask=DECAYED,
          trust_coefficient=trust_coefficient,
          keep_stats=True,
        ),
        16.0,
      ),
    )
  }


# ----------------------------------------------------------------------------
# Training: K models at once (vmap), one jitted dispatch per step.


@dataclasses.dataclass(frozen=True)
class Plan:
  """Steps of one run at one batch size."""

  batch_size: int
  steps_per_epoch: int
  epochs: int
  warmup_epochs: float

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.epochs

  @property
  def warmup_steps(self) -> int:
    return max(1, round(self.warmup_epochs * self.steps_per_epoch))

  def schedule(self) -> optax.Schedule:
    """The schedule shape with peak 1 (multiplied by each model's peak rate)."""
    return lars_jax.schedules.warmup_polynomial_decay(
      1.0, self.warmup_steps, self.total_steps, end_value=0.0, power=2.0
    )


def _leaf_names(tree: Any) -> list[str]:
  return jax.tree.leaves(lars_jax.masks.tree_paths(tree))


def _make_tx(opt: Optimizer, shape: optax.Schedule, peak: jax.Array | float):
  return opt.build(lambda count: peak * shape(count))


@functools.cache
def _init_fn(model: CNN, opt: Optimizer):
  """Jitted ``key -> (params, batch_stats, opt_state)`` of one model.

  The state's structure does not depend on the schedule, so any schedule will do.
  """

  def init(key):
    variables = model.init(key, jnp.zeros((1, SEQ_LEN)))
    params = variables["params"]
    tx = _make_tx(opt, lambda count: jnp.ones([], jnp.float32), 1.0)
    return params, variables["batch_stats"], tx.init(params)

  return jax.jit(init)


def init_models(model: CNN, opt: Optimizer, seeds: Sequence[int]):
  """The states of one model per seed, stacked along a leading axis."""
  init = _init_fn(model, opt)
  return jax.tree.map(lambda *xs: jnp.stack(xs), *[init(jax.random.key(s)) for s in seeds])


@functools.cache
def _step_fn(model: CNN, opt: Optimizer, plan: Plan):
  """The train step of K models at once: vmapped, jitted, the states donated."""
  shape = plan.schedule()

  def step(state, x_all, y_all, idx, peak):
    params, batch_stats, opt_state = state
    x, y = x_all[idx], y_all[idx]

    def loss_fn(p):
      logits, new = model.apply(
        {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, new["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = _make_tx(opt, shape, peak).update(grads, opt_state, params)
    # How far this step moves each leaf, relative to its size (NaN where |w| = 0).
    moved = jax.tree.map(lambda u, w: jnp.linalg.norm(u) / jnp.linalg.norm(w), updates, params)
    params = optax.apply_updates(params, updates)
    return (params, batch_stats, opt_state), loss, moved

  return jax.jit(jax.vmap(step, in_axes=(0, None, None, 0, 0)), donate_argnums=0)


@functools.cache
def _eval_fns(model: CNN):
  """Jitted (batch-norm statistics of a chunk, correct predictions), for one model."""
  bn_model = model.clone(bn_momentum=0.0)  # running stats := this chunk's stats

  def chunk_stats(params, batch_stats, x):
    _, new = bn_model.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return new["batch_stats"]

  def correct(params, batch_stats, x, y):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x)
    return jnp.sum(jnp.argmax(logits, -1) == y)

  return jax.jit(chunk_stats), jax.jit(correct)


def precise_batch_norm(model: CNN, params: Any, batch_stats: Any, x: np.ndarray, chunk: int):
  """Batch-norm statistics re-estimated on `x`: the mean over chunks of each chunk's.

  One model (no leading axis); `x` is cut into ``len(x) // chunk`` chunks (at least 1).
  """
  stats_fn, _ = _eval_fns(model)
  n = max(1, len(x) // chunk)
  total = None
  for i in range(n):
    s = stats_fn(params, batch_stats, jnp.asarray(x[i * chunk : (i + 1) * chunk]))
    total = s if total is None else jax.tree.map(jnp.add, total, s)
  return jax.tree.map(lambda t: t / n, total)


def accuracy(model: CNN, params: Any, batch_stats: Any, x: jax.Array, y: jax.Array) -> float:
  """Accuracy of one model on ``(x, y)``."""
  _, correct_fn = _eval_fns(model)
  return float(correct_fn(params, batch_stats, x, y)) / len(y)


@dataclasses.dataclass
class Split:
  """The arrays one experiment uses."""

  x_fit: np.ndarray
  y_fit: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  @classmethod
  def from_data(cls, data: dict[str, np.ndarray], n_val: int) -> Split:
    """The last `n_val` training sequences are the validation split."""
    n = len(data["y_train"])
    if not 0 < n_val < n:
      raise ValueError(f"--n-val must be in (0, {n}), got {n_val}.")
    return cls(
      data["x_train"][: n - n_val],
      data["y_train"][: n - n_val],
      data["x_train"][n - n_val :],
      data["y_train"][n - n_val :],
      data["x_test"],
      data["y_test"],
    )


def train(
  model: CNN,
  opt: Optimizer,
  plan: Plan,
  split: Split,
  peaks: Sequence[float],
  seeds: Sequence[int],
  *,
  log: bool = False,
  bn_examples: int = 16384,
  progress: Any = None,
) -> list[dict[str, Any]]:
  """Trains one model per ``(peak, seed)`` pair, all at once; one record per model.

  The seed sets the initialisation and the order of the examples. With ``log=True``
  each record also holds, per step, ``|update| / |w|`` of every leaf and (for
  optimizers that keep them) `lars_jax.layer_stats` of the optimizer state.
  """
  k = len(peaks)
  step = _step_fn(model, opt, plan)
  state = init_models(model, opt, seeds)
  peak_arr = jnp.asarray(peaks, jnp.float32)
  x_all, y_all = jnp.asarray(split.x_fit), jnp.asarray(split.y_fit)
  n, b = len(split.y_fit), plan.batch_size
  losses, moved_log, stats_log = [], [], []
  t0 = time.perf_counter()
  for epoch in range(plan.epochs):
    order = np.stack([np.random.default_rng([s, epoch]).permutation(n) for s in seeds])
    order = order[:, : plan.steps_per_epoch * b].reshape(k, plan.steps_per_epoch, b)
    for i in range(plan.steps_per_epoch):
      state, loss, moved = step(state, x_all, y_all, jnp.asarray(order[:, i]), peak_arr)
      losses.append(loss)
      if log:
        moved_log.append(moved)
        host = jax.device_get(state[2])
        stats_log.append(
          [lars_jax.layer_stats(jax.tree.map(lambda a, j=j: a[j], host)) for j in range(k)]
        )
      if progress is not None:
        progress.update(1)
  val, test = [], []
  x_val, y_val = jnp.asarray(split.x_val), jnp.asarray(split.y_val)
  x_test, y_test = jnp.asarray(split.x_test), jnp.asarray(split.y_test)
  for j in range(k):
    params, batch_stats, _ = jax.tree.map(lambda a, j=j: a[j], state)
    batch_stats = precise_batch_norm(
      model, params, batch_stats, split.x_fit[:bn_examples], BN_CHUNK
    )
    val.append(accuracy(model, params, batch_stats, x_val, y_val))
    test.append(accuracy(model, params, batch_stats, x_test, y_test))
  seconds = time.perf_counter() - t0
  losses = np.asarray(jax.device_get(jnp.stack(losses)))  # (steps, K)
  records = []
  for j in range(k):
    rec = dict(
      optimizer=opt.name,
      batch_size=plan.batch_size,
      steps=plan.total_steps,
      lr=float(peaks[j]),
      seed=int(seeds[j]),
      val_acc=float(val[j]),
      test_acc=float(test[j]),
      final_loss=float(losses[-1, j]),
      diverged=bool(not np.all(np.isfinite(losses[:, j]))),
      loss_curve=[float(v) for v in losses[:: max(1, len(losses) // 50), j]],
      seconds_for_all=seconds,
    )
    if log:
      names = _leaf_names(state[0])
      moved_host = jax.device_get(moved_log)
      rec["update_ratios"] = {
        name: [float(jax.tree.leaves(m)[li][j]) for m in moved_host]
        for li, name in enumerate(names)
      }
      rec["layer_stats"] = {
        key: [s[j][key] for s in stats_log] for key in (stats_log[0][j] if stats_log else {})
      }
    records.append(rec)
  return records


# ----------------------------------------------------------------------------
# The experiment.


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that defines a run of the experiment."""

  batch_sizes: tuple[int, ...] = (256, 2048, 8192)
  optimizers: tuple[str, ...] = ("lars", "sgd", "adamw")
  epochs: int = 8
  warmup_epochs: float = 2.0
  seeds: int = 3
  n_train: int = 70_000
  n_val: int = 10_000
  n_test: int = 10_000
  data_seed: int = 0
  max_extend: int = 3
  bn_examples: int = 16384

  @classmethod
  def quick(cls) -> Settings:
    """A smoke test of the whole pipeline: small data, one seed, no grid extension."""
    return cls(
      batch_sizes=(256, 1024),
      epochs=6,
      warmup_epochs=1.5,
      seeds=1,
      n_train=10_000,
      n_val=2_000,
      n_test=2_000,
      max_extend=0,
      bn_examples=4096,
    )


def _grid(lo: float, hi: float) -> list[float]:
  """lo, 2 lo, 4 lo, ... up to and including the first value >= hi (times 0.999)."""
  n = max(1, math.ceil(math.log2(hi / lo) - 1e-9) + 1)
  return [lo * 2.0**i for i in range(n)]


def _best(records: list[dict[str, Any]]) -> dict[str, Any]:
  """The run with the highest validation accuracy (the lower rate on a tie)."""
  return max(sorted(records, key=lambda r: r["lr"]), key=lambda r: r["val_acc"])


def tune_and_test(
  model: CNN,
  opt: Optimizer,
  plan: Plan,
  split: Split,
  grid: list[float],
  settings: Settings,
  *,
  log: bool,
  progress: Any = None,
) -> dict[str, Any]:
  """Grid (seed 0) on validation, extended past an edge; then the chosen rate's seeds."""

  def run(peaks, seeds, log_this):
    if progress is not None:
      progress.total += plan.total_steps
      progress.set_postfix_str(f"{opt.name} B={plan.batch_size} x{len(peaks)}")
    return train(
      model, opt, plan, split, peaks, seeds,
      log=log_this, bn_examples=settings.bn_examples, progress=progress,
    )  # fmt: skip

  grid_runs = run(grid, [0] * len(grid), log)
  # Past an edge, add as many points as there are extra seeds (at least one): the
  # extension then reuses the seeds' compiled step.
  width = max(1, settings.seeds - 1)
  for _ in range(settings.max_extend):
    lrs = sorted(r["lr"] for r in grid_runs)
    best = _best(grid_runs)["lr"]
    if best == lrs[0]:
      new = [lrs[0] / 2**i for i in range(1, width + 1)]
    elif best == lrs[-1]:
      new = [lrs[-1] * 2**i for i in range(1, width + 1)]
    else:
      break
    grid_runs += run(new, [0] * len(new), log)
  grid_runs.sort(key=lambda r: r["lr"])
  chosen = _best(grid_runs)
  lrs = [r["lr"] for r in grid_runs]
  extra = list(range(1, settings.seeds))
  seed_runs = run([chosen["lr"]] * len(extra), extra, False) if extra else []
  tests = [chosen["test_acc"]] + [r["test_acc"] for r in seed_runs]
  return dict(
    optimizer=opt.name,
    label=opt.label,
    batch_size=plan.batch_size,
    steps=plan.total_steps,
    warmup_steps=plan.warmup_steps,
    grid=lrs,
    grid_val_acc=[r["val_acc"] for r in grid_runs],
    grid_test_acc=[r["test_acc"] for r in grid_runs],
    chosen_lr=chosen["lr"],
    at_edge=chosen["lr"] in (lrs[0], lrs[-1]),
    test_acc=tests,
    mean=float(np.mean(tests)),
    std=float(np.std(tests)),
    runs=grid_runs + seed_runs,
  )


def _fmt_lr(lr: float) -> str:
  return f"{lr:.3g}"


def format_table(summary: list[dict[str, Any]], names: Sequence[str], labels: dict) -> str:
  """Batch, steps, then chosen lr and test accuracy (%) per optimizer."""
  head = "| batch | steps |" + "".join(
    f" {labels[n]} lr | {labels[n]} test acc (%) |" for n in names
  )
  lines = [head, "|---:|---:|" + "---:|---:|" * len(names)]
  for b in sorted({r["batch_size"] for r in summary}):
    row = {r["optimizer"]: r for r in summary if r["batch_size"] == b}
    cells = [str(b), str(next(iter(row.values()))["steps"])]
    for n in names:
      r = row[n]
      edge = " (edge)" if r["at_edge"] else ""
      cells += [_fmt_lr(r["chosen_lr"]) + edge, f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_grids(summary: list[dict[str, Any]], names: Sequence[str], labels: dict) -> str:
  """Validation accuracy (%) of every grid point; the chosen rate in bold."""
  out = []
  sizes = sorted({r["batch_size"] for r in summary})
  for n in names:
    rows = {r["batch_size"]: r for r in summary if r["optimizer"] == n}
    lrs = sorted({lr for r in rows.values() for lr in r["grid"]})
    out += [
      f"**{labels[n]}**: validation accuracy (%) per peak learning rate (seed 0)",
      "",
      "| peak lr |" + "".join(f" B={b} |" for b in sizes),
      "|---:|" + "---:|" * len(sizes),
    ]
    for lr in lrs:
      cells = []
      for b in sizes:
        r = rows[b]
        if lr in r["grid"]:
          v = f"{100 * r['grid_val_acc'][r['grid'].index(lr)]:.1f}"
          cells.append(f"**{v}**" if lr == r["chosen_lr"] else v)
        else:
          cells.append("")
      out.append(f"| {_fmt_lr(lr)} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out).rstrip()


# ----------------------------------------------------------------------------
# Plots.


def _plt():
  import matplotlib.pyplot as plt  # the command line selects the Agg backend first

  return plt


def _new_axes(ax, figsize):
  """(None, `ax`) to draw into the caller's axes, else a new figure and its axes."""
  if ax is not None:
    return None, ax
  return _plt().subplots(figsize=figsize)


def _finish(fig, ax, path, **legend_kw):
  """Grid and legend; a figure of our own is laid out and saved to `path` (if given)."""
  ax.grid(alpha=0.3)
  ax.legend(**legend_kw)
  if fig is not None:
    fig.tight_layout()
    if path:
      fig.savefig(path, dpi=90)
  return ax


def plot_accuracy_vs_batch(summary, names, labels, path=None, ax=None):
  fig, ax = _new_axes(ax, (5.5, 3.6))
  for n in names:
    rows = sorted((r for r in summary if r["optimizer"] == n), key=lambda r: r["batch_size"])
    bs = [r["batch_size"] for r in rows]
    ax.errorbar(
      bs,
      [100 * r["mean"] for r in rows],
      yerr=[100 * r["std"] for r in rows],
      marker="o",
      capsize=3,
      label=labels[n],
    )
  ax.set_xscale("log", base=2)
  ax.set_xlabel("batch size (same epochs: fewer steps)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("MNIST-1D, each optimizer tuned per batch size", fontsize=10)
  return _finish(fig, ax, path)


def plot_accuracy_vs_lr(summary, names, labels, batch_size, path=None, ax=None):
  fig, ax = _new_axes(ax, (5.5, 3.6))
  for n in names:
    r = next(r for r in summary if r["optimizer"] == n and r["batch_size"] == batch_size)
    (line,) = ax.plot(r["grid"], [100 * v for v in r["grid_val_acc"]], marker="o", label=labels[n])
    i = r["grid"].index(r["chosen_lr"])
    ax.plot([r["chosen_lr"]], [100 * r["grid_val_acc"][i]], "*", ms=14, color=line.get_color())
  ax.set_xscale("log")
  ax.set_xlabel("peak learning rate")
  ax.set_ylabel("validation accuracy (%)")
  ax.set_title(f"Batch {batch_size}: accuracy vs peak lr (star: chosen)", fontsize=10)
  return _finish(fig, ax, path)


def _layer_label(path: str) -> str:
  return path.replace("PatchConv_", "conv").replace("BatchNorm_", "bn").replace("Dense_", "dense")


def plot_trust_ratios(stats: dict[str, list[float]], title: str, path=None, ax=None):
  """Per-layer trust ratios (the ``trust_ratio/<path>`` entries of layer_stats) per step."""
  fig, ax = _new_axes(ax, (6.5, 3.8))
  for key, values in sorted(stats.items()):
    if not key.startswith("trust_ratio/"):
      continue
    name = key[len("trust_ratio/") :]
    kernel = name.endswith("kernel")
    ax.plot(
      np.arange(1, len(values) + 1),
      values,
      lw=1.8 if kernel else 0.9,
      ls="-" if kernel else "--",
      label=_layer_label(name),
    )
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("trust ratio η‖w‖ / ‖g + λw‖")
  ax.set_title(title, fontsize=10)
  return _finish(fig, ax, path, fontsize=7, ncol=2)


def plot_update_ratios(per_opt: dict[str, dict[str, list[float]]], titles: dict, path=None):
  """Per-layer ``|update| / |w|`` per step, one panel per optimizer (kernels)."""
  plt = _plt()
  fig, axes = plt.subplots(
    1, len(per_opt), figsize=(4.2 * len(per_opt), 3.6), sharey=True, squeeze=False
  )
  for ax, (n, ratios) in zip(axes[0], per_opt.items()):
    for name, values in sorted(ratios.items()):
      if name.endswith("kernel"):
        ax.plot(np.arange(1, len(values) + 1), values, label=_layer_label(name))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(titles[n], fontsize=9)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("|update| / |w| per step")
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  if path:
    fig.savefig(path, dpi=90)
  return fig


# ----------------------------------------------------------------------------
# Command line.


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.large_batch",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ap.add_argument("--quick", action="store_true", help="small data, batch 256 and 1024, 1 seed")
  ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: %(default)s)")
  ap.add_argument("--cache-dir", default=None, help="where the generated data are cached")
  ap.add_argument("--batch-sizes", type=int, nargs="+")
  ap.add_argument("--optimizers", nargs="+", choices=sorted(optimizers()))
  ap.add_argument("--epochs", type=int)
  ap.add_argument("--warmup-epochs", type=float)
  ap.add_argument("--seeds", type=int, help="seeds at the chosen rate (seed 0 included)")
  ap.add_argument("--n-train", type=int, help="training sequences, validation included")
  ap.add_argument("--n-val", type=int)
  ap.add_argument("--n-test", type=int)
  ap.add_argument("--max-extend", type=int, help="grid extensions past an edge, at most")
  ap.add_argument("--no-progress", action="store_true")
  return ap.parse_args(argv)


def _settings(args: argparse.Namespace) -> Settings:
  s = Settings.quick() if args.quick else Settings()
  fields = dict(
    batch_sizes=tuple(sorted(set(args.batch_sizes))) if args.batch_sizes else None,
    optimizers=tuple(args.optimizers) if args.optimizers else None,
    epochs=args.epochs,
    warmup_epochs=args.warmup_epochs,
    seeds=args.seeds,
    n_train=args.n_train,
    n_val=args.n_val,
    n_test=args.n_test,
    max_extend=args.max_extend,
  )
  s = dataclasses.replace(s, **{k: v for k, v in fields.items() if v is not None})
  n_fit = s.n_train - s.n_val
  for b in s.batch_sizes:
    if not 0 < b <= n_fit:
      raise ValueError(f"--batch-sizes: {b} is not in [1, {n_fit}] (the training examples).")
  if s.seeds < 1 or s.epochs < 1:
    raise ValueError("--seeds and --epochs must be at least 1.")
  if not 0 <= s.warmup_epochs < s.epochs:
    raise ValueError(f"--warmup-epochs must be in [0, {s.epochs}), got {s.warmup_epochs}.")
  return s


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  args = _parse_args(argv)
  s = _settings(args)
  import matplotlib

  matplotlib.use("Agg")  # files only, no windows
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  t_start = time.perf_counter()
  data = make_mnist1d(s.n_train, s.n_test, s.data_seed, args.cache_dir)
  t_data = time.perf_counter() - t_start
  split = Split.from_data(data, s.n_val)
  n_fit = len(split.y_fit)
  print(
    f"MNIST-1D: {n_fit} train / {len(split.y_val)} validation / {len(split.y_test)} test "
    f"({t_data:.1f} s to load or generate); {s.epochs} epochs at every batch size, "
    f"{s.warmup_epochs} warm-up; {s.seeds} seeds at the chosen rate",
    flush=True,
  )
  model = CNN()
  opts = optimizers()
  names = list(s.optimizers)
  labels = {n: opts[n].label for n in names}
  biggest = max(s.batch_sizes)
  progress = None
  if not args.no_progress:
    from tqdm.auto import tqdm

    progress = tqdm(total=0, unit="step", desc="training", smoothing=0.05)
  summary = []
  t_train = time.perf_counter()
  try:
    for n in names:
      opt, small_best = opts[n], None
      for b in s.batch_sizes:
        plan = Plan(b, n_fit // b, s.epochs, s.warmup_epochs)
        if small_best is None:
          lo = opt.first_lr
          grid = [lo / 2, lo, lo * 2]
        else:
          grid = _grid(small_best, small_best * b / s.batch_sizes[0] * 2)
        res = tune_and_test(model, opt, plan, split, grid, s, log=(b == biggest), progress=progress)
        if small_best is None:
          small_best = res["chosen_lr"]
        summary.append(res)
  finally:
    if progress is not None:
      progress.close()
  t_train = time.perf_counter() - t_train

  table = format_table(summary, names, labels)
  grids = format_grids(summary, names, labels)
  print("\n" + table + "\n\n" + grids, flush=True)
  footer = (
    f"Test accuracy: mean ± std over {s.seeds} seed{'s' * (s.seeds > 1)} at the peak learning "
    f"rate chosen on the validation split; {s.epochs} epochs ({s.warmup_epochs} warm-up) at "
    f"every batch size. Training took {t_train:.0f} s on {os.cpu_count()} cores "
    f"(data: {t_data:.1f} s)."
  )
  (out / "results.md").write_text(table + "\n\n" + footer + "\n\n" + grids + "\n")

  # Diagnostics at the largest batch: the chosen rate's seed-0 run of each optimizer.
  diag = {}
  for r in summary:
    if r["batch_size"] == biggest:
      run = next(x for x in r["runs"] if x["lr"] == r["chosen_lr"] and x["seed"] == 0)
      diag[r["optimizer"]] = run
  plot_accuracy_vs_batch(summary, names, labels, out / "accuracy_vs_batch_size.png")
  plot_accuracy_vs_lr(summary, names, labels, biggest, out / "accuracy_vs_lr.png")
  lars_like = [n for n in names if diag[n].get("layer_stats")]
  if lars_like:
    n = lars_like[0]
    plot_trust_ratios(
      diag[n]["layer_stats"],
      f"{labels[n]} trust ratios per layer, batch {biggest}, lr {_fmt_lr(diag[n]['lr'])}",
      out / "trust_ratios.png",
    )
  plot_update_ratios(
    {n: diag[n]["update_ratios"] for n in names},
    {n: f"{labels[n]}, B={biggest}, lr {_fmt_lr(diag[n]['lr'])}" for n in names},
    out / "update_ratios.png",
  )
  result = dict(
    settings=dataclasses.asdict(s),
    machine=dict(
      cpu_count=os.cpu_count(),
      processor=platform.processor() or platform.machine(),
      jax=jax.__version__,
      optax=optax.__version__,
      backend=jax.default_backend(),
    ),
    seconds=dict(data=t_data, training=t_train, total=time.perf_counter() - t_start),
    table=table,
    summary=[{k: v for k, v in r.items() if k != "runs"} for r in summary],
    runs=[run for r in summary for run in r["runs"]],
  )
  (out / "results.json").write_text(json.dumps(result, indent=1))
  print(f"\n{footer}\nWrote {out}/results.md, results.json and 4 plots.")
  return result


if __name__ == "__main__":
  main()
