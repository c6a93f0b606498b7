"""Large-batch training on MNIST-1D: LARS, SGD-momentum and AdamW, each tuned per batch size.

Run from the repository root (needs the ``demo`` extra: flax, mnist1d, matplotlib, tqdm)::

  python -m benchmarks.large_batch            # the full comparison
  python -m benchmarks.large_batch --quick    # about a minute: small data, 2 batch sizes, 1 seed

or call ``run(Settings(...))``, as the notebook does; each `Settings` field is also an
option. The README's demo section describes the experiment and its results. Writes to
``--out`` (default ``large_batch_out/``): ``results.md`` (the table and the validation
grids), ``results.json`` (every run, every seed) and four plots.
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
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import lars_jax

NUM_CLASSES = 10
SEQ_LEN = 40  # mnist1d's final_seq_length
BN_CHUNK = 4096  # examples per batch-norm statistics chunk (precise BN)
#: Leaves with weight decay, for every optimizer: kernels (biases and batch norm are not).
DECAYED = lars_jax.masks.min_ndim(2)


# ---- Data -------------------------------------------------------------------------------------
def make_mnist1d(
  n_train: int, n_test: int, seed: int = 0, cache_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
  """``{'x_train': (n_train, 40) float32, 'y_train': (n_train,) int32, 'x_test', 'y_test'}``:
  MNIST-1D made offline by ``mnist1d.data.make_dataset`` (never ``get_dataset``, which
  downloads), cached as ``.npz`` in `cache_dir` (default ``$XDG_CACHE_HOME/lars_jax`` or
  ``~/.cache/lars_jax``). NumPy's global generator, which mnist1d seeds, is restored."""
  total = n_train + n_test
  if n_train <= 0 or n_test <= 0 or total % NUM_CLASSES:
    raise ValueError(
      f"n_train + n_test must be a positive multiple of 10, got {n_train} + {n_test}."
    )
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  cache = Path(cache_dir) if cache_dir is not None else Path(root) / "lars_jax"
  path = cache / f"mnist1d_{n_train}_{n_test}_seed{seed}.npz"
  if path.exists():
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  import mnist1d.data

  args = mnist1d.data.get_dataset_args()
  args.num_samples, args.seed = total, seed
  args.train_split = (n_train + 0.5) / total  # make_dataset splits at int(total * split)
  saved = np.random.get_state()
  try:
    ds = mnist1d.data.make_dataset(args)
  finally:
    np.random.set_state(saved)
  data = {"x_train": ds["x"], "y_train": ds["y"], "x_test": ds["x_test"], "y_test": ds["y_test"]}
  data = {k: v.astype(np.float32 if k[0] == "x" else np.int32) for k, v in data.items()}
  cache.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, **data)
  tmp.replace(path)
  return data


def split_data(data: dict[str, np.ndarray], n_val: int) -> dict[str, tuple[np.ndarray, ...]]:
  """``{'fit': (x, y), 'val': (x, y), 'test': (x, y)}``: the models train on `fit`, the
  rates are chosen on `val`, the last `n_val` training sequences."""
  n = len(data["y_train"])
  if not 0 < n_val < n:
    raise ValueError(f"n_val (--n-val) must be in (0, {n}), got {n_val}.")
  x, y, m = data["x_train"], data["y_train"], n - n_val
  return {"fit": (x[:m], y[:m]), "val": (x[m:], y[m:]), "test": (data["x_test"], data["y_test"])}


# ---- Model ------------------------------------------------------------------------------------
class PatchConv(nn.Module):
  """1-D convolution ('SAME' padding) as one matmul of the input's patches (faster than
  ``lax.conv`` on XLA CPU); the kernel has shape ``(kernel_size, in_features, features)``."""

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


def _train_mode(model: CNN, params: Any, batch_stats: Any, x: jax.Array):
  """Logits with batch statistics, and the batch-norm running statistics updated."""
  variables = {"params": params, "batch_stats": batch_stats}
  logits, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return logits, new["batch_stats"]


