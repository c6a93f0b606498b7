"""Issue 17: the LARS of DeepMind BYOL, timm and flax.optim (and the MLPerf v0.7 JAX
ResNet-50 optimizer built on it), step by step against float64 NumPy references
written from ../shared/LARS_VARIANTS.md (5a, 5b, 5d), every guard branch included.

Tolerance: rtol 1e-12 in float64 (the references and lars_jax compute the same
formulas in a different association order); NaN and Inf must sit in the same places.
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_jax
from lars_jax import masks

STEPS = 6
RTOL = 1e-12


@pytest.fixture(autouse=True)
def _x64():
  old = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", old)


def _params():
  rng = np.random.default_rng(0)
  return {
    "conv": {"w": rng.normal(size=(3, 4)), "b": np.zeros(4)},  # a zero-initialised bias
    "norm": {"scale": np.ones(4), "offset": rng.normal(size=4)},
    "head": {"w": rng.normal(size=(4, 2))},
  }


def _grads(kind, params, leaf=("conv", "w")):
  """STEPS gradient trees; `kind` puts an exact zero, a NaN or an Inf in `leaf`."""
  rng = np.random.default_rng(1)
  out = []
  for t in range(STEPS):
    g = jax.tree.map(lambda p: 0.1 * rng.normal(size=np.shape(p)), params)
    a, b = leaf
    if t == 2 and kind == "zero":
      g[a][b] = np.zeros_like(g[a][b])
    if t == 2 and kind in ("nan", "inf"):
      g[a][b] = g[a][b].copy()
      g[a][b][0, 1] = np.nan if kind == "nan" else np.inf
    out.append(g)
  return out


def _run(tx, params, grads):
  """lars_jax under jit with the update applied: the params after each step."""
  p = jax.tree.map(jnp.asarray, params)
  state = tx.init(p)
  step = jax.jit(tx.update)
  trajectory = []
  for g in grads:
    u, state = step(jax.tree.map(jnp.asarray, g), state, p)
    p = optax.apply_updates(p, u)
    trajectory.append(jax.tree.map(np.asarray, p))
  return trajectory


def _paths(tree):
  return [masks.path_str(k) for k, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _check(ours, ref):
  for t, (a, b) in enumerate(zip(ours, ref)):
    for path, x, y in zip(_paths(a), jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f"NaN at {t} {path}")
      np.testing.assert_allclose(x, y, rtol=RTOL, atol=0, err_msg=f"step {t} {path}")


def _max_rel(ours, ref):
  err = 0.0
  for a, b in zip(ours, ref):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      ok = np.isfinite(y) & (y != 0)
      if ok.any():
        err = max(err, float(np.max(np.abs(x[ok] - y[ok]) / np.abs(y[ok]))))
  return err


def _rates(schedule):
  """A schedule's values as lars_jax reads it: at an int32 count, inside jit."""
  f = jax.jit(schedule)
  return lambda t: float(f(jnp.asarray(t, jnp.int32)))


def _norm(x):
  return np.sqrt(np.sum(np.square(x)))


# ----------------------------------------------------------------------------------
# References, from LARS_VARIANTS.md.


def ref_timm(
  params,
  grads,
  lr,
  *,
  momentum=0.0,
  dampening=0.0,
  weight_decay=0.0,
  nesterov=False,
  trust_coeff=1e-3,
  eps=1e-8,
  trust_clip=False,
  always_adapt=False,
  decayed=lambda path: True,
):
  """timm Lars (5d): per group decay; ratio on the raw gradient, sum of norms; nested
  > 0 guard; clip after the guard; decay added even where the guard fired."""
  names, leaves = _paths(params), [np.array(x, np.float64) for x in jax.tree.leaves(params)]
  bufs, out = [None] * len(leaves), []
  with np.errstate(all="ignore"):
    for t, g_tree in enumerate(grads):
      gamma = lr(t) if callable(lr) else lr
      for i, g in enumerate(jax.tree.leaves(g_tree)):
        p, lam = leaves[i], weight_decay if decayed(names[i]) else 0.0
        if lam != 0 or always_adapt:
          pn, gn = _norm(p), _norm(g)
          r = trust_coeff * pn / (gn + lam * pn + eps)
          r = np.where(pn > 0, np.where(gn > 0, r, 1.0), 1.0)
          if trust_clip:
            r = np.minimum(r / gamma, 1.0)
          d = (g + lam * p if lam != 0 else g) * r
        else:
          d = g
        if momentum != 0:
          bufs[i] = d if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * d
          d = d + momentum * bufs[i] if nesterov else bufs[i]
        leaves[i] = p - gamma * d
      out.append(jax.tree.unflatten(jax.tree.structure(params), list(leaves)))
  return out


