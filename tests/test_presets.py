"""The framework presets (tf_lars, torch_lars, larc) against float64 NumPy references.

The references below are written from the update equations in issue 3 and
shared/LARS_VARIANTS.md sections 2-4 (Model Garden LARS, Lightning Flash LARS, Apex
LARC), not from lars_jax and not from the frameworks' code. Each case runs several
steps of the float32 preset and of the reference on its own float64 trajectory, and
compares every update and every parameter.

Tolerance: rtol 1e-6 with an absolute floor of 1e-6 * max|x| per leaf (`_close`):
momentum and clipping can cancel an element to far below its leaf's scale, where a
1-ulp float32 difference in a norm is a large *relative* error.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_jax
from lars_jax import masks

RTOL = 1e-6
STEPS = 6

# The test tree, by '/'-joined name. conv/bias and norm/bias start at zero (zero-norm
# params); dense/kernel gets a zero gradient on step 2 and norm/scale on step 1.
NAMES = ["conv/bias", "conv/kernel", "dense/bias", "dense/kernel", "norm/bias", "norm/scale"]
SHAPES = {
  "conv/bias": (4,),
  "conv/kernel": (3, 3, 2, 4),
  "dense/bias": (3,),
  "dense/kernel": (4, 3),
  "norm/bias": (4,),
  "norm/scale": (4,),
}
GRAD_SCALE = {  # leaves with very different gradient sizes (clipping hits some only)
  "conv/bias": 0.1,
  "conv/kernel": 1.0,
  "dense/bias": 3.0,
  "dense/kernel": 0.5,
  "norm/bias": 0.02,
  "norm/scale": 2.0,
}


def _tree(leaves):
  """Nested dict from a list of arrays in NAMES order (independent of jax's order)."""
  out = {}
  for name, x in zip(NAMES, leaves):
    a, b = name.split("/")
    out.setdefault(a, {})[b] = x
  return out


def _leaves(tree):
  return [tree[a][b] for a, b in (n.split("/") for n in NAMES)]


def _params():
  rng = np.random.default_rng(0)
  out = []
  for n in NAMES:
    if n.endswith("bias") and n != "dense/bias":
      out.append(np.zeros(SHAPES[n], np.float32))
    elif n == "norm/scale":
      out.append(np.ones(SHAPES[n], np.float32))
    else:
      out.append(rng.normal(size=SHAPES[n]).astype(np.float32))
  return out


def _grads(step):
  rng = np.random.default_rng(100 + step)
  out = []
  for n in NAMES:
    g = (GRAD_SCALE[n] * rng.normal(size=SHAPES[n])).astype(np.float32)
    if (n == "dense/kernel" and step == 2) or (n == "norm/scale" and step == 1):
      g = np.zeros_like(g)
    out.append(g)
  return out


def _norm(x):
  return float(np.sqrt(np.sum(np.abs(x) ** 2)))


def _at(x, c):
  return float(x(c)) if callable(x) else float(x)


def _close(actual, desired, what):
  for name, a, d in zip(NAMES, actual, desired):
    a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
    atol = RTOL * float(np.max(np.abs(d))) if d.size else 0.0
    np.testing.assert_allclose(a, d, rtol=RTOL, atol=atol, err_msg=f"{what}: {name}")


# ----------------------------------------------------------------------------
# References, from the equations.


class TFLarsReference:
  """Model Garden LARS (LARS_VARIANTS section 2) on a list of named leaves."""

  def __init__(
    self,
    learning_rate=0.01,
    momentum=0.9,
    weight_decay_rate=0.0,
    eeta=0.001,
    nesterov=False,
    classic_momentum=True,
    exclude_from_weight_decay=None,
    exclude_from_layer_adaptation=None,
    clipnorm=None,
    clipvalue=None,
    global_clipnorm=None,
  ):
    self.lr, self.mu, self.wd, self.eeta = learning_rate, momentum, weight_decay_rate, eeta
    self.nesterov, self.classic = nesterov, classic_momentum
    self.ex_wd = exclude_from_weight_decay
    self.ex_adapt = exclude_from_layer_adaptation or exclude_from_weight_decay
    self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
    self.v = None
    self.c = 0

  def use_weight_decay(self, name):
    if not self.wd:
      return False
    return not any(re.search(p, name) for p in self.ex_wd or [])

  def adapt(self, name):
    return not any(re.search(p, name) for p in self.ex_adapt or [])

  def ratio(self, name, w, x):
    if not self.adapt(name):
      return 1.0
    wn, xn = _norm(w), _norm(x)
    return self.eeta * wn / xn if wn > 0 and xn > 0 else 1.0

  def step(self, params, grads):
    """Returns the updates (new minus old params); params are float64 arrays."""
    lr = _at(self.lr, self.c)
    g = [np.asarray(x, np.float64) for x in grads]
    if self.clipvalue is not None:
      g = [np.clip(x, -self.clipvalue, self.clipvalue) for x in g]
    if self.clipnorm is not None:
      g = [x * self.clipnorm / max(_norm(x), self.clipnorm) for x in g]
    if self.global_clipnorm is not None:
      total = np.sqrt(sum(_norm(x) ** 2 for x in g))
      g = [x * self.global_clipnorm / max(total, self.global_clipnorm) for x in g]
    if self.v is None:
      self.v = [np.zeros_like(w) for w in params]
    updates = []
    for i, (name, w) in enumerate(zip(NAMES, params)):
      gi = g[i] + self.wd * w if self.use_weight_decay(name) else g[i]
      if self.classic:
        scaled = lr * self.ratio(name, w, gi)
        self.v[i] = self.mu * self.v[i] + scaled * gi
        step = self.mu * self.v[i] + scaled * gi if self.nesterov else self.v[i]
      else:
        self.v[i] = self.mu * self.v[i] + gi
        u = self.mu * self.v[i] + gi if self.nesterov else self.v[i]
        step = lr * self.ratio(name, w, u) * u
      updates.append(-step)
    self.c += 1
    return updates


class TorchLarsReference:
  """Lightning Flash LARS (LARS_VARIANTS section 3); `groups` is the wd mask per leaf."""

  def __init__(
    self,
    learning_rate,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    trust_coefficient=0.001,
    eps=1e-8,
    groups=None,
  ):
    self.lr, self.mu, self.damp, self.wd = learning_rate, momentum, dampening, weight_decay
    self.nesterov, self.eta, self.eps = nesterov, trust_coefficient, eps
    self.groups = groups or {n: True for n in NAMES}
    self.buf = {}
    self.c = 0

  def step(self, params, grads):
    lr = _at(self.lr, self.c)
    updates = []
    for name, w, g in zip(NAMES, params, grads):
      g = np.asarray(g, np.float64)
      wd = _at(self.wd, self.c) if self.groups[name] else 0.0
      wn, gn = _norm(w), _norm(g)
      if wd != 0 and wn != 0 and gn != 0:
        d = self.eta * wn / (gn + wd * wn + self.eps) * (g + wd * w)
      else:
        d = g
      if self.mu != 0:
        if name not in self.buf:
          self.buf[name] = d.copy()
        else:
          self.buf[name] = self.mu * self.buf[name] + (1 - self.damp) * d
        d = d + self.mu * self.buf[name] if self.nesterov else self.buf[name]
      updates.append(-lr * d)
    self.c += 1
    return updates


class LarcSgdReference:
  """Apex LARC (LARS_VARIANTS section 4) rewriting the gradient of optax's SGD:
  t <- g + mu * t (t starts at 0); out = t, or g + mu * t with Nesterov; w -= lr * out."""

  def __init__(
    self,
    learning_rate,
    momentum=0.9,
    nesterov=False,
    weight_decay=0.0,
    trust_coefficient=0.02,
    clip=True,
    eps=1e-8,
  ):
    self.lr, self.mu, self.nesterov = learning_rate, momentum, nesterov
    self.wd, self.eta, self.clip, self.eps = weight_decay, trust_coefficient, clip, eps
    self.t = None
    self.c = 0

  def step(self, params, grads):
    lr, wd = _at(self.lr, self.c), _at(self.wd, self.c)
    if self.t is None:
      self.t = [np.zeros_like(w) for w in params]
    updates = []
    for i, (w, g) in enumerate(zip(params, grads)):
      g = np.asarray(g, np.float64)
      wn, gn = _norm(w), _norm(g)
      if wn != 0 and gn != 0:
        a = self.eta * wn / (gn + wd * wn + self.eps)
        if self.clip:
          a = min(a / lr, 1.0) if lr > 0 else 1.0  # torch: a / 0 = inf
        g = a * (g + wd * w)
      self.t[i] = g + self.mu * self.t[i]
      out = g + self.mu * self.t[i] if self.nesterov else self.t[i]
      updates.append(-lr * out)
    self.c += 1
    return updates


def _run(tx, ref, steps=STEPS):
  """Runs `tx` (float32, under jit) and `ref` (float64) side by side, comparing."""
  p = [jnp.asarray(x) for x in _params()]
  p_ref = [np.asarray(x, np.float64) for x in p]
  state = tx.init(_tree(p))
  update = jax.jit(tx.update)
  for step in range(steps):
    g = _grads(step)
    u, state = update(_tree([jnp.asarray(x) for x in g]), state, _tree(p))
    u = _leaves(u)
    u_ref = ref.step(p_ref, g)
    _close(u, u_ref, f"updates, step {step + 1}")
    p = [x + y for x, y in zip(p, u)]
    p_ref = [x + y for x, y in zip(p_ref, u_ref)]
    _close(p, p_ref, f"params, step {step + 1}")
    for x in u:
      assert x.dtype == jnp.float32
  return state


WARMUP = optax.warmup_cosine_decay_schedule(0.0, 2.0, 3, 12)

# ----------------------------------------------------------------------------
# tf_lars.

TF_CASES = {
  "classic": dict(learning_rate=0.7, weight_decay_rate=1e-2, exclude_from_weight_decay=["bias"]),
  "classic_nesterov_separate_exclusions": dict(
    learning_rate=0.7,
    weight_decay_rate=1e-2,
    nesterov=True,
    exclude_from_weight_decay=["bias"],
    exclude_from_layer_adaptation=["^norm/"],
  ),
  "popular_warmup": dict(
    learning_rate=WARMUP,
    momentum=0.8,
    weight_decay_rate=1e-2,
    classic_momentum=False,
    exclude_from_weight_decay=["norm", "bias$"],
  ),
  "popular_nesterov_global_clipnorm": dict(
    learning_rate=0.5,
    weight_decay_rate=1e-3,
    nesterov=True,
    classic_momentum=False,
    global_clipnorm=1.0,
  ),
  "classic_clipnorm": dict(learning_rate=0.5, weight_decay_rate=1e-3, clipnorm=1.5),
  "classic_clipvalue_nesterov": dict(learning_rate=WARMUP, eeta=0.01, nesterov=True, clipvalue=0.8),
  "clipvalue_and_clipnorm": dict(learning_rate=0.5, clipvalue=1.0, clipnorm=2.0),
  "no_decay_but_exclusions_stop_adaptation": dict(
    learning_rate=0.5, weight_decay_rate=0.0, exclude_from_weight_decay=["bias", "norm"]
  ),
  "empty_adaptation_list_falls_back": dict(
    learning_rate=0.5,
    weight_decay_rate=1e-2,
    exclude_from_weight_decay=["conv"],
    exclude_from_layer_adaptation=[],
  ),
  "popular_no_momentum": dict(learning_rate=0.3, momentum=0.0, classic_momentum=False),
}


@pytest.mark.parametrize("kwargs", TF_CASES.values(), ids=TF_CASES.keys())
def test_tf_lars_matches_reference(kwargs):
  _run(lars_jax.tf_lars(**kwargs), TFLarsReference(**kwargs))


def test_tf_lars_classic_is_lars_with_eps_0():
  kwargs = TF_CASES["classic_nesterov_separate_exclusions"]
  ours = lars_jax.tf_lars(**kwargs)
  core = lars_jax.lars(
    kwargs["learning_rate"],
    weight_decay=kwargs["weight_decay_rate"],
    weight_decay_mask=masks.exclude_names("bias"),
    trust_ratio_mask=masks.exclude_names("^norm/"),
    eps=0.0,
    nesterov=True,
  )
  p = _tree([jnp.asarray(x) for x in _params()])
  s1, s2 = ours.init(p), core.init(p)
  for step in range(4):
    g = _tree([jnp.asarray(x) for x in _grads(step)])
    u1, s1 = ours.update(g, s1, p)
    u2, s2 = core.update(g, s2, p)
    jax.tree.map(np.testing.assert_array_equal, u1, u2)  # the same chain: bit for bit
    p = optax.apply_updates(p, u1)


def test_tf_lars_hand_computed_classic_vs_popular():
  # |w| = 5, g = (0.6, 0.8) with |g| = 1, lr 1, eeta 0.001, momentum 0.9, no decay.
  # Step 1, both: ratio 0.005, w -= 0.005 g = (0.003, 0.004) -> |w| = 4.995.
  # Step 2 (same g), classic: v = 0.9 * 0.005 g + 0.004995 g = 0.009495 g.
  # Step 2, popular: v = 1.9 g, ratio 0.004995 / 1.9: step = 0.004995 g.
  w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])
  expected = {True: [0.003, 0.004, 0.005697, 0.007596], False: [0.003, 0.004, 0.002997, 0.003996]}
  for classic in (True, False):
    tx = lars_jax.tf_lars(learning_rate=1.0, classic_momentum=classic)
    state, p, got = tx.init(w), w, []
    for _ in range(2):
      u, state = tx.update(g, state, p)
      p = p + u
      got.extend(-np.asarray(u))
    np.testing.assert_allclose(got, expected[classic], rtol=1e-5)


