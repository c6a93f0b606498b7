"""Large-batch demo: LARS vs SGD-momentum on scikit-learn's handwritten digits.

Run it with::

  python -m lars_jax.demo            # a few minutes on 2 CPU cores
  python -m lars_jax.demo --quick    # under a minute

It trains a small ResNet-style CNN (Flax Linen, batch norm, residual blocks) on the
1,797 8x8 digit images that ship with scikit-learn (nothing is downloaded), with a
fixed train/test split, at several batch sizes, with

* **LARS** (`lars_jax.lars`): trust coefficient 0.001, a large peak learning rate
  scaled linearly with the batch size, linear warm-up then polynomial (power 2)
  decay, weight decay; biases and batch-norm parameters excluded from decay and
  adaptation by name (`lars_jax.masks.exclude_names`), as in the MLPerf recipes;
* **SGD-momentum** (`optax.sgd`): the same schedule, the linear-scaling rule
  (Goyal et al., 2017), the same weight decay and exclusions.

Every batch size gets the same budget in epochs, so large batches take few steps:
the regime LARS was made for. It prints a table of test accuracy (mean ± std over
seeds), saves it (``results.md``, ``results.json``) and two plots
(``accuracy_vs_batch_size.png``; ``trust_ratios.png``, the per-layer trust ratios
of LARS over training at the largest batch) to ``--out`` (default ``demo_out/``).

The functions are importable (the notebook ``notebooks/large_batch_lars.ipynb``
reuses them); this module needs the ``demo`` extra: flax, scikit-learn,
matplotlib, tqdm.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

import lars_jax

NUM_CLASSES = 10
#: Parameters that are neither decayed nor adapted: biases and batch-norm scales/shifts.
EXCLUDE = lars_jax.masks.exclude_names("bias", "BatchNorm")


# ----------------------------------------------------------------------------
# Data.


def load_digits_split(
  test_size: int = 360, seed: int = 0, *, validation: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """scikit-learn's digits as NHWC float32 images, split into train and test.

  The split is stratified and fixed by `seed` (default: 1,437 train, 360 test).
  With ``validation=True`` the *training* part is split again the same way (1,077
  train, 360 validation) and the test images are not returned at all: that is the
  split the learning rates were tuned on. Pixels (0..16) are standardised with the
  training set's mean and std.

  Returns:
    ``(x_train, y_train, x_eval, y_eval)``; images have shape ``(n, 8, 8, 1)``.
  """
  from sklearn.datasets import load_digits

  digits = load_digits()
  x = digits.images.astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  tr, ev = split_indices(y, test_size, seed, validation=validation)
  mean, std = x[tr].mean(), x[tr].std()
  return (x[tr] - mean) / std, y[tr], (x[ev] - mean) / std, y[ev]


def split_indices(
  labels: np.ndarray, test_size: int = 360, seed: int = 0, *, validation: bool = False
) -> tuple[np.ndarray, np.ndarray]:
  """Indices ``(train, eval)`` of the stratified split used by `load_digits_split`."""
  from sklearn.model_selection import train_test_split

  idx = np.arange(len(labels))
  tr, te = train_test_split(idx, test_size=test_size, random_state=seed, stratify=labels)
  if validation:
    tr, te = train_test_split(tr, test_size=test_size, random_state=seed, stratify=labels[tr])
  return tr, te


# ----------------------------------------------------------------------------
# Model.


class ResidualBlock(nn.Module):
  """Two 3x3 convolutions with normalisation and a (projected) identity shortcut."""

  features: int
  strides: int = 1
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum)
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
    # Zero-initialised last scale: each block starts as the identity (Goyal et al.).
    y = norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A small ResNet for 8x8 images: stem, residual stages, global pooling, dense head."""

  widths: Sequence[int] = (16, 32)
  num_classes: int = NUM_CLASSES
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum)(x))
    for i, w in enumerate(self.widths):
      x = ResidualBlock(w, strides=1 if i == 0 else 2, bn_momentum=self.bn_momentum)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class TrainState(train_state.TrainState):
  """Flax `TrainState` plus the batch-norm running statistics."""

  batch_stats: Any = None