def ref_flax(
  params,
  grads,
  lr,
  *,
  beta=0.9,
  weight_decay=0.0,
  trust_coefficient=1e-3,
  eps=0.0,
  nesterov=False,
  lars=lambda path: True,
):
  """flax.optim LARS (5a, guard of Sep 2020) on the leaves `lars` selects, flax
  Momentum (m = beta m + g; p -= lr m) on the others (the MLPerf MultiOptimizer)."""
  names, leaves = _paths(params), [np.array(x, np.float64) for x in jax.tree.leaves(params)]
  v, out = [np.zeros_like(x) for x in leaves], []
  with np.errstate(all="ignore"):
    for t, g_tree in enumerate(grads):
      gamma = lr(t) if callable(lr) else lr
      for i, g in enumerate(jax.tree.leaves(g_tree)):
        p = leaves[i]
        if not lars(names[i]):
          v[i] = beta * v[i] + g
          leaves[i] = p - gamma * v[i]
          continue
        pn, gn = _norm(p), _norm(g)
        r = trust_coefficient * pn / (gn + weight_decay * pn + eps)
        r = np.where((pn == 0) | (gn == 0), 1.0, r)
        u = g + weight_decay * p if weight_decay != 0 else g
        step = gamma * r * u
        v[i] = beta * v[i] + step
        leaves[i] = p - (step + beta * v[i] if nesterov else v[i])
      out.append(jax.tree.unflatten(jax.tree.structure(params), list(leaves)))
  return out


def ref_byol(
  params, grads, lr, *, weight_decay=0.0, momentum=0.9, eta=1e-3, included=lambda path: True
):
  """DeepMind BYOL (5b): u = g + wd p (filter); r = eta |p| / |u| if both > 0 else 1
  (filter); mu = momentum mu + r u; p -= lr(t) mu."""
  names, leaves = _paths(params), [np.array(x, np.float64) for x in jax.tree.leaves(params)]
  mu, out = [np.zeros_like(x) for x in leaves], []
  with np.errstate(all="ignore"):
    for t, g_tree in enumerate(grads):
      gamma = lr(t) if callable(lr) else lr
      for i, g in enumerate(jax.tree.leaves(g_tree)):
        p, u = leaves[i], g
        if included(names[i]):
          u = g + weight_decay * p
          pn, un = _norm(p), _norm(u)
          u = u * np.where((pn > 0) & (un > 0), eta * pn / un, 1.0)
        mu[i] = momentum * mu[i] + u
        leaves[i] = p - gamma * mu[i]
      out.append(jax.tree.unflatten(jax.tree.structure(params), list(leaves)))
  return out


def warmup_cosine(peak, warmup, total):
  """BYOL's schedule: linear warm-up from 0, then cosine decay to 0 (NumPy)."""

  def lr(t):
    if t < warmup:
      return peak * t / warmup
    return 0.5 * peak * (1 + np.cos(np.pi * (t - warmup) / (total - warmup)))

  return lr


def mlperf_lr(base, warmup, total, end=1e-4):
  """MLPerf v0.7 JAX (5a): base * t / W for t <= W, then end + (base - end) *
  (1 - min(t - W, D) / D) ** 2 with D = total - W + 1."""

  def lr(t):
    if t <= warmup:
      return base * t / warmup
    d = total - warmup + 1
    return end + (base - end) * (1 - min(t - warmup, d) / d) ** 2

  return lr


def _not_bias_or_norm(path):  # BYOL's filter on these params
  return not (path.endswith("/b") or "norm" in path.split("/")[-2])


BYOL_MASK = masks.exclude_names("b", ".*norm.*/[^/]+", match="component")