# ---- Optimizers -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Optimizer:
  """``build(schedule) -> GradientTransformation``; the schedule is the shape with peak 1 times
  a peak rate traced under vmap, so that one compiled step serves a whole grid of rates."""

  name: str
  label: str
  build: Callable[[optax.Schedule], optax.GradientTransformation]
  first_lr: float  # centre of the first grid at the smallest batch (an earlier run's best)
  keeps_stats: bool = False  # built with keep_stats=True: read with lars_jax.layer_stats


#: The optimizers the experiment compares, all decaying the kernels only: LARS (every leaf
#: adapted, optax's default; its statistics kept for `lars_jax.layer_stats`) and SGD by L2,
#: AdamW decoupled.
OPTIMIZERS = {o.name: o for o in (
  Optimizer("lars", "LARS", lambda lr: lars_jax.lars(
    lr, weight_decay=5e-4, weight_decay_mask=DECAYED, trust_coefficient=1e-3, momentum=0.9,
    keep_stats=True), 16.0, keeps_stats=True),
  Optimizer("sgd", "SGD-momentum", lambda lr: optax.chain(
    optax.add_decayed_weights(5e-4, mask=DECAYED), optax.sgd(lr, 0.9)), 1.6),
  Optimizer("adamw", "AdamW", lambda lr: optax.adamw(lr, weight_decay=0.05, mask=DECAYED), 0.128),
)}  # fmt: skip


# ---- Training: K models at once (vmap), one jitted dispatch per step --------------------------
class Plan(NamedTuple):
  """One run at one batch size: `epochs` of `steps_per_epoch` steps, `warmup_steps` first."""

  batch_size: int
  steps_per_epoch: int
  epochs: int
  warmup_steps: int

  @property
  def total_steps(self) -> int:
    return self.steps_per_epoch * self.epochs


@functools.cache
def _compiled(model: CNN, opt: Optimizer, plan: Plan):
  """Jitted (init of one model from its key, train step of K models: vmapped, the states
  donated)."""
  shape = lars_jax.schedules.warmup_polynomial_decay(  # peak 1, times each model's peak rate
    1.0, plan.warmup_steps, plan.total_steps, end_value=0.0, power=2.0
  )

  def init(key):  # the state's structure does not depend on the schedule
    variables = model.init(key, jnp.zeros((1, SEQ_LEN)))
    params = variables["params"]
    tx = opt.build(lambda count: jnp.ones([], jnp.float32))
    return params, variables["batch_stats"], tx.init(params)

  def step(state, x_all, y_all, idx, peak):
    params, batch_stats, opt_state = state
    x, y = x_all[idx], y_all[idx]

    def loss_fn(p):
      logits, new_stats = _train_mode(model, p, batch_stats, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    tx = opt.build(lambda count: peak * shape(count))
    updates, opt_state = tx.update(grads, opt_state, params)
    # How far this step moves each leaf, relative to its size (NaN where |w| = 0).
    moved = jax.tree.map(lambda u, w: jnp.linalg.norm(u) / jnp.linalg.norm(w), updates, params)
    params = optax.apply_updates(params, updates)
    return (params, batch_stats, opt_state), loss, moved

  vstep = jax.vmap(step, in_axes=(0, None, None, 0, 0))
  return jax.jit(init), jax.jit(vstep, donate_argnums=0)


@functools.cache
def _eval_fns(model: CNN):
  """Jitted (batch-norm statistics of a chunk, correct predictions), for one model."""
  bn_model = model.clone(bn_momentum=0.0)  # running stats := this chunk's stats

  def correct(params, batch_stats, x, y):
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x)
    return jnp.sum(jnp.argmax(logits, -1) == y)

  return jax.jit(lambda *args: _train_mode(bn_model, *args)[1]), jax.jit(correct)