def test_tf_lars_hand_computed_zero_norms():
  # w = 0: ratio 1, the decay (0 * w) changes nothing: update = -lr * g.
  # g = 0: u = wd * w, ratio eeta / wd: update = -lr * eeta * w.
  tx = lars_jax.tf_lars(learning_rate=2.0, weight_decay_rate=0.1, eeta=0.01)
  params = {"a": jnp.zeros(2), "b": jnp.array([3.0, 4.0])}
  grads = {"a": jnp.array([0.5, -1.0]), "b": jnp.zeros(2)}
  u, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(u["a"], [-1.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(u["b"], [-0.06, -0.08], rtol=1e-6)


def test_keras_clip_hand_computed():
  g = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([0.0, 0.5])}
  # clipvalue 2: a -> (2, -2); clipnorm 1 then rescales a (|a| = 2.83) but not b.
  out, _ = lars_jax.keras_clip(clipvalue=2.0, clipnorm=1.0).update(g, optax.EmptyState())
  np.testing.assert_allclose(out["a"], [0.5**0.5, -(0.5**0.5)], rtol=1e-6)
  np.testing.assert_array_equal(out["b"], g["b"])
  # global: N = sqrt(25 + 0.25); scale 1 / N for both.
  out, _ = lars_jax.keras_clip(global_clipnorm=1.0).update(g, optax.EmptyState())
  n = (25.25) ** 0.5
  np.testing.assert_allclose(out["a"], [3 / n, -4 / n], rtol=1e-6)
  np.testing.assert_allclose(out["b"], [0.0, 0.5 / n], rtol=1e-6)
  # Within the bound, or all zero: unchanged, no NaN.
  zeros = {"a": jnp.zeros(2)}
  out, _ = lars_jax.keras_clip(clipnorm=1.0, clipvalue=0.0).update(zeros, optax.EmptyState())
  np.testing.assert_array_equal(out["a"], np.zeros(2))
  out, _ = lars_jax.keras_clip(global_clipnorm=100.0).update(g, optax.EmptyState())
  jax.tree.map(np.testing.assert_array_equal, out, g)


# ----------------------------------------------------------------------------
# torch_lars.

MIN2 = {n: len(SHAPES[n]) >= 2 for n in NAMES}
GROUPS = {
  "conv/bias": True,
  "conv/kernel": True,
  "dense/bias": False,
  "dense/kernel": True,
  "norm/bias": False,
  "norm/scale": False,
}

TORCH_CASES = {
  "momentum_wd_kernels": (
    dict(learning_rate=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02),
    MIN2,
  ),
  "nesterov_warmup": (
    dict(learning_rate=WARMUP, momentum=0.9, weight_decay=1e-3, nesterov=True, eps=1e-3),
    None,
  ),
  "dampening": (
    dict(learning_rate=0.5, momentum=0.9, dampening=0.5, weight_decay=1e-2),
    None,
  ),
  "weight_decay_0": (dict(learning_rate=0.1, momentum=0.9, weight_decay=0.0), None),
  "weight_decay_schedule": (
    dict(learning_rate=0.5, momentum=0.9, weight_decay=optax.linear_schedule(0.0, 0.1, 3)),
    None,
  ),
  "momentum_0": (dict(learning_rate=0.3, weight_decay=5e-2, trust_coefficient=0.1), None),
  "masked_groups": (
    dict(learning_rate=0.5, momentum=0.8, weight_decay=1e-2, trust_coefficient=0.01),
    GROUPS,
  ),
}


@pytest.mark.parametrize("case", TORCH_CASES.values(), ids=TORCH_CASES.keys())
def test_torch_lars_matches_reference(case):
  kwargs, groups = case
  mask = _tree([groups[n] for n in NAMES]) if groups else True
  state = _run(
    lars_jax.torch_lars(**kwargs, weight_decay_mask=mask),
    TorchLarsReference(**kwargs, groups=groups),
  )
  arrays = [x for x in jax.tree.leaves(state) if x.dtype != jnp.int32]
  if kwargs.get("momentum", 0.0) == 0.0:
    assert arrays == []  # momentum 0: no buffer in the state
  else:
    assert len(arrays) == len(NAMES)


def test_torch_lars_traced_zero_weight_decay_adapts_nothing():
  # A traced weight_decay of 0 (inject_hyperparams) must skip adaptation at run time,
  # as a Python 0 does when the chain is built.
  kwargs = dict(learning_rate=0.2, momentum=0.9, weight_decay=0.0)
  _run(optax.inject_hyperparams(lars_jax.torch_lars)(**kwargs), TorchLarsReference(**kwargs))


def test_torch_lars_hand_computed():
  # |w| = 5, |g| = 1, wd 0.1, eta 0.001, eps 0: r = 0.005 / 1.5, d = r (g + 0.1 w)
  # = (0.9, 1.2) / 300 = (0.003, 0.004). Schedule lr = c: step 1 moves nothing but
  # fills the buffer b = d; step 2: b = 0.9 d + 0.5 d = 1.4 d, update = -1.4 d.
  tx = lars_jax.torch_lars(
    learning_rate=lambda c: c,
    momentum=0.9,
    dampening=0.5,
    weight_decay=0.1,
    eps=0.0,
  )
  w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])
  state = tx.init(w)
  u1, state = tx.update(g, state, w)
  u2, state = tx.update(g, state, w)
  np.testing.assert_array_equal(u1, [0.0, 0.0])
  np.testing.assert_allclose(u2, [-0.0042, -0.0056], rtol=1e-6)
  # Zero param or zero grad: d = g, no decay (Flash skips both).
  params = {"a": jnp.zeros(2), "b": jnp.array([3.0, 4.0])}
  grads = {"a": jnp.array([0.5, -1.0]), "b": jnp.zeros(2)}
  tx = lars_jax.torch_lars(2.0, weight_decay=0.1)
  u, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(u["a"], [-1.0, 2.0], rtol=1e-6)
  np.testing.assert_array_equal(u["b"], [0.0, 0.0])


