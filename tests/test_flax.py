"""lars_jax in Flax train steps: Linen TrainState with BatchNorm, NNX Optimizer.

Each test trains a small CNN (conv -> batch norm -> relu -> dense) on a fixed
synthetic 10-class problem, with the bias and batch-norm parameters excluded from weight
decay and trust-ratio adaptation by name. Every step is checked against a float64 NumPy
reference written from the LARS equations (given the step's float32 params and grads):

    u = g + wd * w                  (decayed leaves; u = g for excluded ones)
    r = eta * |w| / |u|             (adapted leaves; r = 1 for excluded ones)
    v = mu * v + lr(t) * r * u,     w <- w - v

so excluded leaves must take plain momentum-SGD steps at the global learning rate, which
is asserted separately (and shown to differ from what LARS would do to them). Tolerance:
rtol 1e-5, atol 1e-7 on the new params (float32 arithmetic against float64).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compat import FLAX_NNX_OPTIMIZER, FLAX_VERSION, nnx_as_pure, nnx_update

import lars_jax
from lars_jax import masks

flax = pytest.importorskip("flax")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402
from flax.training import train_state  # noqa: E402

# Excludes biases and batch-norm params on Linen paths ('BatchNorm_0/scale') and on NNX
# paths ('batch_norm/scale') alike.
EXCLUDE = masks.exclude_names("bias", "(?i)batch_?norm")
LR = optax.linear_schedule(0.5, 2.0, transition_steps=5)  # warmup
WD, ETA, MU = 1e-3, 0.02, 0.9
STEPS = 12
RTOL, ATOL = 1e-5, 1e-7


def _data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
  teacher = rng.normal(size=(64, 10))
  y = np.argmax(x.reshape(n, -1) @ teacher, axis=1)
  return jnp.asarray(x), jnp.asarray(y)


def _tx():
  return lars_jax.lars(
    LR,
    weight_decay=WD,
    weight_decay_mask=EXCLUDE,
    trust_coefficient=ETA,
    trust_ratio_mask=EXCLUDE,
    momentum=MU,
  )


class Reference:
  """Float64 LARS by the equations in the module docstring, one leaf list at a time."""

  def __init__(self, params):
    self.paths = jax.tree.leaves(masks.tree_paths(params))
    self.included = masks.resolve(EXCLUDE, params)
    self.v = [np.zeros(np.shape(p)) for p in jax.tree.leaves(params)]
    self.t = 0

  def step(self, params, grads):
    """New params; also returns the plain momentum-SGD step for every leaf."""
    lr = float(LR(self.t))
    self.t += 1
    new, sgd = [], []
    for i, (w, g) in enumerate(zip(jax.tree.leaves(params), jax.tree.leaves(grads))):
      w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
      v_plain = MU * self.v[i] + lr * g
      if self.included[i]:
        u = g + WD * w
        r = ETA * np.linalg.norm(w) / np.linalg.norm(u)
        self.v[i] = MU * self.v[i] + lr * r * u
      else:
        self.v[i] = v_plain
      new.append(w - self.v[i])
      sgd.append(w - v_plain)
    return new, sgd


def _check_step(ref, before, grads, after):
  want, sgd = ref.step(before, grads)
  got = jax.tree.leaves(after)
  assert len(got) == len(want)
  for path, inc, g, w, s in zip(ref.paths, ref.included, got, want, sgd):
    np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=path)
    if not inc:  # excluded: plain momentum SGD at the global learning rate
      np.testing.assert_allclose(g, s, rtol=RTOL, atol=ATOL, err_msg=path)


def _check_exclusions_matter(params, grads):
  """What LARS with no exclusions would do to the excluded leaves differs a lot (the
  masked-leaf checks above could fail)."""
  full = lars_jax.lars(LR, weight_decay=WD, trust_coefficient=ETA, momentum=MU)
  masked = _tx()
  a, _ = full.update(grads, full.init(params), params)
  b, _ = masked.update(grads, masked.init(params), params)
  for inc, x, y in zip(masks.resolve(EXCLUDE, params), jax.tree.leaves(a), jax.tree.leaves(b)):
    if inc:
      np.testing.assert_allclose(x, y, rtol=1e-6)
    elif np.any(np.asarray(y) != 0):
      assert not np.allclose(x, y, rtol=1e-2, atol=0), "exclusion made no difference"


# ----------------------------------------------------------------------------
# Linen


class LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(x).reshape(x.shape[0], -1)
    return nn.Dense(10)(x)


class TrainState(train_state.TrainState):
  batch_stats: dict


@jax.jit
def linen_step(state, x, y):
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
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  return state, loss, grads


def test_linen_train_state_with_batch_norm():
  x, y = _data()
  model = LinenCNN()
  variables = model.init(jax.random.key(0), x[:1], train=False)
  state = TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=_tx(),
    batch_stats=variables["batch_stats"],
  )
  paths = jax.tree.leaves(masks.tree_paths(state.params))
  assert paths == [
    "BatchNorm_0/bias",
    "BatchNorm_0/scale",
    "Conv_0/bias",
    "Conv_0/kernel",
    "Dense_0/bias",
    "Dense_0/kernel",
  ]
  assert masks.resolve(EXCLUDE, state.params) == [False, False, False, True, False, True]
  ref = Reference(state.params)
  stats0 = state.batch_stats
  losses = []
  for _ in range(STEPS):
    before = state.params
    state, loss, grads = linen_step(state, x, y)
    _check_step(ref, before, grads, state.params)
    losses.append(float(loss))
  _check_exclusions_matter(before, grads)
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == STEPS
  # Batch statistics moved (collected through mutable=['batch_stats']) and stay out of
  # the optimizer; evaluation uses them.
  assert not np.allclose(state.batch_stats["BatchNorm_0"]["mean"], stats0["BatchNorm_0"]["mean"])
  assert "batch_stats" not in str(jax.tree.structure(state.opt_state))
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, False)
  assert logits.shape == (64, 10) and np.all(np.isfinite(logits))
  # The schedule counts advanced once per step.
  counts = [int(s.count) for s in state.opt_state if isinstance(s, optax.ScaleByScheduleState)]
  assert counts == [STEPS]


# ----------------------------------------------------------------------------
# NNX


class NNXCNN(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.batch_norm = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(8 * 8 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.batch_norm(self.conv(x)))
    x = x.reshape(x.shape[0], -1)
    return self.head(x)


@nnx.jit
def nnx_step(model, optimizer, x, y):
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  nnx_update(optimizer, model, grads)
  return loss, grads


def _nnx_params(model):
  return jax.tree.map(np.asarray, nnx_as_pure(nnx.state(model, nnx.Param)))


def test_nnx_optimizer_with_batch_norm():
  x, y = _data()
  model = NNXCNN(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
  params = nnx.state(model, nnx.Param)
  paths = jax.tree.leaves(masks.tree_paths(params))
  assert paths == [
    "batch_norm/bias",
    "batch_norm/scale",
    "conv/bias",
    "conv/kernel",
    "head/bias",
    "head/kernel",
  ]
  assert masks.resolve(EXCLUDE, params) == [False, False, False, True, False, True]
  ref = Reference(params)
  mean0 = np.asarray(model.batch_norm.mean[...])
  model.train()
  losses = []
  for _ in range(STEPS):
    before = _nnx_params(model)
    loss, grads = nnx_step(model, optimizer, x, y)
    grads = nnx_as_pure(grads)
    _check_step(ref, before, grads, _nnx_params(model))
    losses.append(float(loss))
  _check_exclusions_matter(before, grads)
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(optimizer.step[...]) == STEPS
  assert not np.allclose(model.batch_norm.mean[...], mean0)  # BatchStat, not optimized
  model.eval()
  assert np.all(np.isfinite(model(x)))


def test_nnx_layer_stats_are_what_the_step_applied():
  """layer_stats of an nnx.Optimizer's state after an nnx.jit step: norms of the params
  before the update and of g + wd w, and a ratio that reproduces the applied update (first
  step: momentum's output is its input)."""
  x, y = _data()
  model = NNXCNN(nnx.Rngs(0))
  kw = dict(weight_decay=WD, weight_decay_mask=EXCLUDE, trust_coefficient=ETA, momentum=MU)
  optimizer = nnx.Optimizer(
    model, lars_jax.lars(LR, trust_ratio_mask=EXCLUDE, keep_stats=True, **kw), wrt=nnx.Param
  )
  model.train()

  @nnx.jit
  def step(model, optimizer, x, y):
    grads = nnx.grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(
      model
    )
    nnx_update(optimizer, model, grads)
    return nnx_as_pure(grads)

  before = _nnx_params(model)
  grads = step(model, optimizer, x, y)
  after = _nnx_params(model)
  d = lars_jax.layer_stats(optimizer.opt_state)
  assert not any(k.endswith("batch_norm/scale") for k in d)  # excluded: nothing computed
  for path in ("conv/kernel", "head/kernel"):
    w0 = np.asarray(_at(before, path), np.float64)
    u = np.asarray(_at(grads, path), np.float64) + WD * w0
    np.testing.assert_allclose(d[f"param_norm/{path}"], np.linalg.norm(w0), rtol=1e-6)
    np.testing.assert_allclose(d[f"update_norm/{path}"], np.linalg.norm(u), rtol=1e-5)
    applied = np.asarray(_at(after, path), np.float64) - w0
    lr0 = float(LR(0))
    # atol: w1 - w0 of float32 weights |w| < 1 is exact only to ~1 ulp (6e-8).
    np.testing.assert_allclose(applied, -lr0 * d[f"trust_ratio/{path}"] * u, rtol=1e-4, atol=1e-7)


def _at(tree, path):
  for k in path.split("/"):
    tree = tree[k]
  return tree


def test_readme_flax_section_runs(tmp_path, monkeypatch):
  """The code blocks of the README's 'With Flax' section run as written."""
  if FLAX_VERSION < (0, 11, 0):  # the NNX optimizer tests above run there through compat
    pytest.skip(FLAX_NNX_OPTIMIZER)
  from readme_blocks import python_blocks  # tests/readme_blocks.py

  blocks = python_blocks("With Flax")
  assert len(blocks) == 7
  monkeypatch.chdir(tmp_path)
  ns: dict = {}
  for i, block in enumerate(blocks):
    exec(compile(block, f"README.md With Flax block {i}", "exec"), ns)
  rows = (tmp_path / "diagnostics.csv").read_text().splitlines()
  assert len(rows) == 1 + 5 and rows[0].startswith("step,loss,param_norm/")
  assert int(ns["state"].step) == 20  # restored with plain orbax
  # NNX: the restored model and optimizer equal the saved ones, momentum and counts too.
  saved = nnx.state((ns["model"], ns["optimizer"]))
  restored = nnx.state((ns["model2"], ns["optimizer2"]))
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  equal = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), restored, saved)
  assert all(jax.tree.leaves(equal))
  # optax.lars checkpoint: the converted state takes the step optax.lars takes. Inside one
  # jitted train step XLA fuses the two optimizers' graphs with the backward pass in
  # different ways, so the last bit may differ (seen: 2 ulp in 1.7% of a kernel); the
  # optimizer update jitted on its own is bit for bit (test_lars, state_from_optax_lars).
  want, _ = ns["train_step"](ns["old"], ns["x"], ns["y"])
  got = ns["resumed"]
  assert int(got.step) == int(want.step) == 4
  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  trace = lambda s: optax.tree_utils.tree_get(s.opt_state, "trace")
  for a, b in zip(jax.tree.leaves(trace(got)), jax.tree.leaves(trace(want))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  tx, old = ns["tx"], ns["old"]
  grads = jax.tree.map(lambda p: 0.01 * jnp.cos(p), old.params)
  converted = lars_jax.state_from_optax_lars(old.opt_state, tx.init(old.params))
  mine = jax.jit(tx.update)(grads, converted, old.params)[0]
  theirs = jax.jit(old.tx.update)(grads, old.opt_state, old.params)[0]
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b, strict=True)