def byol_filter(params):
  """BYOL's exclude_bias_and_norm, written as a callable over key paths."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: not (path[-1].key == "b" or "norm" in path[-2].key), params
  )


GRADS = ("plain", "zero", "nan", "inf")

TIMM_CASES = {
  "defaults_wd": dict(kw=dict(weight_decay=1e-2), lr=0.5),
  "groups_momentum": dict(kw=dict(momentum=0.9, weight_decay=1e-2), lr=0.5, grouped=True),
  "dampening": dict(kw=dict(momentum=0.9, dampening=0.3, weight_decay=5e-3), lr=0.3),
  "nesterov": dict(kw=dict(momentum=0.9, nesterov=True, weight_decay=1e-2), lr=0.4),
  "always_adapt_groups": dict(
    kw=dict(momentum=0.9, weight_decay=1e-2, always_adapt=True), lr=0.5, grouped=True
  ),
  "no_decay": dict(kw=dict(momentum=0.9), lr=0.5),
  "trust_clip_lr_below_1": dict(kw=dict(momentum=0.9, weight_decay=1e-2, trust_clip=True), lr=0.5),
  "trust_clip_lr_above_1": dict(kw=dict(momentum=0.9, weight_decay=1e-2, trust_clip=True), lr=2.0),
  "trust_clip_schedule": dict(
    kw=dict(momentum=0.9, weight_decay=1e-2, trust_clip=True), lr="warmup"
  ),
}


@pytest.mark.parametrize("grads_kind", GRADS)
@pytest.mark.parametrize("case", sorted(TIMM_CASES))
def test_timm_lars(case, grads_kind):
  c = TIMM_CASES[case]
  params = _params()
  grads = _grads(grads_kind, params)
  lr = c["lr"]
  ref_lr = lr
  if lr == "warmup":  # from 0: the clip holds the ratio at 1 while lr == 0
    lr = optax.linear_schedule(0.0, 2.0, 3)
    ref_lr = _rates(lr)  # optax's values of 2 t / 3
  grouped = c.get("grouped", False)
  mask = masks.min_ndim(2) if grouped else True
  decayed = (
    (lambda path: not (path.endswith("/b") or path.startswith("norm")))
    if grouped
    else (lambda path: True)
  )
  tx = lars_jax.timm_lars(lr, **c["kw"], weight_decay_mask=mask)
  ref = ref_timm(params, grads, ref_lr, **c["kw"], decayed=decayed)
  _check(_run(tx, params, grads), ref)


FLAX_CASES = {
  "defaults": dict(weight_decay=0.0),
  "decay": dict(weight_decay=1e-2),
  "decay_eps_nesterov": dict(weight_decay=1e-2, eps=1e-6, nesterov=True, beta=0.8),
}


@pytest.mark.parametrize("grads_kind", GRADS)
@pytest.mark.parametrize("case", sorted(FLAX_CASES))
def test_flax_lars(case, grads_kind):
  params = _params()
  grads = _grads(grads_kind, params)
  tx = lars_jax.flax_lars(0.5, **FLAX_CASES[case])
  _check(_run(tx, params, grads), ref_flax(params, grads, 0.5, **FLAX_CASES[case]))


def _mlperf_example():
  """examples/mlperf_resnet50_optimizer.py, imported from its file."""
  path = pathlib.Path(__file__).parent.parent / "examples" / "mlperf_resnet50_optimizer.py"
  spec = importlib.util.spec_from_file_location("mlperf_example", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _mlperf_params():
  return {
    "conv": {"kernel": np.random.default_rng(2).normal(size=(3, 4)), "bias": np.zeros(4)},
    "bn": {"scale": np.ones(4), "bias": np.zeros(4)},
    "dense": {"kernel": np.random.default_rng(3).normal(size=(4, 2))},
  }


def ref_mlperf(params, grads, lr):
  """The MLPerf v0.7 MultiOptimizer (5a): flax.optim LARS, Momentum on 'bias'/'scale'."""
  return ref_flax(
    params,
    grads,
    _rates(lr),
    beta=0.929,
    weight_decay=1e-4,
    lars=lambda path: not ("bias" in path or "scale" in path),
  )


@pytest.mark.parametrize("grads_kind", GRADS)
def test_mlperf_multi_optimizer(grads_kind):
  params = _mlperf_params()
  grads = _grads(grads_kind, params, leaf=("conv", "kernel"))
  # Fractional warm-up and total steps, as the submission's arithmetic gives them
  # (706.5 / 2512 at batch 32768), scaled down to 6 steps: 2.5 / 5.
  lr = lars_jax.schedules.warmup_polynomial_decay(29.0, 2.5, 5)
  np.testing.assert_allclose(
    [lr(t) for t in range(8)], [mlperf_lr(29.0, 2.5, 5)(t) for t in range(8)], rtol=1e-6
  )  # the schedule computes in float32
  tx = _mlperf_example().multi_optimizer(lr, 0.929, 1e-4)
  _check(_run(tx, params, grads), ref_mlperf(params, grads, lr))


BYOL_CASES = {
  "constant": dict(lr=0.5, kw=dict(weight_decay=1e-2)),
  "warmup_cosine": dict(lr="schedule", kw=dict(weight_decay=1.5e-6)),
  "no_decay": dict(lr=0.5, kw=dict(momentum=0.8)),
}


@pytest.mark.parametrize("grads_kind", GRADS)
@pytest.mark.parametrize("filt", ["names", "callable"])
@pytest.mark.parametrize("case", sorted(BYOL_CASES))
def test_byol_lars(case, filt, grads_kind):
  c = BYOL_CASES[case]
  params = _params()
  grads = _grads(grads_kind, params)
  lr = ref_lr = c["lr"]
  if lr == "schedule":
    lr = optax.warmup_cosine_decay_schedule(0.0, 3.2, 2, STEPS)
    np.testing.assert_allclose(
      [lr(t) for t in range(STEPS)],
      [warmup_cosine(3.2, 2, STEPS)(t) for t in range(STEPS)],
      rtol=1e-6,
    )
    ref_lr = _rates(lr)  # the optimizer is compared on the same rates
  mask = BYOL_MASK if filt == "names" else byol_filter
  tx = lars_jax.byol_lars(lr, **c["kw"], weight_decay_mask=mask, trust_ratio_mask=mask)
  ref = ref_byol(params, grads, ref_lr, **c["kw"], included=_not_bias_or_norm)
  _check(_run(tx, params, grads), ref)


def test_mlperf_schedule_at_batch_32768():
  """706.5 warm-up and 2512 total steps (18 and 64 epochs of 39.25 steps)."""
  lr = lars_jax.schedules.warmup_polynomial_decay(29.0, 706.5, 2512)
  ref = mlperf_lr(29.0, 706.5, 2512)
  steps = [0, 1, 706, 707, 708, 1500, 2511, 2512, 2600]
  np.testing.assert_allclose([lr(t) for t in steps], [ref(t) for t in steps], rtol=2e-6)


def test_byol_filter_both_ways_and_search_pitfall():
  tree = {"block_1": {"w": np.ones((2, 2)), "b": np.ones(2)}, "layer_norm": {"scale": np.ones(2)}}
  want = [False, True, False]  # block_1/b, block_1/w, layer_norm/scale
  assert masks.resolve(BYOL_MASK, tree) == want
  assert masks.resolve(byol_filter, tree) == want
  # re.search finds 'b' inside 'block_1': the kernel would be excluded too.
  assert masks.resolve(masks.exclude_names("b"), tree) == [False, False, True]


def test_sum_norms_zero_gradient_rules():
  """The zero-gradient rule of each reference: Flash passes the zero through, timm and
  flax.optim decay at ratio 1; LARC's clip keeps the fallback 1, timm's clips it."""
  w, g = jnp.array([3.0, 4.0]), jnp.zeros(2)
  out = {
    guard: lars_jax.scale_by_sum_norms_trust_ratio(
      0.001, 0.1, clip_learning_rate=2.0, guard=guard, adapt_without_decay=True
    ).update(g, None if False else lars_jax.scale_by_sum_norms_trust_ratio(0.001, 0.1).init(w), w)[
      0
    ]
    for guard in ("pytorch", "timm", "flax")
  }
  np.testing.assert_allclose(out["pytorch"], [0.0, 0.0])
  np.testing.assert_allclose(out["timm"], [0.15, 0.2])  # min(1 / 2, 1) * 0.1 * w
  np.testing.assert_allclose(out["flax"], [0.15, 0.2])  # the clip applies to every ratio


def test_larc_mask_is_a_no_decay_group():
  """larc(weight_decay_mask=...): leaves outside it are adapted without decay (a
  LARC group with weight_decay=0), as Apex does per parameter group."""
  params = _params()
  grads = _grads("plain", params)[:1]
  tx = lars_jax.larc(
    optax.sgd(0.1), 0.1, weight_decay=1e-2, weight_decay_mask=masks.min_ndim(2), clip=False, eps=0.0
  )
  (p1,) = _run(tx, params, grads)
  for path, p, g, new in zip(
    _paths(params), jax.tree.leaves(params), jax.tree.leaves(grads[0]), jax.tree.leaves(p1)
  ):
    lam = 1e-2 if np.ndim(p) >= 2 else 0.0
    pn, gn = _norm(p), _norm(g)
    r = 0.02 * pn / (gn + lam * pn) if pn > 0 else 1.0
    np.testing.assert_allclose(new, p - 0.1 * r * (g + lam * p), rtol=RTOL, err_msg=path)


def test_mlperf_example_is_the_submission():
  mod = _mlperf_example()
  h = mod.hyperparameters(32768)
  assert (h["warmup_steps"], h["total_steps"]) == (706.5, 2512.0)
  params = _mlperf_params()
  grads = _grads("plain", params, leaf=("conv", "kernel"))
  lr = lars_jax.schedules.warmup_polynomial_decay(29.0, 706.5, 2512)
  _check(_run(mod.mlperf_optimizer(32768), params, grads), ref_mlperf(params, grads, lr))


def _readme_block(word):
  from readme_blocks import python_blocks

  (block,) = [b for b in python_blocks("Migrating from TensorFlow / PyTorch") if word in b]
  ns = {"lars_jax": lars_jax, "optax": optax, "jax": jax, "lr": 0.5}
  exec(compile(block, "README.md", "exec"), ns)
  return ns


def test_readme_timm_recipe():
  ns = _readme_block("timm_lars")
  params = _params()
  grads = _grads("zero", params)
  ref = ref_timm(
    params,
    grads,
    0.5,
    momentum=0.9,
    weight_decay=5e-4,
    trust_clip=True,
    decayed=lambda path: not (path.endswith("/b") or path.startswith("norm")),
  )
  _check(_run(ns["tx"], params, grads), ref)


def test_readme_byol_recipe_both_filters():
  ns = _readme_block("byol_lars")
  params = {
    "res_net/~/conv1": {"w": np.ones((3, 3)), "b": np.zeros(3)},
    "res_net/~/block_1": {"w": np.full((3, 2), 0.5)},
    "res_net/~/batchnorm": {"scale": np.ones(3), "offset": np.zeros(3)},
  }
  paths = _paths(params)
  expect = [not (p.endswith("/b") or "norm" in p.rsplit("/", 1)[0]) for p in paths]
  assert masks.resolve(ns["byol_mask"], params) == expect
  assert masks.resolve(ns["byol_mask_fn"], params) == expect
  assert sum(expect) == 2  # the two kernels
  grads = _grads("plain", params, leaf=("res_net/~/conv1", "w"))
  lr = optax.warmup_cosine_decay_schedule(0.0, 0.2 * 4096 / 256, 10 * 312, 1000 * 312)
  ref = ref_byol(
    params,
    grads,
    _rates(lr),
    weight_decay=1.5e-6,
    included=lambda p: p in [q for q, e in zip(paths, expect) if e],
  )
  _check(_run(ns["tx"], params, grads), ref)


def test_readme_flax_and_mlperf_recipes():
  ns = _readme_block("flax_lars")
  params = {"conv": {"kernel": np.random.default_rng(5).normal(size=(3, 4)), "bias": np.zeros(4)}}
  grads = _grads("plain", params, leaf=("conv", "kernel"))
  lr = lars_jax.schedules.warmup_polynomial_decay(29.0, 706.5, 2512)
  _check(_run(ns["tx"], params, grads), ref_mlperf(params, grads, lr))