def test_torch_trace_array_momentum_zero_is_pass_through():
  # PyTorch never touches a buffer while momentum is 0, so dampening has no effect;
  # when momentum becomes non-zero the buffer starts as a clone of d.
  tx0 = lars_jax.torch_trace(jnp.asarray(0.0), dampening=0.5)
  tx9 = lars_jax.torch_trace(jnp.asarray(0.9), dampening=0.5)
  state = tx0.init(jnp.zeros(2))
  for d in ([1.0, 2.0], [3.0, 4.0]):
    u, state = tx0.update(jnp.array(d), state)
    np.testing.assert_array_equal(u, d)
  assert int(state.count) == 0
  u, state = tx9.update(jnp.array([1.0, 1.0]), state)  # first momentum step: clone
  np.testing.assert_array_equal(u, [1.0, 1.0])
  u, state = tx9.update(jnp.array([1.0, 1.0]), state)  # 0.9 + 0.5
  np.testing.assert_allclose(u, [1.4, 1.4], rtol=1e-6)


# ----------------------------------------------------------------------------
# larc.

LARC_CASES = {
  # Warm-up from 1e-3: r / lr > 1 (factor 1) early on, < 1 later, per leaf.
  "clip_momentum_warmup": dict(
    learning_rate=optax.linear_schedule(1e-3, 0.1, 4), momentum=0.9, weight_decay=1e-3
  ),
  "clip_constant": dict(learning_rate=0.05, momentum=0.9, trust_coefficient=0.05),
  "scale_nesterov_wd": dict(
    learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2, clip=False
  ),
  "clip_decay_schedule": dict(
    learning_rate=WARMUP, momentum=0.9, weight_decay=optax.linear_schedule(0.1, 0.0, 4)
  ),
  "scale_no_decay": dict(learning_rate=WARMUP, momentum=0.0, clip=False, eps=1e-3),
}