# ----------------------------------------------------------------------------
# Optimizers.


@dataclasses.dataclass(frozen=True)
class Recipe:
  """One optimizer setting: which optimizer, its base learning rate and the schedule.

  The peak learning rate is ``base_lr * batch_size / 256`` (linear scaling). The
  schedule warms up linearly over ``warmup_epochs`` and then decays polynomially
  (power 2) to zero at the end of the run.
  """

  optimizer: str  # 'lars' or 'sgd'
  base_lr: float
  weight_decay: float = 5e-4
  momentum: float = 0.9
  trust_coefficient: float = 0.001
  warmup_epochs: float = 5.0

  def peak_lr(self, batch_size: int) -> float:
    return self.base_lr * batch_size / 256


def warmup_poly_schedule(peak: float, total_steps: int, warmup_steps: int) -> optax.Schedule:
  r"""Linear warm-up to `peak`, then :math:`\text{peak}\,(1 - t/T)^2` down to 0.

  Step ``c`` (from 0) of the warm-up uses ``peak * (c + 1) / warmup_steps``, so the first
  step already moves. ``warmup_steps = 0`` skips the warm-up.

  Examples:
    >>> s = warmup_poly_schedule(1.0, total_steps=10, warmup_steps=2)
    >>> [round(float(s(c)), 3) for c in range(10)]
    [0.5, 1.0, 1.0, 0.766, 0.562, 0.391, 0.25, 0.141, 0.062, 0.016]
  """
  warmup_steps = min(warmup_steps, total_steps - 1)
  decay_steps = max(total_steps - warmup_steps, 1)

  def schedule(count):
    c = jnp.asarray(count, jnp.float32)
    warm = peak * (c + 1) / max(warmup_steps, 1)
    frac = jnp.clip((c - warmup_steps) / decay_steps, 0.0, 1.0)
    return jnp.where(c < warmup_steps, warm, peak * (1 - frac) ** 2)

  return schedule


def make_optimizer(
  recipe: Recipe, batch_size: int, steps_per_epoch: int, epochs: int
) -> optax.GradientTransformation:
  """The optimizer of `recipe` for one batch size and training length."""
  total = steps_per_epoch * epochs
  warmup = round(recipe.warmup_epochs * steps_per_epoch)
  lr = warmup_poly_schedule(recipe.peak_lr(batch_size), total, warmup)
  if recipe.optimizer == "lars":
    return lars_jax.lars(
      lr,
      weight_decay=recipe.weight_decay,
      weight_decay_mask=EXCLUDE,
      trust_coefficient=recipe.trust_coefficient,
      trust_ratio_mask=EXCLUDE,
      momentum=recipe.momentum,
    )
  if recipe.optimizer == "sgd":
    return optax.chain(
      optax.add_decayed_weights(recipe.weight_decay, mask=EXCLUDE),
      optax.sgd(lr, momentum=recipe.momentum),
    )
  raise ValueError(f"`optimizer` must be 'lars' or 'sgd', got {recipe.optimizer!r}.")


