"""The contract every lars_jax optimizer keeps with optax, in the spirit of optax's
per-optimizer alias tests: convergence, jit, extra args, inject_hyperparams, dtypes and
the optax wrappers.

To put another optimizer under contract (e.g. a preset), append a `Contract` to
`OPTIMIZERS`: its factory, keyword arguments with small numbers, which of them are not
numeric (masks, bools: `static_args` for `optax.inject_hyperparams`), and the peak
learning rate of a cosine schedule that solves the parabola and Rosenbrock in
`converge_steps` steps.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compat import OPTAX_VERSION, enable_x64, tree_map_params

import lars_jax
from lars_jax import masks


@dataclasses.dataclass(frozen=True)
class Contract:
  """One optimizer under contract.

  Attributes:
    name: test id.
    factory: keyword-argument factory returning a GradientTransformation.
    kwargs: its keyword arguments, including `learning_rate`.
    static_args: the kwargs `optax.inject_hyperparams` must not turn into arrays.
    converge_lr: peak of the cosine learning-rate schedule for the convergence tests.
    converge_steps: steps for the convergence tests.
  """

  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any]
  static_args: tuple[str, ...] = ()
  converge_lr: float = 1.0
  converge_steps: int = 3000

  def make(self, **overrides: Any) -> optax.GradientTransformation:
    return self.factory(**{**self.kwargs, **overrides})

  def injected(
    self, hyperparam_dtype: Any = None, **overrides: Any
  ) -> optax.GradientTransformation:
    inject = optax.inject_hyperparams(
      self.factory, static_args=self.static_args, hyperparam_dtype=hyperparam_dtype
    )
    return inject(**{**self.kwargs, **overrides})


def hand_chain(
  learning_rate,
  weight_decay=0.0,
  trust_coefficient=0.001,
  eps=0.0,
  momentum=0.9,
  decay_mask=None,
  nesterov=False,
):
  """LARS rebuilt by hand from the four public transforms (what users may do)."""
  return optax.chain(
    lars_jax.add_decayed_weights(weight_decay, mask=decay_mask),
    lars_jax.scale_by_trust_ratio(trust_coefficient, eps, mask=decay_mask),
    lars_jax.scale_by_learning_rate(learning_rate),
    lars_jax.trace(momentum, nesterov=nesterov),
  )


_RANK1 = masks.min_ndim(1)  # True on every leaf of these (>= 1-D) problems

OPTIMIZERS = [
  Contract("lars", lars_jax.lars, dict(learning_rate=1.0)),
  Contract(
    "lars_wd_masks_nesterov",
    lars_jax.lars,
    dict(
      learning_rate=1.0,
      weight_decay=1e-4,
      weight_decay_mask=_RANK1,
      trust_ratio_mask=_RANK1,
      eps=1e-9,
      nesterov=True,
    ),
    static_args=("weight_decay_mask", "trust_ratio_mask", "nesterov"),
  ),
  Contract(
    "hand_chain",
    hand_chain,
    dict(learning_rate=1.0, weight_decay=1e-4, momentum=0.8, decay_mask=_RANK1),
    static_args=("decay_mask", "nesterov"),
    converge_lr=2.0,  # momentum 0.8 moves less per step; 1.0 leaves complex Rosenbrock at 3e-2
  ),
  # The framework presets (lars_jax/presets.py). Popular momentum normalises the step
  # (no x10 from the buffer), hence its larger converge_lr. larc wraps SGD-momentum built
  # from our transforms (optax.sgd would cast bf16 updates to an f32 injected rate); in
  # clip mode eta=100 makes the min(r / lr, 1) bound bind, so updates stay linear in lr.
  Contract("tf_lars", lars_jax.tf_lars, dict(learning_rate=1.0)),
  Contract(
    "tf_lars_popular_nesterov_clipnorm",
    lars_jax.tf_lars,
    dict(
      learning_rate=1.0,
      weight_decay_rate=1e-4,
      classic_momentum=False,
      nesterov=True,
      clipnorm=10.0,
    ),
    converge_lr=5.0,
  ),
  Contract(
    "torch_lars",
    lars_jax.torch_lars,
    dict(learning_rate=1.0, momentum=0.9, dampening=0.1, weight_decay=1e-4),
    converge_lr=2.0,
  ),
  *(
    Contract(
      f"larc_sgd_{mode}",
      lambda learning_rate, weight_decay=0.0, trust_coefficient=0.02, clip=clip: lars_jax.larc(
        optax.chain(lars_jax.trace(0.9), lars_jax.scale_by_learning_rate(learning_rate)),
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
        clip=clip,
      ),
      dict(learning_rate=1.0, weight_decay=1e-4, trust_coefficient=100.0 if clip else 0.02),
      converge_lr=0.002 if clip else 1.0,
    )
    for mode, clip in [("scale", False), ("clip", True)]
  ),
]

by_name = pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda c: c.name)


# ----------------------------------------------------------------------------
# Targets (as optax's alias tests: from [-1, 10, 1] to [1, -1, 1]; Rosenbrock from 0).


def _abs_sq(x):
  return (x * jnp.conj(x)).real


def parabola(dtype):
  x0 = jnp.array([-1.0, 10.0, 1.0], dtype)
  target = jnp.array([1.0, -1.0, 1.0], dtype)
  if jnp.issubdtype(dtype, jnp.complexfloating):
    target = target * (1 + 1j)
  return x0, target, lambda x: jnp.sum(_abs_sq(x - target))


def _square(x):
  # Complex x**2 as (re - im)(re + im) + 2 re im i: exactly 0 + 2 re^2 i on the diagonal
  # re == im, where this problem's iterates stay. `x ** 2` computes re*re - im*im, which
  # XLA may fuse into an FMA that leaves the rounding error of re*re (+-2e-7 at re = 3.8)
  # with a sign that differs between jaxlib versions: the gradients then differ in sign
  # and the iterates leave the diagonal, differently on each version.
  if not jnp.issubdtype(x.dtype, jnp.complexfloating):
    return x * x
  return jax.lax.complex((x.real - x.imag) * (x.real + x.imag), 2 * x.real * x.imag)


def rosenbrock(dtype):
  a = (1.0 + 1j) if jnp.issubdtype(dtype, jnp.complexfloating) else 1.0
  x0 = jnp.zeros(2, dtype)
  target = jnp.array([a, a**2], dtype)
  return x0, target, lambda x: _abs_sq(a - x[0]) + 100.0 * _abs_sq(x[1] - _square(x[0]))


def _step_fn(tx, objective, **extra):
  def step(params, state):
    grads = jax.tree.map(jnp.conj, jax.grad(objective)(params))  # complex: descend
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  return step


@by_name
@pytest.mark.parametrize("target", [parabola, rosenbrock])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.complex64], ids=["f32", "c64"])
def test_converges(opt, target, dtype):
  steps = opt.converge_steps
  tx = opt.make(learning_rate=optax.cosine_decay_schedule(opt.converge_lr, steps))
  x0, x_star, objective = target(dtype)
  step = _step_fn(tx, objective)

  @jax.jit
  def solve(x0):
    return jax.lax.fori_loop(0, steps, lambda _, c: step(*c), (x0, tx.init(x0)))[0]

  x = solve(x0)
  assert x.dtype == dtype
  # optax's alias tests use 3e-2 after 10000 steps; the schedule lets us ask for 1e-2.
  np.testing.assert_allclose(x, x_star, rtol=0, atol=1e-2)


@by_name
def test_jit_no_recompile(opt):
  tx = opt.make(learning_rate=optax.linear_schedule(1.0, 0.1, 10))  # state carries counts
  x0, _, objective = rosenbrock(jnp.float32)
  chex.clear_trace_counter()  # counts are per function code, shared across parameters

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state):
    return _step_fn(tx, objective)(params, state)

  init = jax.jit(chex.assert_max_traces(tx.init, n=1))
  params, state = x0, init(x0)
  init(x0)
  for _ in range(3):
    params, state = step(params, state)
  assert np.all(np.isfinite(np.asarray(params)))


@by_name
def test_accepts_extra_args(opt):
  tx = opt.make()
  x0, _, objective = rosenbrock(jnp.float32)
  step = jax.jit(_step_fn(tx, objective, unexpected_extra_arg_your_optimizer_does_not_expect=1))
  params, state = x0, tx.init(x0)
  for _ in range(2):
    params, state = step(params, state)
  assert np.all(np.isfinite(np.asarray(params)))


def _tree_problem(dtype=jnp.float32):
  """A small tree (matrix, vector, list) and a gradient per step, all of `dtype`."""
  is_complex = jnp.issubdtype(dtype, jnp.complexfloating)
  phase = (1 + 0.5j) if is_complex else 1.0
  params = {
    "w": (phase * jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)).astype(dtype),
    "b": (phase * jnp.array([0.5, -0.25])).astype(dtype),
    "v": [(phase * jnp.arange(1.0, 5.0)).astype(dtype)],
  }

  def grads(i):
    def one(x):
      angle = jnp.real(x).astype(jnp.float32) * (i + 2.0)
      g = jnp.cos(angle) + 1j * jnp.sin(angle) if is_complex else jnp.cos(angle)
      return g.astype(dtype)

    return jax.tree.map(one, params)

  return params, grads


@by_name
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_inject_hyperparams_same_numbers(opt, jit):
  params, grads = _tree_problem()
  plain, injected = opt.make(), opt.injected()
  wrap = jax.jit if jit else (lambda f: f)
  s1, s2 = wrap(plain.init)(params), wrap(injected.init)(params)
  p1 = p2 = params
  for i in range(3):
    u1, s1 = wrap(plain.update)(grads(i), s1, p1)
    u2, s2 = wrap(injected.update)(grads(i), s2, p2)
    if jit:
      # Under jit XLA folds a Python-constant learning rate into the fused multiply-
      # adds differently from a runtime one: 1-ulp differences (optax.lars shows the
      # same). rtol 1e-6 with a floor of 1e-6 * max|u| per leaf (momentum cancellation).
      for a, b in zip(jax.tree.leaves(u2), jax.tree.leaves(u1)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(b))))
    else:
      jax.tree.map(np.testing.assert_array_equal, u2, u1)  # bit for bit
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  if not jit:
    jax.tree.map(np.testing.assert_array_equal, s2.inner_state, s1)


@by_name
@pytest.mark.parametrize("how", ["hyperparam_dtype", "strong_arrays"])
def test_inject_hyperparams_keep_their_dtype(opt, how):
  # float32 hyperparameters with bfloat16 params (optax's default would cast them to
  # the params' dtype; a user can keep them in float32 either way below).
  if how == "strong_arrays" and OPTAX_VERSION < (0, 2, 8):
    pytest.skip(
      "optax < 0.2.8's inject_hyperparams casts strong float32 hyperparameters to the "
      f"params' dtype (this is optax {optax.__version__}); hyperparam_dtype=float32 still works"
    )
  params, grads = _tree_problem(jnp.bfloat16)
  if how == "hyperparam_dtype":
    injected = opt.injected(hyperparam_dtype=jnp.float32)
  else:
    values = {
      name: param.default
      for name, param in inspect.signature(opt.factory).parameters.items()
      if param.default is not inspect.Parameter.empty
    }
    values.update(opt.kwargs)
    numeric = {
      k: jnp.asarray(v, jnp.float32)
      for k, v in values.items()
      if k not in opt.static_args and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    injected = opt.injected(**numeric)
  state = injected.init(params)
  hyper_dtypes = {k: v.dtype for k, v in state.hyperparams.items()}
  assert all(d == jnp.float32 for d in hyper_dtypes.values()), hyper_dtypes
  updates, state = jax.jit(injected.update)(grads(0), state, params)
  assert {k: v.dtype for k, v in state.hyperparams.items()} == hyper_dtypes
  assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
  # Changing an injected hyperparameter takes effect without recompiling: from a
  # fresh state, the first update is linear in the learning rate.
  chex.clear_trace_counter()
  update = jax.jit(chex.assert_max_traces(injected.update, n=1))
  out = {}
  for lr in [1.0, 0.5, 0.0]:
    state = injected.init(params)
    state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    out[lr], _ = update(grads(0), state, params)
  for full, half, zero in zip(*(jax.tree.leaves(out[k]) for k in [1.0, 0.5, 0.0])):
    np.testing.assert_array_equal(zero, np.zeros_like(zero))
    # Both are single bfloat16 roundings of exact halves of each other: 2^-8.
    np.testing.assert_allclose(
      np.asarray(half, np.float32), 0.5 * np.asarray(full, np.float32), rtol=2**-8
    )


@by_name
@pytest.mark.parametrize(
  "dtype",
  [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64, jnp.complex64],
  ids=lambda d: jnp.dtype(d).name,
)
def test_update_keeps_grad_dtype(opt, dtype):
  with enable_x64(dtype == jnp.float64):
    params, grads = _tree_problem(dtype)
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    tx = opt.make()
    state = tx.init(params)
    step = jax.jit(tx.update)
    for i in range(2):
      updates, state = step(grads(i), state, params)
      for u in jax.tree.leaves(updates):
        assert u.dtype == dtype
        assert np.all(np.isfinite(np.asarray(u)))
      params = optax.apply_updates(params, updates)
    assert all(p.dtype == dtype for p in jax.tree.leaves(params))
    # The momentum buffer follows the params (no silent float32 copy).
    assert all(x.dtype == dtype for x in jax.tree.leaves(state) if x.dtype != jnp.int32)


@by_name
def test_multisteps(opt):
  params, grads = _tree_problem()
  inner = opt.make()
  tx = optax.MultiSteps(inner, every_k_schedule=4)
  step = jax.jit(tx.update)
  state, s_big = tx.init(params), inner.init(params)
  p, p_big = params, params
  for i in range(8):
    g = grads(i) if i < 4 else grads(i + 10)
    updates, state = step(g, state, p)
    if i % 4 != 3:
      for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(u, np.zeros_like(u))
    else:
      window = [grads(j) if j < 4 else grads(j + 10) for j in range(i - 3, i + 1)]
      mean = jax.tree.map(lambda *xs: sum(xs) / 4, *window)
      u_big, s_big = inner.update(mean, s_big, p_big)
      # MultiSteps' running mean rounds differently from sum / 4: a few ulps, so
      # rtol 1e-6 with a floor of 1e-6 * max|u| per leaf (momentum cancellation).
      for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(u_big)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(b))))
      p_big = optax.apply_updates(p_big, u_big)
    p = optax.apply_updates(p, updates)


@by_name
def test_apply_if_finite(opt):
  params, grads = _tree_problem()
  inner = opt.make()
  tx = optax.apply_if_finite(inner, max_consecutive_errors=3)
  step = jax.jit(tx.update)
  state = tx.init(params)
  bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), grads(0))
  updates, state = step(bad, state, params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, np.zeros_like(u))
  assert int(state.notfinite_count) == 1
  updates, state = step(grads(1), state, params)
  expected, _ = inner.update(grads(1), inner.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, expected)


@by_name
def test_optax_masked(opt):
  params, grads = _tree_problem()
  mask = {"w": True, "b": False, "v": [True]}
  tx = optax.masked(opt.make(), mask)
  updates, _ = tx.update(grads(0), tx.init(params), params)
  np.testing.assert_array_equal(updates["b"], grads(0)["b"])  # passes through
  sub = {"w": params["w"], "v": params["v"]}
  inner = opt.make()
  expected, _ = inner.update({"w": grads(0)["w"], "v": grads(0)["v"]}, inner.init(sub), sub)
  np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-6)
  np.testing.assert_allclose(updates["v"][0], expected["v"][0], rtol=1e-6)


@by_name
@pytest.mark.parametrize("wrapper", ["partition", "multi_transform"])
def test_optax_partition(opt, wrapper):
  if not hasattr(optax, wrapper):  # the same test runs through optax.multi_transform
    pytest.skip(f"optax.{wrapper} is new in optax 0.2.5; this is optax {optax.__version__}")
  params, grads = _tree_problem()
  labels = {"w": "lars", "b": "frozen", "v": ["lars"]}
  tx = getattr(optax, wrapper)({"lars": opt.make(), "frozen": optax.set_to_zero()}, labels)
  step = jax.jit(tx.update)
  state = tx.init(params)
  inner, sub = opt.make(), {"w": params["w"], "v": params["v"]}
  s_sub, p, p_sub = inner.init(sub), params, sub
  for i in range(2):
    g = grads(i)
    updates, state = step(g, state, p)
    u_sub, s_sub = inner.update({"w": g["w"], "v": g["v"]}, s_sub, p_sub)
    np.testing.assert_array_equal(updates["b"], np.zeros(2))
    np.testing.assert_allclose(updates["w"], u_sub["w"], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(updates["v"][0], u_sub["v"][0], rtol=1e-6, atol=1e-8)
    p, p_sub = optax.apply_updates(p, updates), optax.apply_updates(p_sub, u_sub)


@by_name
def test_tree_map_params(opt):
  params, grads = _tree_problem()
  tx = opt.make(learning_rate=optax.linear_schedule(1.0, 0.0, 10))
  state = tx.init(params)
  _, state = tx.update(grads(0), state, params)
  same = tree_map_params(tx, lambda v: v, state)
  jax.tree.map(np.testing.assert_array_equal, same, state)
  # Only params-shaped state (the momentum buffer) is mapped; counts are not.
  zeroed = tree_map_params(tx, jnp.zeros_like, state)
  counts = lambda s: [int(x) for x in jax.tree.leaves(s) if x.dtype == jnp.int32]  # noqa: E731
  assert counts(zeroed) == counts(state) and set(counts(state)) == {1}
  buffers = [x for x in jax.tree.leaves(zeroed) if x.dtype != jnp.int32]
  assert buffers and not any(np.any(np.asarray(b)) for b in buffers)


@by_name
def test_init_on_shape_dtype_struct(opt):
  params, grads = _tree_problem()
  schedules = {"learning_rate": optax.linear_schedule(1.0, 0.1, 10)}  # counts in the state
  if "weight_decay" in opt.kwargs:
    schedules["weight_decay"] = optax.constant_schedule(1e-4)
  tx = opt.make(**schedules)
  concrete = tx.init(params)
  abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  shapes = jax.eval_shape(tx.init, params)
  chex.assert_trees_all_equal_shapes_and_dtypes(shapes, concrete)
  direct = tx.init(abstract_params)  # no concrete params needed
  chex.assert_trees_all_equal_shapes_and_dtypes(direct, concrete)
  jax.tree.map(np.testing.assert_array_equal, direct, concrete)
  updates, _ = tx.update(grads(0), direct, params)
  assert jax.tree.structure(updates) == jax.tree.structure(params)