@pytest.mark.parametrize("kwargs", LARC_CASES.values(), ids=LARC_CASES.keys())
def test_larc_matches_reference(kwargs):
  kwargs = dict(kwargs)
  lr, momentum = kwargs.pop("learning_rate"), kwargs.pop("momentum")
  nesterov = kwargs.pop("nesterov", False)
  inner = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
  _run(
    lars_jax.larc(inner, learning_rate=lr, **kwargs),
    LarcSgdReference(lr, momentum=momentum, nesterov=nesterov, **kwargs),
  )


def test_larc_scale_with_sgd_momentum_is_torch_lars():
  # LARS_VARIANTS section 4: scale mode, wd != 0, the same eta and eps, torch SGD
  # momentum (no dampening, no Nesterov) equals Flash.
  lr = optax.warmup_cosine_decay_schedule(0.0, 1.0, 2, 10)
  larc = lars_jax.larc(
    optax.sgd(lr, momentum=0.9),
    learning_rate=lr,
    weight_decay=1e-2,
    trust_coefficient=0.02,
    clip=False,
    eps=1e-6,
  )
  flash = lars_jax.torch_lars(lr, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02, eps=1e-6)
  p1 = p2 = _tree([jnp.asarray(x) for x in _params()])
  s1, s2 = larc.init(p1), flash.init(p2)
  for step in range(STEPS):
    g = _tree([jnp.asarray(x) for x in _grads(step)])
    u1, s1 = larc.update(g, s1, p1)
    u2, s2 = flash.update(g, s2, p2)
    _close(_leaves(u1), _leaves(u2), f"step {step + 1}")
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)