def trust_ratio_diagnostics(recipe: Recipe) -> Callable[[Any, Any], dict[str, jax.Array]]:
  r"""``(params, grads) -> {'trust_ratio/<path>': r}`` for the layers `recipe` adapts.

  A filter on `lars_jax.layer_diagnostics` called with the recipe's weight decay and
  trust coefficient and `EXCLUDE` as both masks, so ``r`` is the ratio
  :math:`\eta\|w\| / \|g + \lambda w\|` the LARS update applies. It keeps only the
  adapted layers (`layer_diagnostics` reports a ratio of 1 for the biases and
  batch-norm parameters, which LARS leaves alone). Pure and jit-able: the train step
  returns it without touching the update.

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {'Dense_0': {'kernel': jnp.array([[3.0, 4.0]]), 'bias': jnp.zeros(2)},
    ...           'BatchNorm_0': {'scale': jnp.ones(2)}}  # bias and BatchNorm: excluded
    >>> grads = {'Dense_0': {'kernel': jnp.array([[0.6, 0.8]]), 'bias': jnp.ones(2)},
    ...          'BatchNorm_0': {'scale': jnp.ones(2)}}
    >>> diag_fn = trust_ratio_diagnostics(Recipe('lars', 1.0, weight_decay=0.0))
    >>> {k: round(float(v), 4) for k, v in diag_fn(params, grads).items()}
    {'trust_ratio/Dense_0/kernel': 0.005}
  """

  def diag_fn(params, grads):
    diag = lars_jax.layer_diagnostics(
      params,
      grads,
      weight_decay=recipe.weight_decay,
      weight_decay_mask=EXCLUDE,
      trust_coefficient=recipe.trust_coefficient,
      trust_ratio_mask=EXCLUDE,
    )
    paths = jax.tree.leaves(lars_jax.masks.tree_paths(params))
    adapted = lars_jax.masks.resolve(EXCLUDE, params)
    return {f"trust_ratio/{p}": diag[f"trust_ratio/{p}"] for p, a in zip(paths, adapted) if a}

  return diag_fn


# ----------------------------------------------------------------------------
# Training.


def create_state(
  model: nn.Module, tx: optax.GradientTransformation, seed: int, image_shape: tuple[int, ...]
) -> TrainState:
  """Initialises the model with `seed` and wraps it in a `TrainState`."""
  variables = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape)), train=False)
  return TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=tx,
    batch_stats=variables["batch_stats"],
  )