def precise_batch_norm(model: CNN, params, batch_stats, x: np.ndarray, chunk: int):
  """Batch-norm statistics re-estimated on `x` (one model): the mean over ``len(x) // chunk``
  chunks (at least 1) of each chunk's."""
  stats_fn, n = _eval_fns(model)[0], max(1, len(x) // chunk)
  each = [
    stats_fn(params, batch_stats, jnp.asarray(x[i : i + chunk])) for i in range(0, n * chunk, chunk)
  ]
  return jax.tree.map(lambda *chunks: sum(chunks) / n, *each)


def train(
  model: CNN, opt: Optimizer, plan: Plan, split: dict, peaks: Sequence[float], seeds, *,
  progress: tqdm, log: bool = False, bn_examples: int = 16384,
) -> list[dict[str, Any]]:  # fmt: skip
  """Trains one model per ``(peak, seed)`` pair, all at once; one record per model.

  The seed sets the initialisation and the order of the examples. With ``log=True`` each
  record also holds, per step, ``|update| / |w|`` of every leaf and (for optimizers that
  keep them) `lars_jax.layer_stats` of the optimizer state.
  """
  (init, step), correct = _compiled(model, opt, plan), _eval_fns(model)[1]
  state = jax.tree.map(lambda *xs: jnp.stack(xs), *[init(jax.random.key(s)) for s in seeds])
  peak_arr = jnp.asarray(peaks, jnp.float32)
  x_all, y_all = map(jnp.asarray, split["fit"])
  k, n, b = len(peaks), len(y_all), plan.batch_size
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
        stats_log.append(lars_jax.layer_stats(state[2]) if opt.keeps_stats else {})
      progress.update(1)
  acc = {"val": [], "test": []}
  for j in range(k):
    params, batch_stats, _ = jax.tree.map(lambda a, j=j: a[j], state)
    batch_stats = precise_batch_norm(
      model, params, batch_stats, split["fit"][0][:bn_examples], BN_CHUNK
    )
    for part in acc:
      x, y = map(jnp.asarray, split[part])
      acc[part].append(float(correct(params, batch_stats, x, y)) / len(y))
  seconds = time.perf_counter() - t0
  losses = np.asarray(jax.device_get(jnp.stack(losses)))  # (steps, K)
  if log:  # (steps, leaves, K) and {key: (steps, K)}
    names = jax.tree.leaves(lars_jax.masks.tree_paths(state[0]))
    moved = np.stack([jax.tree.leaves(m) for m in jax.device_get(moved_log)])
    stats = {key: np.stack([s[key] for s in stats_log]) for key in stats_log[0]}
  records = []
  for j in range(k):
    rec = dict(
      optimizer=opt.name, batch_size=b, steps=plan.total_steps, lr=float(peaks[j]),
      seed=int(seeds[j]), val_acc=acc["val"][j], test_acc=acc["test"][j],
      final_loss=float(losses[-1, j]), diverged=bool(not np.all(np.isfinite(losses[:, j]))),
      loss_curve=[float(v) for v in losses[:: max(1, len(losses) // 50), j]],
      seconds_for_all=seconds,
    )  # fmt: skip
    if log:
      rec["update_ratios"] = {name: moved[:, i, j].tolist() for i, name in enumerate(names)}
      rec["layer_stats"] = {key: v[:, j].tolist() for key, v in stats.items()}
    records.append(rec)
  return records


# ---- The experiment ---------------------------------------------------------------------------
def _field(default: Any, help: str) -> Any:  # `help`: the command-line help
  return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that defines a run of the experiment; each field is a command-line option."""

  batch_sizes: tuple[int, ...] = _field((256, 2048, 8192), "batch sizes (tuned from the smallest)")
  optimizers: tuple[str, ...] = _field(tuple(OPTIMIZERS), f"from {', '.join(OPTIMIZERS)}")
  epochs: int = _field(8, "epochs at every batch size")
  warmup_epochs: float = _field(2.0, "epochs of linear warm-up")
  seeds: int = _field(3, "seeds at the chosen rate (seed 0 included)")
  n_train: int = _field(70_000, "training sequences, validation included")
  n_val: int = _field(10_000, "validation sequences (the last training ones)")
  n_test: int = _field(10_000, "test sequences")
  data_seed: int = _field(0, "seed of the generated data")
  max_extend: int = _field(3, "grid extensions past an edge, at most")
  bn_examples: int = _field(16384, "training sequences for the precise batch-norm statistics")

  def __post_init__(self):
    object.__setattr__(self, "batch_sizes", tuple(sorted(set(self.batch_sizes))))  # smallest first
    object.__setattr__(self, "optimizers", tuple(self.optimizers))
    n_fit = self.n_train - self.n_val
    for name, ok, want in (
      ("n_val", 0 < self.n_val < self.n_train, f"in (0, n_train = {self.n_train})"),
      ("batch_sizes", all(0 < b <= n_fit for b in self.batch_sizes),
       f"in [1, {n_fit}] (the training examples)"),
      ("optimizers", set(self.optimizers) <= set(OPTIMIZERS), f"among {', '.join(OPTIMIZERS)}"),
      ("seeds", self.seeds >= 1, "at least 1"),
      ("epochs", self.epochs >= 1, "at least 1"),
      ("warmup_epochs", 0 <= self.warmup_epochs < self.epochs, f"in [0, epochs = {self.epochs})"),
    ):  # fmt: skip
      if not ok:
        option = "--" + name.replace("_", "-")
        raise ValueError(f"Settings.{name} ({option}) must be {want}, got {getattr(self, name)}.")

  @classmethod
  def quick(cls) -> Settings:
    """A smoke test of the whole pipeline: small data, batch 256 and 1024, 1 seed."""
    return cls(batch_sizes=(256, 1024), epochs=6, warmup_epochs=1.5, seeds=1, n_train=10_000,
               n_val=2_000, n_test=2_000, max_extend=0, bn_examples=4096)  # fmt: skip


def _grid(lo: float, hi: float) -> list[float]:
  """lo, 2 lo, 4 lo, ... up to and including the first value >= hi (times 0.999)."""
  n = max(1, math.ceil(math.log2(hi / lo) - 1e-9) + 1)
  return [lo * 2.0**i for i in range(n)]


def _best(records: list[dict[str, Any]]) -> dict[str, Any]:
  """The run with the highest validation accuracy (the lower rate on a tie)."""
  return max(sorted(records, key=lambda r: r["lr"]), key=lambda r: r["val_acc"])


def tune(
  model: CNN, opt: Optimizer, split: dict, s: Settings, progress: tqdm
) -> list[dict[str, Any]]:
  """`opt` tuned and tested at every batch size of `s`; one summary row per batch size.

  At each batch size: a grid of peak rates a factor 2 apart trained with seed 0 and scored
  on validation (around ``opt.first_lr`` at the smallest batch; at a larger ``B``, from the
  smallest batch's best to twice the linear-scaling value, best x ``B / B_min`` x 2), extended
  past an edge up to ``s.max_extend`` times; then the chosen rate with the other seeds. The
  per-step diagnostics are logged at the largest batch.
  """
  rows = []
  for b in s.batch_sizes:
    steps = len(split["fit"][1]) // b
    plan = Plan(b, steps, s.epochs, max(1, round(s.warmup_epochs * steps)))

    def train_all(peaks, seeds, log=b == s.batch_sizes[-1], plan=plan):
      progress.total += plan.total_steps
      progress.set_postfix_str(f"{opt.name} B={plan.batch_size} x{len(peaks)}")
      return train(model, opt, plan, split, peaks, seeds, progress=progress, log=log,
                   bn_examples=s.bn_examples)  # fmt: skip

    if rows:
      grid = _grid(rows[0]["chosen_lr"], rows[0]["chosen_lr"] * b / s.batch_sizes[0] * 2)
    else:
      grid = [opt.first_lr / 2, opt.first_lr, opt.first_lr * 2]
    grid_runs = train_all(grid, [0] * len(grid))
    # Past an edge, add as many points as there are extra seeds (at least one): the
    # extension then reuses the seeds' compiled step.
    width = max(1, s.seeds - 1)
    for _ in range(s.max_extend):
      lrs, best = sorted(r["lr"] for r in grid_runs), _best(grid_runs)["lr"]
      if best not in (lrs[0], lrs[-1]):
        break
      side = 0.5 if best == lrs[0] else 2.0
      grid_runs += train_all([best * side**i for i in range(1, width + 1)], [0] * width)
    grid_runs.sort(key=lambda r: r["lr"])
    chosen = _best(grid_runs)
    lrs = [r["lr"] for r in grid_runs]
    extra = list(range(1, s.seeds))
    seed_runs = train_all([chosen["lr"]] * len(extra), extra, False) if extra else []
    tests = [chosen["test_acc"]] + [r["test_acc"] for r in seed_runs]
    rows.append(dict(
      optimizer=opt.name, label=opt.label, batch_size=b, steps=plan.total_steps,
      warmup_steps=plan.warmup_steps, grid=lrs,
      grid_val_acc=[r["val_acc"] for r in grid_runs],
      grid_test_acc=[r["test_acc"] for r in grid_runs],
      chosen_lr=chosen["lr"], at_edge=chosen["lr"] in (lrs[0], lrs[-1]), test_acc=tests,
      mean=float(np.mean(tests)), std=float(np.std(tests)), runs=grid_runs + seed_runs,
    ))  # fmt: skip
    progress.write(
      f"{opt.label} B={b}: lr {_fmt_lr(chosen['lr'])}, test {100 * rows[-1]['mean']:.1f} %"
    )
  return rows


def run(
  settings: Settings | None = None,
  *,
  out: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
  progress: bool = True,
) -> dict[str, Any]:
  """The experiment, for the command line and the notebook: every optimizer of `settings`
  tuned and tested (`tune`) at every batch size. Prints the table and the grids; with `out`,
  writes ``results.md``, ``results.json`` (this result) and the plots there.

  Returns:
    ``{'settings', 'machine', 'seconds', 'table', 'grids', 'summary', 'runs'}``: `summary`
    has `tune`'s rows without their runs; `runs` every model trained, as `train` records it.
  """
  s = settings if settings is not None else Settings()
  t_start = time.perf_counter()
  split = split_data(make_mnist1d(s.n_train, s.n_test, s.data_seed, cache_dir), s.n_val)
  t_data = time.perf_counter() - t_start
  with tqdm(total=0, unit="step", desc="training", smoothing=0.05, disable=not progress) as bar:
    summary = [row for name in s.optimizers for row in tune(CNN(), OPTIMIZERS[name], split, s, bar)]
  t_train = time.perf_counter() - t_start - t_data
  table, grids = format_table(summary), format_grids(summary)
  footer = (
    f"Test accuracy: mean ± std over {s.seeds} seed{'s' * (s.seeds > 1)} at the peak learning "
    f"rate chosen on the validation split; {s.epochs} epochs ({s.warmup_epochs} warm-up) at "
    f"every batch size; {len(split['fit'][1])} training sequences. Training took {t_train:.0f} s "
    f"on {os.cpu_count()} cores (data: {t_data:.1f} s to load or generate)."
  )
  print(f"\n{table}\n\n{grids}\n\n{footer}", flush=True)
  result = dict(
    settings=dataclasses.asdict(s),
    machine=dict(
      cpu_count=os.cpu_count(), processor=platform.processor() or platform.machine(),
      jax=jax.__version__, optax=optax.__version__, backend=jax.default_backend(),
    ),
    seconds=dict(data=t_data, training=t_train, total=time.perf_counter() - t_start),
    table=table, grids=grids,
    summary=[{k: v for k, v in r.items() if k != "runs"} for r in summary],
    runs=[run for r in summary for run in r["runs"]],
  )  # fmt: skip
  if out is not None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(f"{table}\n\n{footer}\n\n{grids}\n")
    (out / "results.json").write_text(json.dumps(result, indent=1))
    figures = {**plot_results(result), **plot_diagnostics(result)}
    for name, fig in figures.items():
      fig.savefig(out / f"{name}.png", dpi=90)
    print(f"Wrote {out}/results.md, results.json and {len(figures)} plots.")
  return result


# ---- Tables -----------------------------------------------------------------------------------
def _fmt_lr(lr: float) -> str:
  return f"{lr:.3g}"


def format_table(summary: list[dict[str, Any]]) -> str:
  """Batch, steps, then chosen lr and test accuracy (%) per optimizer."""
  labels = {r["optimizer"]: r["label"] for r in summary}
  head = "| batch | steps |" + "".join(f" {v} lr | {v} test acc (%) |" for v in labels.values())
  lines = [head, "|---:|---:|" + "---:|---:|" * len(labels)]
  for b in sorted({r["batch_size"] for r in summary}):
    row = {r["optimizer"]: r for r in summary if r["batch_size"] == b}
    cells = [str(b), str(next(iter(row.values()))["steps"])]
    for r in (row[n] for n in labels):
      edge = " (edge)" if r["at_edge"] else ""
      cells += [_fmt_lr(r["chosen_lr"]) + edge, f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_grids(summary: list[dict[str, Any]]) -> str:
  """Validation accuracy (%) of every grid point; the chosen rate in bold."""
  out = []
  sizes = sorted({r["batch_size"] for r in summary})
  for n, label in {r["optimizer"]: r["label"] for r in summary}.items():
    rows = {r["batch_size"]: r for r in summary if r["optimizer"] == n}
    out += [f"**{label}**: validation accuracy (%) per peak learning rate (seed 0)", ""]
    out += ["| peak lr |" + "".join(f" B={b} |" for b in sizes), "|---:|" + "---:|" * len(sizes)]
    for lr in sorted({lr for r in rows.values() for lr in r["grid"]}):
      cells = []
      for r in (rows[b] for b in sizes):
        v = f"{100 * r['grid_val_acc'][r['grid'].index(lr)]:.1f}" if lr in r["grid"] else ""
        cells.append(f"**{v}**" if lr == r["chosen_lr"] else v)
      out.append(f"| {_fmt_lr(lr)} | " + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out).rstrip()


# ---- Plots (matplotlib is imported here: the command line selects Agg first) ------------------
def _layer_label(path: str) -> str:
  return path.replace("PatchConv_", "conv").replace("BatchNorm_", "bn").replace("Dense_", "dense")


def _finish(fig: Any, **legend_kw) -> Any:
  for ax in fig.axes:
    ax.grid(alpha=0.3)
  fig.axes[0].legend(**legend_kw)
  fig.tight_layout()
  return fig


def plot_results(result: dict[str, Any]) -> dict[str, Any]:
  """``{'accuracy_vs_batch_size': test accuracy (mean ± std) per batch size,
  'accuracy_vs_lr': validation accuracy per peak rate at the largest batch}``, figures."""
  import matplotlib.pyplot as plt

  summary = result["summary"]
  (fig0, ax0), (fig1, ax1) = plt.subplots(figsize=(5.5, 3.6)), plt.subplots(figsize=(5.5, 3.6))
  for n, label in {r["optimizer"]: r["label"] for r in summary}.items():
    rows = sorted((r for r in summary if r["optimizer"] == n), key=lambda r: r["batch_size"])
    bs, acc, err = zip(*[(r["batch_size"], 100 * r["mean"], 100 * r["std"]) for r in rows])
    ax0.errorbar(bs, acc, yerr=err, marker="o", capsize=3, label=label)
    r = rows[-1]  # the largest batch
    (line,) = ax1.plot(r["grid"], [100 * v for v in r["grid_val_acc"]], marker="o", label=label)
    best = 100 * r["grid_val_acc"][r["grid"].index(r["chosen_lr"])]
    ax1.plot([r["chosen_lr"]], [best], "*", ms=14, color=line.get_color())
  ax0.set_xscale("log", base=2)
  ax0.set(xlabel="batch size (same epochs: fewer steps)", ylabel="test accuracy (%)")
  ax0.set_title("MNIST-1D, each optimizer tuned per batch size", fontsize=10)
  ax1.set(xscale="log", xlabel="peak learning rate", ylabel="validation accuracy (%)")
  ax1.set_title(f"Batch {r['batch_size']}: accuracy vs peak lr (star: chosen)", fontsize=10)
  return {"accuracy_vs_batch_size": _finish(fig0), "accuracy_vs_lr": _finish(fig1)}


def plot_diagnostics(result: dict[str, Any]) -> dict[str, Any]:
  """At the largest batch, each optimizer at its chosen rate (seed 0), per step:
  ``{'update_ratios': |update| / |w| per kernel, a panel per optimizer, 'trust_ratios': LARS's
  trust ratio per leaf}``, figures (no trust ratios without an optimizer that keeps them)."""
  import matplotlib.pyplot as plt

  b = max(r["batch_size"] for r in result["summary"])
  key = lambda r, lr: (r["optimizer"], r["batch_size"], lr)
  chosen = {key(r, r["chosen_lr"]) for r in result["summary"] if r["batch_size"] == b}
  runs = [r for r in result["runs"] if r["seed"] == 0 and key(r, r["lr"]) in chosen]
  title = lambda r: f"{OPTIMIZERS[r['optimizer']].label}, B={b}, lr {_fmt_lr(r['lr'])}"
  fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.6), sharey=True, squeeze=False)
  for ax, r in zip(axes[0], runs):
    for name, values in sorted(r["update_ratios"].items()):
      if name.endswith("kernel"):
        ax.plot(np.arange(1, len(values) + 1), values, label=_layer_label(name))
    ax.set(yscale="log", xlabel="step")
    ax.set_title(title(r), fontsize=9)
  axes[0][0].set_ylabel("|update| / |w| per step")
  figures = {"update_ratios": _finish(fig, fontsize=7)}
  for r in (r for r in runs if r["layer_stats"]):  # LARS, the one that keeps statistics
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for stat, values in sorted(r["layer_stats"].items()):
      if stat.startswith("trust_ratio/"):
        style = dict(lw=1.8, ls="-") if stat.endswith("kernel") else dict(lw=0.9, ls="--")
        label = _layer_label(stat[len("trust_ratio/") :])
        ax.plot(np.arange(1, len(values) + 1), values, label=label, **style)
    ax.set(yscale="log", xlabel="step", ylabel="trust ratio η‖w‖ / ‖g + λw‖")
    ax.set_title(f"{title(r)}: trust ratio per layer", fontsize=10)
    figures["trust_ratios"] = _finish(fig, fontsize=7, ncol=2)
  return figures


# ---- Command line: one option per `Settings` field, plus where to write and read --------------
def parse_args(argv: Sequence[str] | None = None) -> tuple[Settings, argparse.Namespace]:
  """`Settings` from the command line (`Settings.quick` with ``--quick``), and the rest."""
  ap = argparse.ArgumentParser(
    prog="python -m benchmarks.large_batch",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  ap.add_argument("--quick", action="store_true", help=Settings.quick.__doc__)
  ap.add_argument("--out", default="large_batch_out", help="output folder (default: %(default)s)")
  ap.add_argument("--cache-dir", default=None, help="where the generated data are cached")
  ap.add_argument("--no-progress", action="store_true", help="no progress bar")
  for f in dataclasses.fields(Settings):
    many = isinstance(f.default, tuple)  # batch_sizes, optimizers: one or more values
    shown = " ".join(map(str, f.default)) if many else f.default
    ap.add_argument("--" + f.name.replace("_", "-"), nargs="+" if many else None,
                    type=type(f.default[0] if many else f.default),
                    help=f"{f.metadata['help']} (default: {shown})")  # fmt: skip
  args = ap.parse_args(argv)
  given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
  given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None}
  return dataclasses.replace(Settings.quick() if args.quick else Settings(), **given), args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  settings, args = parse_args(argv)
  import matplotlib

  matplotlib.use("Agg")  # files only, no windows
  return run(settings, out=args.out, cache_dir=args.cache_dir, progress=not args.no_progress)


if __name__ == "__main__":
  main()