def test_larc_hand_computed():
  # |w| = 5, |g| = 1, eta 0.02, eps 0, no decay: r = 0.1.
  w, g = jnp.array([3.0, 4.0]), jnp.array([0.6, 0.8])
  cases = [  # (lr, clip, expected update)
    (0.5, True, [-0.06, -0.08]),  # a = min(0.1 / 0.5, 1) = 0.2; -0.5 * 0.2 g
    (0.5, False, [-0.03, -0.04]),  # a = 0.1; -0.5 * 0.1 g
    (0.05, True, [-0.03, -0.04]),  # a = min(2, 1) = 1; -0.05 g
    (0.0, True, [0.0, 0.0]),  # lr 0: a = 1 (no division by zero), no step
  ]
  for lr, clip, expected in cases:
    tx = lars_jax.larc(optax.sgd(lr), learning_rate=lr, clip=clip, eps=0.0)
    u, _ = tx.update(g, tx.init(w), w)
    np.testing.assert_allclose(u, expected, rtol=1e-6)
  # Zero param or zero grad: gradient untouched, no decay.
  tx = lars_jax.scale_by_sum_norms_trust_ratio(
    0.02, 0.5, adapt_without_decay=True, clip_learning_rate=0.1
  )
  params = {"a": jnp.zeros(2), "b": jnp.array([3.0, 4.0])}
  grads = {"a": jnp.array([0.5, -1.0]), "b": jnp.zeros(2)}
  u, _ = tx.update(grads, tx.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, u, grads)


# ----------------------------------------------------------------------------
# All presets: traced hyperparameters, low precision, zero trees.


def _presets():
  return {
    "tf_lars_classic": (
      functools.partial(
        lars_jax.tf_lars, exclude_from_weight_decay=["bias"], clipnorm=1.0, nesterov=True
      ),
      dict(learning_rate=0.5, momentum=0.9, weight_decay_rate=1e-2, eeta=0.01),
    ),
    "tf_lars_popular": (
      functools.partial(lars_jax.tf_lars, classic_momentum=False, global_clipnorm=2.0),
      dict(learning_rate=0.5, momentum=0.9, weight_decay_rate=1e-2, eeta=0.01),
    ),
    "torch_lars": (
      functools.partial(lars_jax.torch_lars, weight_decay_mask=masks.min_ndim(2)),
      dict(learning_rate=0.5, momentum=0.9, dampening=0.1, weight_decay=1e-2, eps=1e-6),
    ),
    "larc": (
      functools.partial(lars_jax.larc, optax.sgd(0.1, momentum=0.9)),
      dict(learning_rate=0.1, weight_decay=1e-2, trust_coefficient=0.02, eps=1e-6),
    ),
  }


@pytest.mark.parametrize("name", list(_presets()))
def test_inject_hyperparams_same_numbers(name):
  factory, kwargs = _presets()[name]
  plain = factory(**kwargs)
  static = ("weight_decay_mask",) if name == "torch_lars" else ()  # a callable mask
  injected = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  p = _tree([jnp.asarray(x) for x in _params()])
  s1, s2 = plain.init(p), injected.init(p)
  assert set(kwargs) <= set(s2.hyperparams)  # every numeric argument is traced
  for step in range(3):
    g = _tree([jnp.asarray(x) for x in _grads(step)])
    u1, s1 = plain.update(g, s1, p)
    u2, s2 = jax.jit(injected.update)(g, s2, p)
    _close(_leaves(u2), _leaves(u1), f"{name} step {step + 1}")
    p = optax.apply_updates(p, u1)


@pytest.mark.parametrize("name", list(_presets()))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_and_zeros(name, dtype):
  factory, kwargs = _presets()[name]
  tx = factory(**kwargs)
  p = _tree([jnp.asarray(x, dtype) for x in _params()])
  state = tx.init(p)
  for step in range(3):
    g = _tree([jnp.asarray(1e-3 * x, dtype) for x in _grads(step)])  # tiny: f16 |g|^2 < min
    u, state = jax.jit(tx.update)(g, state, p)
    for x in jax.tree.leaves(u):
      assert x.dtype == dtype and bool(jnp.all(jnp.isfinite(x)))
    p = optax.apply_updates(p, u)
  zeros = jax.tree.map(jnp.zeros_like, p)
  u, _ = tx.update(zeros, tx.init(zeros), zeros)  # zero params and zero grads
  for x in jax.tree.leaves(u):
    np.testing.assert_array_equal(np.asarray(x, np.float32), 0.0)


def test_low_precision_norms_are_wide():
  # float16 gradients of 1e-4: |g|^2 underflows in float16; the ratio must not.
  w = jnp.full((64,), 1.0, jnp.float16)
  g = jnp.full((64,), 1e-4, jnp.float16)
  tx = lars_jax.torch_lars(1.0, weight_decay=1e-4, eps=0.0)
  u, _ = tx.update(g, tx.init(w), w)
  r = 0.001 * 8.0 / (8e-4 + 1e-4 * 8.0)  # |w| = 8, |g| = 8e-4
  expected = -r * (1e-4 + 1e-4 * 1.0)
  np.testing.assert_allclose(np.asarray(u, np.float32), expected, rtol=2e-3)


# ----------------------------------------------------------------------------
# Bad arguments.