def make_train_step(
  diag_fn: Callable[[Any, Any], dict[str, jax.Array]] | None = None,
) -> Callable[..., tuple[TrainState, jax.Array, dict[str, jax.Array]]]:
  """A jitted ``(state, x, y, idx) -> (state, loss, diagnostics)`` train step.

  The step trains on the examples ``x[idx], y[idx]`` (the gather runs inside the
  compiled step, so the data set is put on the device once) and donates the state.
  With `diag_fn`, it also returns ``diag_fn(params, grads)`` for the step's params
  and gradients (before the update); otherwise an empty dict.

  One compiled step per epoch position is dispatched from Python rather than an
  epoch under `lax.scan`: on XLA:CPU (jax 0.10) the convolutions inside a scan's
  while loop ran 8 to 25 times slower than the same step called from Python.
  """

  def train_step(state: TrainState, x: jax.Array, y: jax.Array, idx: jax.Array):
    x, y = x[idx], y[idx]

    def loss_fn(params):
      logits, new_vars = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, new_vars["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    diag = diag_fn(state.params, grads) if diag_fn is not None else {}
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, loss, diag

  return jax.jit(train_step, donate_argnums=0)


def recalibrate_batch_norm(model: ResNet, state: TrainState, x: jax.Array) -> TrainState:
  """Replaces the running batch-norm statistics by those of `x` under the final weights.

  The running averages are updated during training while the weights move; after
  only a few dozen large-batch steps they lag the final weights badly, and test
  accuracy then measures that lag rather than the optimizer. Recomputing them in one
  pass over the training set ("precise BN", Wu & Johnson, 2021) removes it, for
  every optimizer and batch size alike.
  """
  return state.replace(batch_stats=_batch_stats(model, state.params, state.batch_stats, x))


@functools.partial(jax.jit, static_argnums=0)
def _batch_stats(model: ResNet, params: Any, batch_stats: Any, x: jax.Array) -> Any:
  # With momentum 0 the "running" statistics become exactly those of this batch.
  _, new_vars = model.clone(bn_momentum=0.0).apply(
    {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
  )
  return new_vars["batch_stats"]


@jax.jit
def _accuracy(state: TrainState, x: jax.Array, y: jax.Array) -> jax.Array:
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x)
  return jnp.mean(jnp.argmax(logits, -1) == y)


def evaluate(state: TrainState, x: jax.Array, y: jax.Array) -> float:
  """Test accuracy with the running batch-norm statistics."""
  return float(_accuracy(state, x, y))


@dataclasses.dataclass
class RunResult:
  """One training run."""

  optimizer: str
  batch_size: int
  seed: int
  steps: int
  test_accuracy: float
  train_loss: list[float]  # mean loss per epoch
  seconds: float
  trust_ratios: dict[str, list[float]] | None = None  # per step, for logged runs


class Experiment:
  """Trains `ResNet` runs on one data split, reusing compiled epochs across seeds."""

  def __init__(self, data, epochs: int, widths: Sequence[int] = (16, 32)):
    self.x_train, self.y_train, self.x_test, self.y_test = (jnp.asarray(a) for a in data)
    self.epochs = epochs
    self.model = ResNet(widths=tuple(widths))
    self._cache: dict[Any, Any] = {}

  @property
  def n_train(self) -> int:
    return int(self.x_train.shape[0])

  def _compiled(self, recipe: Recipe, batch_size: int, log_trust_ratios: bool):
    key = (recipe, batch_size, log_trust_ratios)
    if key not in self._cache:
      steps = self.n_train // batch_size
      tx = make_optimizer(recipe, batch_size, steps, self.epochs)
      diag_fn = trust_ratio_diagnostics(recipe) if log_trust_ratios else None
      self._cache[key] = (tx, steps, make_train_step(diag_fn))
    return self._cache[key]

  def run(
    self,
    recipe: Recipe,
    batch_size: int,
    seed: int,
    *,
    log_trust_ratios: bool = False,
    on_epoch: Callable[[float], None] | None = None,
  ) -> RunResult:
    """Trains one run from scratch and returns its test accuracy and history."""
    if not 1 <= batch_size <= self.n_train:
      raise ValueError(f"`batch_size` must be in [1, {self.n_train}], got {batch_size}.")
    if log_trust_ratios and recipe.optimizer != "lars":
      raise ValueError("`log_trust_ratios` needs a LARS recipe.")
    start = time.perf_counter()
    tx, steps, train_step = self._compiled(recipe, batch_size, log_trust_ratios)
    state = create_state(self.model, tx, seed, tuple(self.x_train.shape[1:]))
    rng = np.random.default_rng(10_000 + seed)
    losses, diags = [], []
    for _ in range(self.epochs):
      # A fresh shuffle each epoch; the last partial batch is dropped.
      perm = rng.permutation(self.n_train)[: steps * batch_size].reshape(steps, batch_size)
      epoch_loss = []
      for idx in perm:
        state, loss, diag = train_step(state, self.x_train, self.y_train, idx.astype(np.int32))
        epoch_loss.append(loss)
        diags.append(diag)
      loss = float(np.mean(jax.device_get(epoch_loss)))
      losses.append(loss)
      if on_epoch is not None:
        on_epoch(loss)
    state = recalibrate_batch_norm(self.model, state, self.x_train)
    acc = evaluate(state, self.x_test, self.y_test)
    ratios = None
    if log_trust_ratios:
      ratios = {
        k.removeprefix("trust_ratio/"): [float(d[k]) for d in jax.device_get(diags)]
        for k in diags[0]
      }
    return RunResult(
      optimizer=recipe.optimizer,
      batch_size=batch_size,
      seed=seed,
      steps=steps * self.epochs,
      test_accuracy=acc,
      train_loss=losses,
      seconds=time.perf_counter() - start,
      trust_ratios=ratios,
    )


# ----------------------------------------------------------------------------
# Reporting.


def summarize(results: Sequence[RunResult]) -> list[dict[str, Any]]:
  """One row per (batch size, optimizer): mean and std of test accuracy over seeds."""
  rows: dict[tuple[int, str], list[RunResult]] = {}
  for r in results:
    rows.setdefault((r.batch_size, r.optimizer), []).append(r)
  out = []
  for (b, opt), rs in sorted(rows.items()):
    accs = np.array([r.test_accuracy for r in rs])
    out.append(
      dict(
        batch_size=b,
        optimizer=opt,
        steps=rs[0].steps,
        mean=float(accs.mean()),
        std=float(accs.std()),
        seeds=len(rs),
      )
    )
  return out


def format_table(summary: Sequence[dict[str, Any]], recipes: dict[str, Recipe], epochs: int) -> str:
  """A Markdown table: batch size, steps, peak learning rates and accuracies."""
  names = {"lars": "LARS", "sgd": "SGD-momentum"}
  opts = [o for o in ("lars", "sgd") if o in recipes]
  by = {(r["batch_size"], r["optimizer"]): r for r in summary}
  header = ["batch", "steps"]
  for o in opts:
    header += [f"{names[o]} peak lr", f"{names[o]} test acc (%)"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for b in sorted({r["batch_size"] for r in summary}):
    row = [str(b), str(next(r["steps"] for r in summary if r["batch_size"] == b))]
    for o in opts:
      r = by.get((b, o))
      row.append(f"{recipes[o].peak_lr(b):.3g}")
      row.append("-" if r is None else f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}")
    lines.append("| " + " | ".join(row) + " |")
  seeds = max(r["seeds"] for r in summary)
  lines.append("")
  lines.append(
    f"Test accuracy, mean ± std over {seeds} seed(s); {epochs} epochs at every batch size."
  )
  return "\n".join(lines)


def plot_accuracy(summary: Sequence[dict[str, Any]], path: str | None = None, ax=None):
  """Accuracy vs batch size (log scale), one line per optimizer with std error bars."""
  import matplotlib.pyplot as plt

  if ax is None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
  else:
    fig = ax.figure
  names = {"lars": "LARS", "sgd": "SGD-momentum"}
  for opt in ("lars", "sgd"):
    rows = [r for r in summary if r["optimizer"] == opt]
    if not rows:
      continue
    b = [r["batch_size"] for r in rows]
    m = [100 * r["mean"] for r in rows]
    s = [100 * r["std"] for r in rows]
    ax.errorbar(b, m, yerr=s, marker="o", capsize=3, label=names[opt])
  ax.set_xscale("log", base=2)
  sizes = sorted({r["batch_size"] for r in summary})
  ax.set_xticks(sizes, [str(b) for b in sizes])
  ax.minorticks_off()
  ax.set_xlabel("batch size")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title("Digits, same epochs at every batch size")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=100)
  return fig


def plot_trust_ratios(
  trust_ratios: dict[str, list[float]], batch_size: int, path: str | None = None, ax=None
):
  """Per-layer LARS trust ratios over training steps (log scale)."""
  import matplotlib.pyplot as plt

  if ax is None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
  else:
    fig = ax.figure
  for name, values in trust_ratios.items():
    label = name.removesuffix("/kernel")
    ax.plot(np.arange(1, len(values) + 1), values, label=label, lw=1.2)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel(r"trust ratio $\eta\,\|w\| / \|g + \lambda w\|$")
  ax.set_title(f"LARS trust ratios per layer, batch {batch_size}")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=100)
  return fig


