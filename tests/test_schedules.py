"""lars_jax.schedules: each schedule is its optax composition, value for value.

The NumPy formulas (against which the configs are also checked) are in test_config.py;
here each function is compared with the optax schedules it is documented to be, with a
max difference of exactly 0.0, eagerly and under jit, over the whole range of counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lars_jax import schedules


def _values(fn, n):
  eager = np.array([float(fn(c)) for c in range(n)])
  jitted = np.asarray(jax.jit(jax.vmap(fn))(jnp.arange(n)))
  return eager, jitted


def _assert_identical(fn, ref, n):
  for got, want in zip(_values(fn, n), _values(ref, n)):
    assert np.max(np.abs(got - want)) == 0.0


@pytest.mark.parametrize(
  "peak, warmup, total, end, power",
  [(29.0, 720, 2560, 1e-4, 2.0), (2.5, 5, 20, 1e-4, 2.0), (2.5, 0, 9, 0.1, 1.5), (4.0, 2, 5, 0, 1)],
)
def test_warmup_polynomial_decay_is_join_of_linear_and_polynomial(peak, warmup, total, end, power):
  decay_steps = total - warmup + 1
  decay = optax.polynomial_schedule(peak, end, power, transition_steps=decay_steps)
  pieces, boundaries = [decay], []
  if warmup:
    pieces, boundaries = [optax.linear_schedule(0.0, peak, warmup), decay], [warmup]
  two = optax.join_schedules(pieces, boundaries)
  three = optax.join_schedules(
    [*pieces, optax.constant_schedule(end)], [*boundaries, warmup + decay_steps]
  )
  fn = schedules.warmup_polynomial_decay(peak, warmup, total, end_value=end, power=power)
  _assert_identical(fn, three, total + 20)
  # The end piece only matters where optax's polynomial is NaN under jit (see below).
  for got, want in zip(_values(fn, total + 20), _values(two, total + 20)):
    finite = np.isfinite(want)
    assert np.max(np.abs(got[finite] - want[finite])) == 0.0


def test_fractional_power_stays_finite_past_the_end_under_jit():
  # optax.polynomial_schedule(..., power=1.5) alone gives NaN here under jit: XLA turns
  # 1 - count / 10 into 1 - count * 0.1 = -1.5e-8 at count 10.
  fn = schedules.warmup_polynomial_decay(2.5, 0, 9, end_value=0.1, power=1.5)
  eager, jitted = _values(fn, 40)
  assert np.all(np.isfinite(jitted)) and np.all(jitted[10:] == np.float32(0.1))
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)


@pytest.mark.parametrize("warmup", [0, 2])
def test_warmup_piecewise_constant_is_join_of_constants(warmup):
  pieces = [optax.constant_schedule(v) for v in (1.5, 1.5 * 0.1, 1.5 * 0.0, 1.5 * 0.01)]
  boundaries = [4, 7, 9]
  if warmup:
    pieces, boundaries = [optax.linear_schedule(0.0, 1.5, warmup), *pieces], [warmup, *boundaries]
  ref = optax.join_schedules(pieces, boundaries)
  fn = schedules.warmup_piecewise_constant(1.5, [4, 7, 9], [0.1, 0.0, 0.01], warmup_steps=warmup)
  _assert_identical(fn, ref, 14)


def test_mlperf_warmup_within_one_ulp_of_the_peak_formula():
  # The warm-up from optax.linear_schedule is peak - peak * (1 - c / W): at most one
  # float32 ulp of the peak from peak * c / W (the hand formula before the rewrite).
  fn = schedules.warmup_polynomial_decay(29.0, 720, 2560)
  got = np.array([float(fn(c)) for c in range(721)])
  np.testing.assert_allclose(
    got, 29.0 * np.arange(721) / 720, rtol=0, atol=np.spacing(np.float32(29))
  )


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: schedules.warmup_polynomial_decay(1.0, 5, 5), "must exceed `warmup_steps`"),
    (lambda: schedules.warmup_polynomial_decay(1.0, -1, 5), "warmup_steps"),
    (lambda: schedules.warmup_polynomial_decay(1.0, 0, 5, power=0), "power"),
    (lambda: schedules.warmup_polynomial_decay(float("nan"), 0, 5), "peak_value"),
    (lambda: schedules.warmup_piecewise_constant(1.0, [3, 2], [1, 1]), "strictly increasing"),
    (lambda: schedules.warmup_piecewise_constant(1.0, [3], [1, 1]), "same length"),
    (lambda: schedules.warmup_piecewise_constant(1.0, [3], [1], 3), "greater than"),
    (lambda: schedules.warmup_piecewise_constant(1.0, [3], [-1.0]), r"factors\[0\]"),
  ],
)
def test_argument_errors_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()
