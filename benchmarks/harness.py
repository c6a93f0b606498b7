"""Timing harness shared by the benchmark scripts.

One optimizer step is `params, state = step(params, state, grads)` under `jax.jit`
with params and state donated and `optax.apply_updates` inside, which is how a
training loop calls it. Every candidate is compiled first, warmed up, then timed
round-robin (each in turn, `repeats` times) so that load from other processes hits
all of them alike; we report medians. In its turn a candidate runs one untimed step
before the timed one, so the timed step follows a step of the same candidate, as in
a training loop: timed right after another candidate, a step pays for that one's
memory traffic (the step after `optax.lars`, which frees 306 MB of temporaries on
ResNet-50, measured up to 10 ms slower than the same compiled step elsewhere).
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import optax

import lars_jax

LR, WD, MOMENTUM = 0.1, 1e-4, 0.9


def optimizers(
  include_presets: bool = True, pkg: ModuleType = lars_jax
) -> dict[str, Callable[[], optax.GradientTransformation]]:
  """The candidates, by display name: lazily built transformations (lars_jax's from `pkg`,
  which `before_after.py` sets to an earlier version of the package)."""
  m2 = pkg.masks.min_ndim(2)
  out: dict[str, Callable[[], optax.GradientTransformation]] = {
    "sgd-momentum": lambda: optax.sgd(LR, momentum=MOMENTUM),
    "adamw": lambda: optax.adamw(1e-3, weight_decay=WD),
    "optax.lars": lambda: optax.lars(
      LR, weight_decay=WD, weight_decay_mask=m2, trust_ratio_mask=m2, momentum=MOMENTUM
    ),
    "lars_jax.lars": lambda: pkg.lars(
      LR, weight_decay=WD, weight_decay_mask=m2, trust_ratio_mask=m2, momentum=MOMENTUM
    ),
    "lars_jax.lars (no masks)": lambda: pkg.lars(LR, weight_decay=WD, momentum=MOMENTUM),
  }
  if include_presets:
    # The framework presets, when the package has them, in their usual recipes:
    # momentum 0.9, decay 1e-4 on kernels only (TF excludes by name, the others by mask).
    presets = {
      "tf_lars": lambda fn: fn(
        LR,
        momentum=MOMENTUM,
        weight_decay_rate=WD,
        exclude_from_weight_decay=["bias", "scale"],
        exclude_from_layer_adaptation=["bias", "scale"],
      ),
      "torch_lars": lambda fn: fn(LR, momentum=MOMENTUM, weight_decay=WD, weight_decay_mask=m2),
      "larc": lambda fn: fn(optax.sgd(1.0, momentum=MOMENTUM), LR, weight_decay=WD),
      "timm_lars": lambda fn: fn(LR, MOMENTUM, weight_decay=WD, weight_decay_mask=m2),
      "flax_lars": lambda fn: fn(LR, MOMENTUM, WD),  # flax.optim decays every leaf
      "byol_lars": lambda fn: fn(LR, WD, MOMENTUM, weight_decay_mask=m2, trust_ratio_mask=m2),
    }
    for name, build in presets.items():
      fn = getattr(pkg, name, None)
      if fn is not None:
        out[f"lars_jax.{name}"] = lambda fn=fn, build=build: build(fn)
  return out


def make_step(tx: optax.GradientTransformation):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def kernel_count(hlo_text: str) -> int:
  """Top-level ops that run as kernels in the optimized HLO (fusions, custom calls)."""
  entry = hlo_text[hlo_text.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  return len(re.findall(r"= [^=]*? (?:fusion|custom-call|copy|reduce|dot)\(", entry))


class Compiled:
  """A compiled, donated step with its own params/state, ready to time."""

  def __init__(self, tx: optax.GradientTransformation, params: Any, grads: Any):
    self.params = jax.tree.map(jnp.copy, params)
    self.state = tx.init(self.params)
    self.grads = grads
    self.exe = make_step(tx).lower(self.params, self.state, grads).compile()
    mem = self.exe.memory_analysis()
    self.temp_bytes = int(mem.temp_size_in_bytes) if mem is not None else -1
    self.kernels = kernel_count(self.exe.as_text())

  def run(self) -> float:
    t0 = time.perf_counter()
    self.params, self.state = self.exe(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))
    return time.perf_counter() - t0


def time_round_robin(
  cands: dict[str, Compiled], repeats: int, warmup: int = 2, settle: int = 1
) -> dict[str, float]:
  """Median seconds per step of each candidate, timed in turn.

  In each turn a candidate first runs `settle` untimed steps, so that the timed step
  follows a step of its own (see the module docstring).
  """
  times = round_robin_samples(cands, repeats, warmup, settle)
  return {k: statistics.median(v) for k, v in times.items()}


def round_robin_samples(
  cands: dict[str, Compiled], repeats: int, warmup: int = 2, settle: int = 1
) -> dict[str, list[float]]:
  """The seconds of each timed step of `time_round_robin`, in round order: the i-th
  entries of two candidates come from the same round (for paired ratios)."""
  for c in cands.values():
    for _ in range(warmup):
      c.run()
  times: dict[str, list[float]] = {k: [] for k in cands}
  for _ in range(repeats):
    for k, c in cands.items():
      for _ in range(settle):
        c.run()
      times[k].append(c.run())
  return times


def copy_bandwidth(n_floats: int = 64 * 2**20, repeats: int = 15) -> tuple[float, float]:
  """(median, best) bytes/s of a donated, in-place f32 scale x -> 1.0001 x.

  It reads and writes `n_floats` (default 256 MB, far beyond the caches) with all
  cores, like the loop fusions of an optimizer step. The "7 x 4 bytes x params"
  floor divides by the best of the repeats: what the machine can do at its best.
  """
  x = jax.random.normal(jax.random.PRNGKey(0), (n_floats // 256, 256), jnp.float32)
  f = jax.jit(lambda x: x * 1.0001, donate_argnums=0)
  for _ in range(2):
    x = f(x)
  jax.block_until_ready(x)
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    x = f(x)
    jax.block_until_ready(x)
    ts.append(time.perf_counter() - t0)
  return 2 * 4 * n_floats / statistics.median(ts), 2 * 4 * n_floats / min(ts)


def machine() -> str:
  cpu = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import os

  plat = jax.devices()[0].platform
  return f"{os.cpu_count()} cores, {cpu}, jax {jax.__version__}, optax {optax.__version__}, {plat}"


def markdown_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
  """`title`, a blank line, then a Markdown table: first column left-aligned, others right."""
  out = [title, "", f"| {' | '.join(columns)} |", "|---|" + "---:|" * (len(columns) - 1)]
  return "\n".join(out + [f"| {' | '.join(r)} |" for r in rows])