# ----------------------------------------------------------------------------
# Command line.

DEFAULT_BATCH_SIZES = ("32", "128", "512", "full")
QUICK_BATCH_SIZES = ("128", "full")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog="python -m lars_jax.demo",
    description="LARS vs SGD-momentum at growing batch sizes on scikit-learn's digits.",
  )
  p.add_argument("--quick", action="store_true", help="a sub-minute run: 2 batch sizes, 1 seed")
  p.add_argument("--out", default="demo_out", help="output directory (default: demo_out/)")
  p.add_argument(
    "--batch-sizes",
    nargs="+",
    default=None,
    help=f"batch sizes, 'full' = whole training set (default: {' '.join(DEFAULT_BATCH_SIZES)})",
  )
  p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 3; quick 1)")
  p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 30; quick 15)")
  p.add_argument(
    "--lars-lr", type=float, default=3.0, help="LARS base lr per 256 examples (default 3.0)"
  )
  p.add_argument(
    "--sgd-lr", type=float, default=0.6, help="SGD base lr per 256 examples (default 0.6)"
  )
  p.add_argument("--weight-decay", type=float, default=5e-4)
  p.add_argument("--trust-coefficient", type=float, default=0.001)
  p.add_argument("--warmup-epochs", type=float, default=None, help="default: 1/6 of the epochs")
  p.add_argument("--optimizers", nargs="+", default=["lars", "sgd"], choices=["lars", "sgd"])
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = p.parse_args(argv)
  if args.seeds is None:
    args.seeds = 1 if args.quick else 3
  if args.epochs is None:
    args.epochs = 15 if args.quick else 30
  if args.batch_sizes is None:
    args.batch_sizes = list(QUICK_BATCH_SIZES if args.quick else DEFAULT_BATCH_SIZES)
  if args.warmup_epochs is None:
    args.warmup_epochs = args.epochs / 6
  if args.seeds < 1 or args.epochs < 1:
    p.error("--seeds and --epochs must be >= 1")
  return args