BAD = [
  (lambda: lars_jax.tf_lars(learning_rate=-1.0), ValueError, "learning_rate"),
  (lambda: lars_jax.tf_lars(momentum=1.0), ValueError, "momentum"),
  (lambda: lars_jax.tf_lars(weight_decay_rate=-0.1), ValueError, "weight_decay_rate"),
  (lambda: lars_jax.tf_lars(eeta=-1.0), ValueError, "eeta"),
  (lambda: lars_jax.tf_lars(nesterov=1), TypeError, "nesterov"),
  (lambda: lars_jax.tf_lars(classic_momentum="no"), TypeError, "classic_momentum"),
  (lambda: lars_jax.tf_lars(exclude_from_weight_decay="bias"), TypeError, "list of regular"),
  (lambda: lars_jax.tf_lars(exclude_from_layer_adaptation=["("]), ValueError, "not a valid"),
  (lambda: lars_jax.tf_lars(clipnorm=1.0, global_clipnorm=1.0), ValueError, "global_clipnorm"),
  (lambda: lars_jax.tf_lars(clipvalue=-1.0), ValueError, "clipvalue"),
  (lambda: lars_jax.tf_lars(clipnorm=float("nan")), ValueError, "clipnorm"),
  (lambda: lars_jax.torch_lars(-0.1), ValueError, "learning_rate"),
  (lambda: lars_jax.torch_lars(0.1, momentum=-0.9), ValueError, "momentum"),
  (lambda: lars_jax.torch_lars(0.1, weight_decay=-1e-4), ValueError, "weight_decay"),
  (lambda: lars_jax.torch_lars(0.1, trust_coefficient=lambda c: 0.1), TypeError, "trust_coeff"),
  (lambda: lars_jax.torch_lars(0.1, nesterov=True), ValueError, "nesterov"),
  (
    lambda: lars_jax.torch_lars(0.1, momentum=0.9, dampening=0.1, nesterov=True),
    ValueError,
    "dampening",
  ),
  (lambda: lars_jax.torch_lars(0.1, dampening=2.0), ValueError, "dampening"),
  (lambda: lars_jax.torch_lars(0.1, eps=-1.0), ValueError, "eps"),
  (lambda: lars_jax.larc(optax.sgd(0.1), learning_rate=-0.1), ValueError, "learning_rate"),
  (lambda: lars_jax.larc(lambda g: g, learning_rate=0.1), TypeError, "inner"),
  (lambda: lars_jax.larc(optax.sgd(0.1), 0.1, clip="yes"), TypeError, "clip"),
  (lambda: lars_jax.larc(optax.sgd(0.1), 0.1, trust_coefficient=-1), ValueError, "trust"),
  (lambda: lars_jax.timm_lars(-0.1), ValueError, "learning_rate"),
  (lambda: lars_jax.timm_lars(-0.1, trust_clip=True), ValueError, "learning_rate"),
  (lambda: lars_jax.timm_lars(None), TypeError, "learning_rate"),
  (lambda: lars_jax.flax_lars(0.1, beta=1.0), ValueError, "beta"),
  (lambda: lars_jax.byol_lars(0.1, eta=lambda c: 0.1), TypeError, "eta"),
  (lambda: lars_jax.scale_by_sum_norms_trust_ratio(guard="apex"), ValueError, "guard"),
  (lambda: lars_jax.scale_by_sum_norms_trust_ratio(clip_learning_rate=-1.0), ValueError, "rate"),
  (lambda: lars_jax.scale_by_trust_ratio(eps=1e-8, positive_norms_only=True), ValueError, "eps"),
]


@pytest.mark.parametrize("make, exc, match", BAD)
def test_bad_arguments(make, exc, match):
  with pytest.raises(exc, match=match):
    make()


def test_keras_clip_passes_an_empty_tree_through():
  tx = lars_jax.keras_clip(clipvalue=1.0, clipnorm=1.0)
  assert tx.update({}, tx.init({}))[0] == {}


def test_bad_use_at_update():
  p = {"w": jnp.ones(3), "bias": jnp.ones(1)}
  with pytest.raises(ValueError, match="'bn' matches no parameter"):
    lars_jax.tf_lars(exclude_from_weight_decay=["bias", "bn"]).init(p)
  tx = lars_jax.torch_lars(0.1, weight_decay=1e-2)
  with pytest.raises(ValueError, match="needs the current parameters"):
    tx.update(p, tx.init(p))
  tx = lars_jax.keras_clip(clipvalue=1.0)
  with pytest.raises(TypeError, match="clipvalue"):
    tx.update({"w": jnp.ones(2, jnp.complex64)}, tx.init(None))
  with pytest.raises(ValueError, match=r"scale_by_sum_norms_trust_ratio: `mask` does not match"):
    tx = lars_jax.torch_lars(0.1, weight_decay=1e-2, weight_decay_mask={"w": True})
    tx.init(p)


# ----------------------------------------------------------------------------
# Non-finite values follow each framework's guard (issue 11 §1).
#
# One element of conv/kernel (adapted and decayed in every case) is NaN, +Inf or -Inf:
# in the gradient of step 1 only (a bad batch), or in the initial parameter. Three steps
# of each preset / transform are compared, step by step, with the float64 references
# above (their guards are the frameworks' tests, written as such: Model Garden
# `wn > 0 and xn > 0`, Flash `wd != 0 and wn != 0 and gn != 0`, LARC `wn != 0 and
# gn != 0`) and with `LarsReference` / `TransformReference` below for optax's
# `== 0` guard. What that means for a NaN norm:
#   * Model Garden (tf_lars, positive_norms_only=True): r = 1, only the NaN elements
#     stay NaN, the rest of the leaf takes a plain step;
#   * Flash, LARC (torch_lars, larc, scale_by_sum_norms_trust_ratio): `!= 0` holds for
#     NaN, so the whole leaf's update is NaN;
#   * optax (lars, scale_by_trust_ratio[_with_decay]): the ratio falls back to 1 only
#     where a norm == 0, so the whole leaf is NaN.
# Comparison (`_same_nonfinite`): the NaN, +Inf and -Inf masks of updates and params are
# equal exactly; the finite values agree with rtol 1e-6 and an absolute floor of 1e-6 *
# the largest finite |value| of the leaf (as `_close`).

BAD_LEAF = NAMES.index("conv/kernel")
BAD_INDEX = (0, 1, 0, 2)
NONFINITE = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
NONFINITE_STEPS = 3
T_LR = 0.1  # the step size applied to a bare transform's output