def _batch_sizes(specs: Sequence[str], n_train: int) -> list[int]:
  out = []
  for s in specs:
    b = n_train if s == "full" else int(s)
    if not 1 <= b <= n_train:
      raise ValueError(f"--batch-sizes: {s!r} must be 'full' or an int in [1, {n_train}].")
    out.append(b)
  return sorted(set(out))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs the demo; returns the summary rows, the table and the per-run results."""
  args = _parse_args(argv)
  from tqdm.auto import tqdm

  os.makedirs(args.out, exist_ok=True)
  data = load_digits_split()
  exp = Experiment(data, epochs=args.epochs)
  batch_sizes = _batch_sizes(args.batch_sizes, exp.n_train)
  common = dict(
    weight_decay=args.weight_decay,
    trust_coefficient=args.trust_coefficient,
    warmup_epochs=args.warmup_epochs,
  )
  recipes = {
    "lars": Recipe("lars", args.lars_lr, **common),
    "sgd": Recipe("sgd", args.sgd_lr, **common),
  }
  recipes = {k: v for k, v in recipes.items() if k in args.optimizers}
  largest = max(batch_sizes)
  jobs = [(b, o, s) for b in batch_sizes for o in recipes for s in range(args.seeds)]
  print(
    f"lars_jax demo: ResNet on digits ({exp.n_train} train / {exp.x_test.shape[0]} test), "
    f"{args.epochs} epochs, batch sizes {batch_sizes}, {args.seeds} seed(s), "
    f"jax {jax.__version__} on {jax.devices()[0].platform}",
    flush=True,
  )
  results: list[RunResult] = []
  start = time.perf_counter()
  with tqdm(
    total=len(jobs) * args.epochs, unit="epoch", disable=args.no_progress, file=sys.stderr
  ) as bar:
    for b, opt, seed in jobs:
      bar.set_description(f"{opt} B={b} seed={seed}")
      log = opt == "lars" and b == largest and seed == 0
      r = exp.run(
        recipes[opt],
        b,
        seed,
        log_trust_ratios=log,
        on_epoch=lambda loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
      )
      results.append(r)
      bar.set_postfix(acc=f"{r.test_accuracy:.3f}")
  elapsed = time.perf_counter() - start
  summary = summarize(results)
  table = format_table(summary, recipes, args.epochs)
  print(table)
  print(f"total time {elapsed:.1f} s")
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(
      dict(
        args=vars(args),
        seconds=elapsed,
        summary=summary,
        runs=[dataclasses.asdict(r) for r in results],
      ),
      f,
      indent=1,
    )
  from matplotlib.figure import Figure  # no pyplot: no global backend, no open figures

  plot_accuracy(
    summary,
    os.path.join(args.out, "accuracy_vs_batch_size.png"),
    ax=Figure(figsize=(5, 3.5)).add_subplot(),
  )
  logged = [r for r in results if r.trust_ratios]
  if logged:
    plot_trust_ratios(
      logged[0].trust_ratios,
      largest,
      os.path.join(args.out, "trust_ratios.png"),
      ax=Figure(figsize=(6, 3.5)).add_subplot(),
    )
  print(f"saved results.md, results.json and plots to {args.out}/")
  return dict(summary=summary, table=table, runs=results, seconds=elapsed)


if __name__ == "__main__":
  main()