class LarsReference:
  """optax.lars (LARS_VARIANTS section 1): u = g + wd w; r = eta |w| / (|u| + eps), or 1
  where a norm == 0 (optax's guard: a NaN norm gives a NaN ratio); v = mu v + lr r u;
  the update is -v (Nesterov: -(mu v + lr r u))."""

  def __init__(
    self,
    learning_rate,
    weight_decay=0.0,
    trust_coefficient=0.001,
    eps=0.0,
    momentum=0.9,
    nesterov=False,
  ):
    self.lr, self.wd, self.eta, self.eps = learning_rate, weight_decay, trust_coefficient, eps
    self.mu, self.nesterov = momentum, nesterov
    self.v = None

  def step(self, params, grads):
    if self.v is None:
      self.v = [np.zeros_like(w) for w in params]
    updates = []
    for i, (w, g) in enumerate(zip(params, grads)):
      u = np.asarray(g, np.float64) + self.wd * w
      wn, un = _norm(w), _norm(u)
      r = 1.0 if wn == 0 or un == 0 else self.eta * wn / (un + self.eps)
      self.v[i] = self.mu * self.v[i] + self.lr * r * u
      updates.append(-(self.mu * self.v[i] + self.lr * r * u) if self.nesterov else -self.v[i])
    return updates


class TransformReference:
  """A bare trust-ratio transform followed by a step of -T_LR:
  * "optax": u = g + wd w (all leaves); r = 1 if |w| == 0 or |u| == 0, else
    eta |w| / (|u| + eps); d = r u (scale_by_trust_ratio[_with_decay]);
  * "tf": the same with r = eta |w| / |u| only if |w| > 0 and |u| > 0, else 1
    (positive_norms_only=True);
  * "sum": d = a (g + wd w) if |w| != 0, |g| != 0 (and wd != 0 unless
    adapt_without_decay), a = eta |w| / (|g| + wd |w| + eps), with clip_lr:
    min(a / clip_lr, 1); else d = g (scale_by_sum_norms_trust_ratio)."""

  def __init__(self, guard, eta, wd=0.0, eps=0.0, adapt_without_decay=False, clip_lr=None):
    self.guard, self.eta, self.wd, self.eps = guard, eta, wd, eps
    self.adapt_without_decay, self.clip_lr = adapt_without_decay, clip_lr

  def step(self, params, grads):
    updates = []
    for w, g in zip(params, grads):
      g = np.asarray(g, np.float64)
      wn = _norm(w)
      if self.guard == "sum":
        gn = _norm(g)
        if wn != 0 and gn != 0 and (self.adapt_without_decay or self.wd != 0):
          a = self.eta * wn / (gn + self.wd * wn + self.eps)
          if self.clip_lr is not None:
            a = min(a / self.clip_lr, 1.0)  # min(NaN, 1) is NaN, as torch's min
          d = a * (g + self.wd * w)
        else:
          d = g
      else:
        u = g + self.wd * w if self.wd else g  # a Python 0 adds nothing (not 0 * Inf)
        un = _norm(u)
        if self.guard == "optax":
          r = 1.0 if wn == 0 or un == 0 else self.eta * wn / (un + self.eps)
        else:
          r = self.eta * wn / un if wn > 0 and un > 0 else 1.0
        d = r * u
      updates.append(-T_LR * d)
    return updates


def _nonfinite_cases():
  """name -> (make the optax transformation, make its float64 reference, what a NaN in
  the gradient does to the bad leaf's first update: 'element' or 'leaf')."""
  tf_classic = dict(learning_rate=0.7, weight_decay_rate=1e-2, exclude_from_weight_decay=["bias"])
  tf_popular = dict(learning_rate=0.5, momentum=0.8, weight_decay_rate=1e-2, classic_momentum=False)
  flash = dict(learning_rate=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02)
  lars = dict(learning_rate=0.5, weight_decay=1e-2, trust_coefficient=0.02, eps=1e-3)
  step = optax.scale(-T_LR)

  def larc(clip, lr):
    return (
      lambda: lars_jax.larc(
        optax.sgd(lr, momentum=0.9), learning_rate=lr, weight_decay=1e-3, clip=clip
      ),
      lambda: LarcSgdReference(lr, momentum=0.9, weight_decay=1e-3, clip=clip),
      "leaf",
    )

  return {
    "tf_lars_classic": (
      lambda: lars_jax.tf_lars(**tf_classic),
      lambda: TFLarsReference(**tf_classic),
      "element",
    ),
    "tf_lars_popular": (
      lambda: lars_jax.tf_lars(**tf_popular),
      lambda: TFLarsReference(**tf_popular),
      "element",
    ),
    "torch_lars": (
      lambda: lars_jax.torch_lars(**flash),
      lambda: TorchLarsReference(**flash),
      "leaf",
    ),
    "larc_clip": larc(True, 0.05),
    "larc_scale": larc(False, 0.1),
    "lars": (lambda: lars_jax.lars(**lars), lambda: LarsReference(**lars), "leaf"),
    "scale_by_trust_ratio": (
      lambda: optax.chain(lars_jax.scale_by_trust_ratio(0.02, eps=1e-3), step),
      lambda: TransformReference("optax", 0.02, eps=1e-3),
      "leaf",
    ),
    "scale_by_trust_ratio_positive_norms_only": (
      lambda: optax.chain(lars_jax.scale_by_trust_ratio(0.02, positive_norms_only=True), step),
      lambda: TransformReference("tf", 0.02),
      "element",
    ),
    "scale_by_trust_ratio_with_decay": (
      lambda: optax.chain(lars_jax.scale_by_trust_ratio_with_decay(1e-2, 0.02, 1e-3), step),
      lambda: TransformReference("optax", 0.02, wd=1e-2, eps=1e-3),
      "leaf",
    ),
    "scale_by_trust_ratio_with_decay_positive_norms_only": (
      lambda: optax.chain(
        lars_jax.scale_by_trust_ratio_with_decay(1e-2, 0.02, positive_norms_only=True), step
      ),
      lambda: TransformReference("tf", 0.02, wd=1e-2),
      "element",
    ),
    "scale_by_sum_norms_trust_ratio": (
      lambda: optax.chain(lars_jax.scale_by_sum_norms_trust_ratio(0.02, 1e-2), step),
      lambda: TransformReference("sum", 0.02, wd=1e-2, eps=1e-8),
      "leaf",
    ),
    "scale_by_sum_norms_trust_ratio_larc_clip": (
      lambda: optax.chain(
        lars_jax.scale_by_sum_norms_trust_ratio(
          0.02, 1e-3, adapt_without_decay=True, clip_learning_rate=0.05
        ),
        step,
      ),
      lambda: TransformReference(
        "sum", 0.02, wd=1e-3, eps=1e-8, adapt_without_decay=True, clip_lr=0.05
      ),
      "leaf",
    ),
  }


def _same_nonfinite(actual, desired, what):
  """NaN / +Inf / -Inf positions equal exactly; finite values as `_close`."""
  for name, a, d in zip(NAMES, actual, desired):
    a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
    for kind, test in [("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)]:
      np.testing.assert_array_equal(test(a), test(d), err_msg=f"{what}: {name}: {kind} positions")
    fin = np.isfinite(d)
    atol = RTOL * float(np.max(np.abs(d[fin]))) if fin.any() else 0.0
    np.testing.assert_allclose(a[fin], d[fin], rtol=RTOL, atol=atol, err_msg=f"{what}: {name}")


def _run_nonfinite(tx, update, ref, where, value, steps=NONFINITE_STEPS):
  """Like `_run`, with `value` at BAD_INDEX of conv/kernel's step-1 gradient (where =
  'grad') or initial parameter ('param'); `update` is `tx.update` under jit (one
  compilation for all values). Returns the float32 updates of each step."""
  p = _params()
  if where == "param":
    p[BAD_LEAF][BAD_INDEX] = value
  p = [jnp.asarray(x) for x in p]
  p_ref = [np.asarray(x, np.float64) for x in p]
  state = tx.init(_tree(p))
  out = []
  for step in range(steps):
    g = _grads(step)
    if where == "grad" and step == 0:
      g[BAD_LEAF][BAD_INDEX] = value
    u, state = update(_tree([jnp.asarray(x) for x in g]), state, _tree(p))
    u = _leaves(u)
    what = f"{value} in the {where}: step {step + 1}"
    with np.errstate(invalid="ignore", over="ignore"):
      u_ref = ref.step(p_ref, g)
      _same_nonfinite(u, u_ref, f"updates, {what}")
      p = [x + y for x, y in zip(p, u)]
      p_ref = [x + y for x, y in zip(p_ref, u_ref)]
      _same_nonfinite(p, p_ref, f"params, {what}")
    out.append(u)
  return out


@pytest.mark.parametrize("case", list(_nonfinite_cases()))
def test_nonfinite_follows_guard(case):
  # NaN, +Inf, -Inf, each in a gradient and (separately) in a parameter.
  make_tx, make_ref, _ = _nonfinite_cases()[case]
  tx = make_tx()
  update = jax.jit(tx.update)
  for where in ("grad", "param"):
    for value in NONFINITE.values():
      updates = _run_nonfinite(tx, update, make_ref(), where, value)
      # Only the bad leaf is touched; a bad gradient reaches its update.
      for u in updates:
        for i, x in enumerate(u):
          if i != BAD_LEAF:
            assert bool(jnp.all(jnp.isfinite(x))), (where, value, NAMES[i])
      if where == "grad":
        assert not np.isfinite(np.asarray(updates[0][BAD_LEAF])).all(), value


@pytest.mark.parametrize("case", list(_nonfinite_cases()))
def test_nan_gradient_element_or_leaf(case):
  # The guard, stated without a reference: a NaN gradient element makes that leaf's
  # norm NaN. Model Garden's `> 0` tests fall back to r = 1 (one NaN element, the other
  # elements take a finite step); `!= 0` (Flash, LARC) and optax's `== 0` fallback let
  # the NaN ratio through (the whole leaf is NaN).
  make_tx, _, expected = _nonfinite_cases()[case]
  tx = make_tx()
  p = _tree([jnp.asarray(x) for x in _params()])
  g = _grads(0)
  g[BAD_LEAF][BAD_INDEX] = np.nan
  u, _ = jax.jit(tx.update)(_tree([jnp.asarray(x) for x in g]), tx.init(p), p)
  nan = np.isnan(np.asarray(_leaves(u)[BAD_LEAF]))
  if expected == "element":
    assert nan.sum() == 1 and nan[BAD_INDEX], nan.sum()
  else:
    assert nan.all(), nan.sum()


@pytest.mark.parametrize("case", list(_nonfinite_cases()))
def test_zero_norms_never_nan_nor_nan_derivatives(case):
  # Exact zero norms (zero params, zero grads, both; conv/bias and norm/bias start at
  # zero, dense/kernel gets a zero gradient on step 3 of `_grads`) give finite updates,
  # and jax.grad of two steps with respect to the params and the gradients is finite.
  make_tx, _, _ = _nonfinite_cases()[case]
  tx = make_tx()
  params = _tree([jnp.asarray(x) for x in _params()])
  zeros = jax.tree.map(jnp.zeros_like, params)
  grads = [_tree([jnp.asarray(x) for x in _grads(s)]) for s in (1, 2)]

  def loss(p, g1, g2):
    state = tx.init(p)
    for g in (g1, g2):
      u, state = tx.update(g, state, p)
      p = optax.apply_updates(p, u)
    return sum(jnp.sum(jnp.sin(x)) for x in jax.tree.leaves(p)), p

  value_and_grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  for label, p, g1, g2 in [
    ("all zero", zeros, zeros, zeros),
    ("zero params", zeros, *grads),
    ("zero grads", params, zeros, zeros),
    ("mixed", params, *grads),
  ]:
    (_, new_p), derivatives = value_and_grad(p, g1, g2)
    for x in jax.tree.leaves(new_p):
      assert bool(jnp.all(jnp.isfinite(x))), (case, label)
    for d in jax.tree.leaves(derivatives):
      assert bool(jnp.all(jnp.isfinite(d))), (case, label, "derivative")
