"""Tests for lars_jax.config (LARSConfig, OptimizerConfig) and lars_jax.schedules.

Every field is checked by the numbers it produces: the built transformation is run for
a few steps on a small Flax-like tree and compared with the transformation built by
hand (explicit masks / labels), and a changed field must change the numbers. Schedules
are compared with NumPy references written from the formulas in the issue.
Tolerances: rtol 1e-6, atol 1e-7 between two float32 runs of the same arithmetic.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pydantic
import pytest
import yaml
from compat import OPTAX_VERSION

import lars_jax
from lars_jax import LARSConfig, OptimizerConfig, schedules, tf_lars, torch_lars
from lars_jax.config import (
  ConfigKeyError,
  ConstantSchedule,
  PiecewiseSchedule,
  RestrictionError,
  WarmupCosineSchedule,
  WarmupPolynomialSchedule,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "configs"
EXAMPLE = ROOT / "examples" / "resnet50_mlperf_lars.yaml"
RTOL, ATOL = 1e-6, 1e-7
STEPS = 3


def _params():
  rng = np.random.default_rng(0)

  def a(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)

  return {
    "backbone": {"cls_token": a(1, 4), "dense": {"kernel": a(4, 5), "bias": a(5)}},
    "norm": {"scale": a(5), "bias": a(5)},
    # A 2-D bias: excluded by exclude_bias_from_weight_decay, not by the ndim rule.
    "head": {"kernel": a(5, 3), "bias": a(1, 3)},
  }


PARAMS = _params()
GRADS = [
  jax.tree.map(
    lambda p, i=i: jnp.asarray(np.random.default_rng(10 + i).normal(size=p.shape), jnp.float32),
    PARAMS,
  )
  for i in range(STEPS)
]

# Default exclusions on PARAMS: last component 'bias' or ndim <= 1.
DECAY = {
  "backbone": {"cls_token": True, "dense": {"kernel": True, "bias": False}},
  "norm": {"scale": False, "bias": False},
  "head": {"kernel": True, "bias": False},
}
EXCLUDED_PATTERNS = ["dense/bias$", "^norm/", "head/bias$"]  # the same set, for tf_lars


def _run(tx, steps=STEPS):
  params, state, out = PARAMS, tx.init(PARAMS), []
  for g in GRADS[:steps]:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


def assert_same(tx, ref, steps=STEPS):
  for a, b in zip(_run(tx, steps), _run(ref, steps)):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL), a, b)


def assert_differs(tx, other):
  a, b = _run(tx), _run(other)
  gap = max(
    float(jnp.max(jnp.abs(x - y)))
    for s, t in zip(a, b)
    for x, y in zip(*map(jax.tree.leaves, (s, t)))
  )
  assert gap > 1e-5, "the field did not change the numbers"


def _by_path(tree):
  return dict(zip(jax.tree.leaves(lars_jax.masks.tree_paths(tree)), jax.tree.leaves(tree)))


def _labels(**groups):
  """A labels tree for optax.multi_transform: {path: label}, default label 'rest'."""
  paths = lars_jax.masks.tree_paths(PARAMS)
  return jax.tree.map(lambda p: next((k for k, v in groups.items() if p in v), "rest"), paths)


# ----------------------------------------------------------------------------
# Schedules vs NumPy references.


def np_poly(c, base, warmup, total, end, power):
  if warmup and c <= warmup:
    return base * c / warmup
  d = total - warmup + 1
  return end + (base - end) * (1 - min(c - warmup, d) / d) ** power


def np_cosine(c, base, warmup, total, end):
  if c < warmup:
    return base * c / warmup
  t = min(c - warmup, total - warmup) / (total - warmup)
  return end + (base - end) * 0.5 * (1 + math.cos(math.pi * t))


def np_piecewise(c, base, boundaries, factors, warmup):
  f = ([1.0] + list(factors))[sum(c >= b for b in boundaries)]
  return base * f * (c / warmup if c < warmup else 1.0)


@pytest.mark.parametrize(
  "cfg, ref",
  [
    (
      WarmupPolynomialSchedule(warmup_steps=5, total_steps=20, end_value=1e-4),
      lambda c: np_poly(c, 2.5, 5, 20, 1e-4, 2.0),
    ),
    (
      WarmupPolynomialSchedule(warmup_steps=0, total_steps=9, end_value=0.1, power=1.5),
      lambda c: np_poly(c, 2.5, 0, 9, 0.1, 1.5),
    ),
    (
      WarmupCosineSchedule(warmup_steps=4, total_steps=12, end_value=0.01),
      lambda c: np_cosine(c, 2.5, 4, 12, 0.01),
    ),
    (
      WarmupCosineSchedule(total_steps=7),
      lambda c: np_cosine(c, 2.5, 0, 7, 0.0),
    ),
    (
      PiecewiseSchedule(warmup_steps=2, boundaries=[4, 7], factors=[0.1, 0.0]),
      lambda c: np_piecewise(c, 2.5, [4, 7], [0.1, 0.0], 2),
    ),
    (ConstantSchedule(warmup_steps=3), lambda c: 2.5 * min(c / 3, 1.0)),
  ],
)
def test_schedule_values(cfg, ref):
  fn = cfg.build(2.5)
  got = [float(fn(c)) for c in range(25)]
  np.testing.assert_allclose(got, [ref(c) for c in range(25)], rtol=1e-6, atol=1e-7)


def test_mlperf_schedule_hand_values():
  # base 10, W = 2, T = 4 -> D = 3: 0, 5, 10, 10*(2/3)^2, 10*(1/3)^2, 0 (end 0).
  fn = schedules.warmup_polynomial_decay(10.0, 2, 4, end_value=0.0, power=2.0)
  np.testing.assert_allclose(
    [float(fn(c)) for c in range(6)], [0, 5, 10, 40 / 9, 10 / 9, 0], rtol=1e-6, atol=1e-6
  )
  assert ConstantSchedule().build(0.3) == 0.3  # a float: no schedule state


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(kind="warmup_cosine", warmup_steps=5, total_steps=5), "must exceed `warmup_steps`"),
    (dict(kind="warmup_polynomial", total_steps=0), "total_steps"),
    (dict(kind="warmup_polynomial", total_steps=5, power=0), "power"),
    (dict(kind="warmup_polynomial", total_steps=5, end_value=-1.0), "end_value"),
    (dict(kind="piecewise", boundaries=[3, 2], factors=[1, 1]), "strictly increasing"),
    (dict(kind="piecewise", boundaries=[3], factors=[1, 1]), "same length"),
    (dict(kind="piecewise", warmup_steps=3, boundaries=[3], factors=[1]), "greater than"),
    (dict(kind="constant", warmup_steps=-1), "warmup_steps"),
    (dict(kind="constant", warmup_steps=1.5), "warmup_steps"),
    (dict(kind="cosine"), "does not match any of the expected tags"),
    (dict(kind="constant", total_steps=3), "total_steps"),
  ],
)
def test_schedule_errors(kwargs, match):
  with pytest.raises(pydantic.ValidationError, match=match) as e:
    OptimizerConfig(kind="sgd", lr=0.1, schedule=kwargs)
  assert "schedule" in str(e.value)


# ----------------------------------------------------------------------------
# LARSConfig


def test_lars_config_defaults_are_model_gardens():
  assert LARSConfig().as_dict() == {
    "name": "LARS",
    "momentum": 0.9,
    "eeta": 0.001,
    "weight_decay_rate": 0.0,
    "nesterov": False,
    "classic_momentum": True,
    "exclude_from_weight_decay": None,
    "exclude_from_layer_adaptation": None,
    "clipnorm": None,
    "clipvalue": None,
    "global_clipnorm": None,
  }


LR = 0.7
BASE_TF = dict(weight_decay_rate=1e-2)


@pytest.mark.parametrize(
  "field, value",
  [
    ("momentum", 0.5),
    ("eeta", 0.01),
    ("weight_decay_rate", 0.2),
    ("nesterov", True),
    ("classic_momentum", False),
    ("exclude_from_weight_decay", ["bias", "norm/"]),
    ("exclude_from_layer_adaptation", ["head/"]),
    ("clipnorm", 0.5),
    ("clipvalue", 0.1),
    ("global_clipnorm", 1.0),
  ],
)
def test_lars_config_field_reaches_tf_lars(field, value):
  kwargs = {**BASE_TF, field: value}
  cfg = LARSConfig(**kwargs)
  assert_same(cfg.build(LR), tf_lars(LR, **kwargs))
  assert_differs(cfg.build(LR), LARSConfig(**BASE_TF).build(LR))


def test_lars_config_build_with_schedule():
  sched = schedules.warmup_polynomial_decay(1.0, 1, 3, end_value=0.0)
  cfg = LARSConfig(weight_decay_rate=1e-3, exclude_from_weight_decay=["bias"])
  assert_same(
    cfg.build(sched), tf_lars(sched, weight_decay_rate=1e-3, exclude_from_weight_decay=["bias"])
  )
  assert_differs(cfg.build(sched), cfg.build(1.0))


def test_lars_config_name_round_trips():
  cfg = LARSConfig(name="LARS_backbone")
  assert LARSConfig.from_yaml(cfg.to_yaml()).name == "LARS_backbone"


@pytest.mark.parametrize(
  "kwargs, field, match",
  [
    (dict(momentum=1.0), "momentum", "less than 1"),
    (dict(momentum=-0.1), "momentum", "greater than or equal to 0"),
    (dict(eeta=0.0), "eeta", "greater than 0"),
    (dict(weight_decay_rate=-1e-4), "weight_decay_rate", "greater than or equal to 0"),
    (dict(weight_decay_rate=float("nan")), "weight_decay_rate", "finite"),
    (dict(clipnorm=0.0), "clipnorm", "greater than 0"),
    (dict(clipvalue=-1.0), "clipvalue", "greater than 0"),
    (dict(global_clipnorm=0), "global_clipnorm", "greater than 0"),
    (dict(exclude_from_weight_decay=["bias", "(bn"]), "exclude_from_weight_decay", "regular"),
    (dict(exclude_from_layer_adaptation=["[bn"]), "exclude_from_layer_adaptation", "regular"),
    (dict(nesterov="yes"), "nesterov", "valid boolean"),
    (dict(momentum="0.9"), "momentum", "valid number"),
    (dict(clipnorm=1.0, global_clipnorm=1.0), "global_clipnorm", "cannot both be set"),
    (dict(momentun=0.9), "momentun", "Did you mean 'momentum'"),
  ],
)
def test_lars_config_bad_values(kwargs, field, match):
  with pytest.raises(pydantic.ValidationError, match=match) as e:
    LARSConfig(**kwargs)
  assert field in str(e.value)


def test_lars_config_single_pattern_and_tuples():
  cfg = LARSConfig(exclude_from_weight_decay="bias")
  assert cfg.exclude_from_weight_decay == ("bias",)
  assert cfg.as_dict()["exclude_from_weight_decay"] == ["bias"]  # plain YAML lists


def test_lars_config_yaml_round_trip(tmp_path):
  cfg = LARSConfig(
    name="x",
    momentum=0.8,
    eeta=0.002,
    weight_decay_rate=1e-5,
    nesterov=True,
    classic_momentum=False,
    exclude_from_weight_decay=["bias"],
    exclude_from_layer_adaptation=["norm"],
    clipnorm=None,
    clipvalue=3.0,
    global_clipnorm=2.0,
  )
  assert LARSConfig.from_yaml(cfg.to_yaml()) == cfg
  assert LARSConfig.from_dict(cfg.as_dict()) == cfg
  path = tmp_path / "lars.yaml"
  cfg.to_yaml(path)
  assert LARSConfig.from_yaml(path) == cfg  # a Path
  assert LARSConfig.from_yaml(str(path)) == cfg  # a str path
  assert LARSConfig.from_yaml(cfg.to_yaml()).as_dict() == cfg.as_dict()


def test_lars_config_from_model_garden_yaml():
  cfg = LARSConfig.from_yaml(CONFIGS / "lars_simclr.yaml")
  assert cfg.weight_decay_rate == 1e-6  # '1e-6' is a float, not the string YAML 1.1 makes
  assert cfg.exclude_from_weight_decay == ("batch_normalization", "bias")
  tree = {
    "conv": {"kernel": PARAMS["head"]["kernel"], "bias": jnp.ones(3)},
    "batch_normalization": {"gamma": jnp.ones(3)},
  }
  tx = cfg.build(0.1)
  tx.update(tree, tx.init(tree), tree)
  assert yaml.safe_load("a: 1e-6")["a"] == "1e-6"  # PyYAML's own loader is left alone


def test_yaml_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.yaml"):
    LARSConfig.from_yaml(str(tmp_path / "missing.yaml"))
  with pytest.raises(ValueError, match="mapping"):
    LARSConfig.from_yaml("- 1\n- 2\n")
  with pytest.raises(ValueError, match="not valid YAML"):
    LARSConfig.from_yaml("momentum: [0.9\n")
  with pytest.raises(TypeError, match="file path or YAML text"):
    LARSConfig.from_yaml(3)
  with pytest.raises(TypeError, match="mapping"):
    LARSConfig.from_dict([("momentum", 0.9)])
  with pytest.raises(pydantic.ValidationError, match="momentum"):
    LARSConfig.from_yaml("momentum: 1.5\n")
  assert LARSConfig.from_yaml("") == LARSConfig()


# -- override, lock, validate ------------------------------------------------------


def test_override_returns_a_new_config():
  cfg = LARSConfig()
  new = cfg.override({"momentum": 0.5, "exclude_from_weight_decay": ["bias"]})
  assert (cfg.momentum, cfg.exclude_from_weight_decay) == (0.9, None)
  assert (new.momentum, new.exclude_from_weight_decay) == (0.5, ("bias",))
  assert isinstance(new, LARSConfig) and new is not cfg


def test_override_takes_a_config_or_a_mapping():
  other = LARSConfig(momentum=0.5, eeta=0.01)
  assert LARSConfig().override(other) == other
  with pytest.raises(TypeError, match="override needs a mapping, got list"):
    LARSConfig().override([("momentum", 0.5)])


def test_strict_override_rejects_unknown_keys():
  with pytest.raises(ConfigKeyError, match="'momentun' does not exist") as e:
    LARSConfig().override({"momentun": 0.5})
  msg = str(e.value)
  assert "Did you mean 'momentum'" in msg and "eeta" in msg and "is_strict=False" in msg
  assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
  with pytest.raises(pydantic.ValidationError, match="eeta"):
    LARSConfig().override({"eeta": -1.0})  # known key, bad value


def test_non_strict_override_adds_keys():
  cfg = LARSConfig().override({"train": {"batch_size": 4096, "epochs": 100}}, is_strict=False)
  assert cfg.train == {"batch_size": 4096, "epochs": 100}
  assert cfg.as_dict()["train"]["epochs"] == 100
  # Added keys survive YAML with is_strict=False; a strict read rejects them.
  assert LARSConfig.from_yaml(cfg.to_yaml(), is_strict=False) == cfg
  with pytest.raises(pydantic.ValidationError, match="unknown key 'train'"):
    LARSConfig.from_yaml(cfg.to_yaml())
  # Nested merge; strictness applies inside added dicts too.
  assert cfg.override({"train": {"epochs": 10}}).train == {"batch_size": 4096, "epochs": 10}
  with pytest.raises(ConfigKeyError, match="'train.epoch' does not exist.*Did you mean 'epochs'"):
    cfg.override({"train": {"epoch": 10}})
  assert cfg.override({"train": {"lr": 1.0}}, is_strict=False).train["lr"] == 1.0
  assert cfg.build(0.1) is not None  # added keys do not reach build


def test_lock():
  cfg = LARSConfig()
  cfg.momentum = 0.5  # unlocked: assignment works, and is validated
  with pytest.raises(pydantic.ValidationError, match="momentum"):
    cfg.momentum = 1.5
  assert cfg.lock() is cfg and cfg.is_locked
  with pytest.raises(ValueError, match="LARSConfig is locked: cannot set 'eeta'"):
    cfg.eeta = 0.01
  assert cfg.eeta == 0.001
  with pytest.raises(ValueError, match="cannot be deleted"):
    del cfg.eeta
  new = cfg.override({"eeta": 0.01})  # a locked config still gives modified copies
  assert new.eeta == 0.01 and not new.is_locked and cfg.eeta == 0.001 and cfg.is_locked
  with pytest.raises(ConfigKeyError, match="no field 'momentun'.*Did you mean 'momentum'"):
    LARSConfig().momentun = 0.9


@pytest.mark.parametrize(
  "restriction, holds",
  [
    ("momentum == 0.9", True),
    ("momentum == eeta", False),
    ("momentum != eeta", True),
    ("momentum != 0.9", False),
    ("eeta < momentum", True),
    ("momentum < eeta", False),
    ("momentum <= 0.9", True),
    ("momentum <= 0.8", False),
    ("momentum > eeta", True),
    ("eeta > momentum", False),
    ("momentum >= 0.9", True),
    ("eeta >= 0.9", False),
    ("train.warmup <= train.total", True),
    ("train.total <= train.warmup", False),
    ("clipnorm == None", True),
    ("nesterov == False", True),
    ("name == 'LARS'", True),
    ("name != 'LARS'", False),
  ],
)
def test_validate_restrictions(restriction, holds):
  cfg = LARSConfig().override({"train": {"warmup": 5, "total": 90}}, is_strict=False)
  if holds:
    assert cfg.validate([restriction]) is cfg
  else:
    with pytest.raises(RestrictionError, match="does not hold") as e:
      cfg.validate([restriction])
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert restriction in str(e.value)


def test_validate_errors():
  cfg = LARSConfig().override({"train": {"warmup": 5}}, is_strict=False)
  with pytest.raises(KeyError, match="'momentun'.*Did you mean 'momentum'"):
    cfg.validate(["momentun < 1"])
  with pytest.raises(KeyError, match="'train' has no key 'total'"):
    cfg.validate(["train.warmup < train.total"])
  with pytest.raises(ValueError, match="one binary relation"):
    cfg.validate(["0 < momentum < 1"])
  with pytest.raises(ValueError, match="one binary relation"):
    cfg.validate(["momentum"])
  with pytest.raises(ValueError, match="both sides"):
    cfg.validate(["< 1"])
  with pytest.raises(ValueError, match="cannot compare"):
    cfg.validate(["clipnorm < 1"])  # None < 1
  with pytest.raises(TypeError, match="strings"):
    cfg.validate([1])


# ----------------------------------------------------------------------------
# OptimizerConfig: every field, by the numbers.


def _lars(lr=LR, wd=1e-2, mask=DECAY, adapt=DECAY, **kw):
  return lars_jax.lars(lr, weight_decay=wd, weight_decay_mask=mask, trust_ratio_mask=adapt, **kw)


def test_lars_kind_default_exclusions():
  cfg = OptimizerConfig(kind="lars", lr=LR, weight_decay=1e-2)
  assert_same(cfg.build(), _lars())
  assert_differs(cfg.build(), lars_jax.lars(LR, weight_decay=1e-2))


def test_lr_and_weight_decay_reach_the_optimizer():
  cfg = OptimizerConfig(kind="lars", lr=0.3, weight_decay=0.05)
  assert_same(cfg.build(), _lars(lr=0.3, wd=0.05))
  assert_differs(cfg.build(), cfg.override({"lr": 0.6}).build())
  assert_differs(cfg.build(), cfg.override({"weight_decay": 0.5}).build())


@pytest.mark.parametrize(
  "options",
  [
    {"momentum": 0.5},
    {"nesterov": True},
    {"trust_coefficient": 0.01},
    {"eps": 0.5},
    {"momentum": 0.0, "trust_coefficient": 0.002, "eps": 1e-3, "nesterov": False},
  ],
)
def test_lars_options(options):
  cfg = OptimizerConfig(kind="lars", lr=LR, weight_decay=1e-2, options=options)
  assert_same(cfg.build(), _lars(**options))
  assert_differs(cfg.build(), OptimizerConfig(kind="lars", lr=LR, weight_decay=1e-2).build())


def test_exclusion_fields():
  base = dict(kind="lars", lr=LR, weight_decay=1e-2)
  # Bias rule off: head/bias (2-D) is decayed and adapted; the 1-D biases stay excluded.
  no_bias = {**DECAY, "head": {"kernel": True, "bias": True}}
  cfg = OptimizerConfig(**base, exclude_bias_from_weight_decay=False)
  assert_same(cfg.build(), _lars(mask=no_bias, adapt=no_bias))
  # ndim rule off: norm/scale (1-D, not a bias) is decayed; 1-D biases stay excluded.
  no_ndim = {**DECAY, "norm": {"scale": True, "bias": False}}
  cfg = OptimizerConfig(**base, exclude_normalization_params_from_weight_decay=False)
  assert_same(cfg.build(), _lars(mask=no_ndim, adapt=no_ndim))
  # Both off: everything.
  cfg = OptimizerConfig(
    **base,
    exclude_bias_from_weight_decay=False,
    exclude_normalization_params_from_weight_decay=False,
  )
  assert_same(cfg.build(), _lars(mask=True, adapt=True))
  # Adaptation no longer follows weight decay: all adapted, same decay mask.
  cfg = OptimizerConfig(**base, exclude_from_adaptation_follows_weight_decay=False)
  assert_same(cfg.build(), _lars(adapt=True))
  assert_differs(cfg.build(), OptimizerConfig(**base).build())


def test_rules_by_name_pattern_and_value():
  cfg = OptimizerConfig(
    kind="lars",
    lr=LR,
    weight_decay=1e-2,
    param_group_modifiers=[
      {"pattern": "backbone/.*", "scale": 0.5},
      {"name": "backbone.cls_token", "scale": 0.1},  # '.'-joined
      {"name": "head/kernel", "value": 0.2},  # '/'-joined
      {"name": "backbone/dense/kernel", "value": 0.0},  # no decay -> no adaptation
    ],
  )
  labels = _labels(
    cls=["backbone/cls_token"],
    dense=["backbone/dense/kernel"],
    dbias=["backbone/dense/bias"],
    head=["head/kernel"],
  )
  off = False
  ref = optax.multi_transform(
    {
      "cls": lars_jax.lars(LR * 0.05, weight_decay=1e-2),  # scales multiply
      "dense": lars_jax.lars(LR * 0.5, weight_decay=0.0, trust_ratio_mask=off),
      "dbias": lars_jax.lars(LR * 0.5, weight_decay=0.0, trust_ratio_mask=off),
      "head": lars_jax.lars(LR, weight_decay=0.2),
      "rest": lars_jax.lars(LR, weight_decay=0.0, trust_ratio_mask=off),
    },
    labels,
  )
  assert_same(cfg.build(), ref)
  groups = cfg.param_groups(PARAMS)
  assert groups["backbone/cls_token"] == {"lr_scale": 0.05, "weight_decay": 0.01, "adapt": True}
  assert groups["backbone/dense/kernel"]["adapt"] is False
  assert groups["head/kernel"]["weight_decay"] == 0.2


def test_name_rule_dot_and_slash_are_the_same():
  a = OptimizerConfig(
    kind="lars", lr=LR, param_group_modifiers=[{"name": "head.kernel", "scale": 3.0}]
  )
  b = OptimizerConfig(
    kind="lars", lr=LR, param_group_modifiers=[{"name": "head/kernel", "scale": 3.0}]
  )
  assert_same(a.build(), b.build())
  assert_differs(a.build(), OptimizerConfig(kind="lars", lr=LR).build())


def test_clipping_fields():
  cfg = OptimizerConfig(kind="lars", lr=LR, weight_decay=1e-2, clip_grad_value=0.5)
  assert_same(cfg.build(), optax.chain(optax.clip(0.5), _lars()))
  assert_differs(cfg.build(), OptimizerConfig(kind="lars", lr=LR, weight_decay=1e-2).build())
  cfg = OptimizerConfig(kind="sgd", lr=LR, clip_grad_norm=1.0)  # grad norms are ~5
  assert_same(cfg.build(), optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(LR)))
  assert_differs(cfg.build(), OptimizerConfig(kind="sgd", lr=LR).build())
  cfg = OptimizerConfig(kind="sgd", lr=LR, clip_grad_value=0.5, clip_grad_norm=1.0)
  assert_same(
    cfg.build(), optax.chain(optax.clip(0.5), optax.clip_by_global_norm(1.0), optax.sgd(LR))
  )


@pytest.mark.parametrize(
  "schedule, ref",
  [
    ({"kind": "constant", "warmup_steps": 2}, lambda c: LR * min(c / 2, 1.0)),
    (
      {"kind": "warmup_cosine", "warmup_steps": 1, "total_steps": 3, "end_value": 0.01},
      lambda c: np_cosine(c, LR, 1, 3, 0.01),
    ),
    (
      {"kind": "warmup_polynomial", "warmup_steps": 1, "total_steps": 3, "power": 3.0},
      lambda c: np_poly(c, LR, 1, 3, 1e-4, 3.0),
    ),
    (
      {"kind": "piecewise", "boundaries": [1, 2], "factors": [0.5, 0.1]},
      lambda c: np_piecewise(c, LR, [1, 2], [0.5, 0.1], 0),
    ),
  ],
)
def test_schedule_reaches_each_group(schedule, ref):
  cfg = OptimizerConfig(
    kind="lars",
    lr=LR,
    weight_decay=1e-2,
    schedule=schedule,
    param_group_modifiers=[{"name": "head/kernel", "scale": 0.1}],
  )
  np_lr = lambda c: ref(int(c))  # noqa: E731 (eager runs: the count is concrete)
  ref_tx = optax.multi_transform(
    {
      "head": lars_jax.lars(lambda c: 0.1 * np_lr(c), weight_decay=1e-2),
      "rest": _lars(lr=np_lr),
    },
    _labels(head=["head/kernel"]),
  )
  assert_same(cfg.build(), ref_tx)
  assert_differs(cfg.build(), OptimizerConfig(kind="lars", lr=LR, weight_decay=1e-2).build())


def test_weight_decay_schedule_scales_every_decayed_group():
  cfg = OptimizerConfig(
    kind="lars",
    lr=LR,
    weight_decay=0.1,
    weight_decay_schedule={"kind": "piecewise", "boundaries": [1], "factors": [0.2]},
    param_group_modifiers=[{"name": "head/kernel", "value": 0.5}],
  )
  wd = lambda c: 0.1 if int(c) < 1 else 0.02  # noqa: E731
  ref = optax.multi_transform(
    {
      "head": lars_jax.lars(LR, weight_decay=lambda c: 5.0 * wd(c)),  # 0.5 / 0.1
      "rest": _lars(wd=wd),
    },
    _labels(head=["head/kernel"]),
  )
  assert_same(cfg.build(), ref)
  assert_differs(cfg.build(), cfg.override({"weight_decay_schedule": None}).build())


def test_every_field_yaml_by_the_numbers():
  cfg = OptimizerConfig.from_yaml(CONFIGS / "lars_every_field.yaml")
  lr = lambda c: np_poly(int(c), 0.5, 1, 4, 0.01, 2.0)  # noqa: E731
  wdf = lambda c: 1.0 if int(c) < 2 else 0.5  # noqa: E731 (factor of the wd schedule)
  opts = dict(momentum=0.8, nesterov=True, trust_coefficient=0.02, eps=1e-6)
  ref = optax.chain(
    optax.clip(0.8),
    optax.clip_by_global_norm(2.5),
    optax.multi_transform(
      {
        "cls": lars_jax.lars(lambda c: 0.25 * lr(c), weight_decay=lambda c: 0.01 * wdf(c), **opts),
        "head": lars_jax.lars(lambda c: 2.0 * lr(c), weight_decay=lambda c: 0.05 * wdf(c), **opts),
        "hbias": lars_jax.lars(
          lambda c: 2.0 * lr(c), weight_decay=0.0, trust_ratio_mask=False, **opts
        ),
        "kernel": lars_jax.lars(lr, weight_decay=lambda c: 0.01 * wdf(c), **opts),
        "rest": lars_jax.lars(lr, weight_decay=0.0, trust_ratio_mask=False, **opts),
      },
      _labels(
        cls=["backbone/cls_token"],
        head=["head/kernel"],
        hbias=["head/bias"],
        kernel=["backbone/dense/kernel"],
      ),
    ),
  )
  assert_same(cfg.build(), ref)
  assert OptimizerConfig.from_yaml(cfg.to_yaml()) == cfg


def test_tf_lars_kind():
  cfg = OptimizerConfig(kind="tf_lars", lr=LR, weight_decay=1e-2, options={"momentum": 0.8})
  ref = tf_lars(
    LR, momentum=0.8, weight_decay_rate=1e-2, exclude_from_weight_decay=EXCLUDED_PATTERNS
  )
  assert_same(cfg.build(), ref)
  cfg = OptimizerConfig(
    kind="tf_lars",
    lr=LR,
    weight_decay=1e-2,
    options={"classic_momentum": False, "eeta": 0.01, "nesterov": True},
  )
  ref = tf_lars(
    LR,
    weight_decay_rate=1e-2,
    classic_momentum=False,
    eeta=0.01,
    nesterov=True,
    exclude_from_weight_decay=EXCLUDED_PATTERNS,
  )
  assert_same(cfg.build(), ref)
  # Adapt everything: classic tf_lars is lars with eps = 0 (trust coefficient = eeta).
  cfg = OptimizerConfig(
    kind="tf_lars", lr=LR, weight_decay=1e-2, exclude_from_adaptation_follows_weight_decay=False
  )
  assert_same(cfg.build(), _lars(adapt=True, eps=0.0, trust_coefficient=0.001))


def test_torch_lars_kind():
  opts = {"momentum": 0.9, "dampening": 0.1, "eps": 1e-6, "trust_coefficient": 0.02}
  cfg = OptimizerConfig(kind="torch_lars", lr=LR, weight_decay=1e-2, options=opts)
  assert_same(cfg.build(), torch_lars(LR, weight_decay=1e-2, weight_decay_mask=DECAY, **opts))


@pytest.mark.parametrize("kind", ["tf_lars", "torch_lars"])
def test_preset_kinds_with_weight_decay_schedule(kind):
  cfg = OptimizerConfig(
    kind=kind,
    lr=LR,
    weight_decay=0.1,
    weight_decay_schedule={"kind": "warmup_polynomial", "total_steps": 3, "end_value": 0.0},
  )
  wd = lambda c: np_poly(int(c), 0.1, 0, 3, 0.0, 2.0)  # noqa: E731
  if kind == "tf_lars":
    ref = tf_lars(LR, weight_decay_rate=wd, exclude_from_weight_decay=EXCLUDED_PATTERNS)
  else:
    ref = torch_lars(LR, weight_decay=wd, weight_decay_mask=DECAY)
  assert_same(cfg.build(), ref)
  assert_differs(cfg.build(), cfg.override({"weight_decay_schedule": None}).build())


def test_optax_kinds():
  cfg = OptimizerConfig(
    kind="sgd", lr=LR, weight_decay=1e-2, options={"momentum": 0.9, "nesterov": True}
  )
  ref = optax.chain(
    optax.add_decayed_weights(1e-2, mask=DECAY), optax.sgd(LR, momentum=0.9, nesterov=True)
  )
  assert_same(cfg.build(), ref)
  cfg = OptimizerConfig(kind="adamw", lr=1e-2, weight_decay=0.1, options={"b1": 0.8})
  assert_same(cfg.build(), optax.adamw(1e-2, b1=0.8, weight_decay=0.1, mask=DECAY))
  # adamw's own default weight decay (1e-4) is not used: the config's 0 is.
  cfg = OptimizerConfig(kind="optax.adamw", lr=1e-2)
  assert_same(cfg.build(), optax.adamw(1e-2, weight_decay=0.0))
  if OPTAX_VERSION < (0, 2, 7):  # test_optax_kinds_decay_schedule_needs_optax_0_2_7
    return
  cfg = OptimizerConfig(
    kind="adamw",
    lr=1e-2,
    weight_decay=0.1,
    weight_decay_schedule={"kind": "warmup_cosine", "total_steps": 3},
  )
  wd = lambda c: np_cosine(int(c), 0.1, 0, 3, 0.0)  # noqa: E731
  assert_same(cfg.build(), optax.adamw(1e-2, weight_decay=wd, mask=DECAY))


def test_optax_kinds_decay_schedule_needs_optax_0_2_7():
  make = lambda: OptimizerConfig(  # noqa: E731
    kind="adamw",
    lr=1e-2,
    weight_decay=0.1,
    weight_decay_schedule={"kind": "warmup_cosine", "total_steps": 3},
  )
  if OPTAX_VERSION >= (0, 2, 7):
    make().build()  # test_optax_kinds checks its numbers
  else:  # optax.add_decayed_weights cannot apply a schedule: say so when configured
    with pytest.raises(pydantic.ValidationError, match=r"optax 0\.2\.7.*pip install"):
      make()


def test_vit_adamw_yaml():
  cfg = OptimizerConfig.from_yaml(CONFIGS / "vit_adamw_rules.yaml")
  lr = lambda c: np_cosine(int(c), 1e-3, 2, 10, 1e-6)  # noqa: E731
  ref = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.multi_transform(
      {
        "cls": optax.adamw(lambda c: 0.1 * lr(c), weight_decay=0.0),
        "bb": optax.adamw(lambda c: 0.1 * lr(c), weight_decay=0.05, mask=DECAY),
        "rest": optax.adamw(lr, weight_decay=0.05, mask=DECAY),
      },
      _labels(cls=["backbone/cls_token"], bb=["backbone/dense/kernel", "backbone/dense/bias"]),
    ),
  )
  assert_same(cfg.build(), ref)


def test_mlperf_example_yaml():
  cfg = OptimizerConfig.from_yaml(EXAMPLE)
  assert (cfg.kind, cfg.lr, cfg.weight_decay, cfg.options["momentum"]) == (
    "lars",
    29.0,
    1e-4,
    0.929,
  )
  sched = cfg.schedule.build(cfg.lr)
  # The submission's step arithmetic: 18 and 64 epochs of 39.25 steps at batch 32768.
  assert (cfg.schedule.warmup_steps, cfg.schedule.total_steps) == (706.5, 2512)
  steps = [0, 1, 360, 706, 707, 708, 1500, 2511, 2512, 2513, 3000]
  np.testing.assert_allclose(
    [float(sched(c)) for c in steps],
    [np_poly(c, 29.0, 706.5, 2512, 1e-4, 2.0) for c in steps],
    rtol=1e-6,
    # optax.linear_schedule computes the warm-up as peak - peak * (1 - c / W): float32
    # rounding of up to one ulp of the peak (1.9e-6) where the rate is still small.
    atol=float(np.spacing(np.float32(29.0))),
  )
  resnet = {
    "conv_init": {"kernel": jnp.ones((7, 7, 3, 8))},
    "bn_init": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
    "head": {"kernel": jnp.ones((8, 10)), "bias": jnp.zeros(10)},
  }
  groups = cfg.param_groups(resnet)
  assert {p for p, g in groups.items() if g["adapt"]} == {"conv_init/kernel", "head/kernel"}
  assert {p for p, g in groups.items() if g["weight_decay"]} == {"conv_init/kernel", "head/kernel"}
  tx = cfg.build()
  tx.update(resnet, tx.init(resnet), resnet)


def test_under_jit_equals_eager():
  cfg = OptimizerConfig.from_yaml(CONFIGS / "lars_every_field.yaml")
  tx = cfg.build()
  state = tx.init(PARAMS)
  step = jax.jit(tx.update)
  u_jit, s_jit = step(GRADS[0], state, PARAMS)
  u, s = tx.update(GRADS[0], state, PARAMS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL), u_jit, u)


# ----------------------------------------------------------------------------
# OptimizerConfig: errors.


@pytest.mark.parametrize(
  "kwargs, field, match",
  [
    (dict(kind="sdg"), "kind", "Did you mean 'sgd'"),
    (dict(kind="scale_by_adam"), "kind", "is not an optimizer"),
    (dict(lr=0.0), "lr", "greater than 0"),
    (dict(lr="1e-3"), "lr", "valid number"),
    (dict(weight_decay=-0.1), "weight_decay", "greater than or equal to 0"),
    (dict(clip_grad_value=0.0), "clip_grad_value", "greater than 0"),
    (dict(clip_grad_norm=-1.0), "clip_grad_norm", "greater than 0"),
    (dict(options={"momentun": 0.9}), "options.momentun", "Did you mean 'momentum'"),
    (dict(options={"weight_decay": 0.1}), "options.weight_decay", "sets 'weight_decay' itself"),
    (dict(options={"trust_ratio_mask": False}), "options.trust_ratio_mask", "follows_weight_decay"),
    (dict(options={"momentum": 1.0}), "options", "momentum"),
    (dict(kind="sgd", options={"momentum": 1.5}), "options", "momentum"),
    (
      dict(kind="tf_lars", options={"global_clipnorm": 1.0}),
      "options.global_clipnorm",
      "clip_grad_norm",
    ),
    (dict(kind="tf_lars", options={"exclude_from_weight_decay": ["b"]}), "options", "exclude_"),
    (
      dict(param_group_modifiers=[{"name": "a", "scale": 1.0, "value": 0.1}]),
      "param_group_modifiers.0",
      "exactly one of `scale`",
    ),
    (
      dict(param_group_modifiers=[{"value": 0.1}]),
      "param_group_modifiers.0",
      "exactly one of `name`",
    ),
    (
      dict(param_group_modifiers=[{"name": "a", "pattern": "a", "value": 0.1}]),
      "param_group_modifiers.0",
      "exactly one of `name`",
    ),
    (
      dict(param_group_modifiers=[{"pattern": "(", "value": 0.1}]),
      "param_group_modifiers.0",
      "regular expression",
    ),
    (
      dict(param_group_modifiers=[{"name": "a", "scale": -1.0}]),
      "param_group_modifiers.0.scale",
      "greater than or equal to 0",
    ),
    (
      dict(param_group_modifiers=[{"name": "a", "lr_scale": 1.0}]),
      "param_group_modifiers.0.lr_scale",
      "unknown key 'lr_scale' for ParamGroupRule. Did you mean 'scale'",
    ),
    (dict(weight_decay_schedule={"kind": "constant"}), "weight_decay_schedule", "weight_decay > 0"),
    (
      dict(kind="torch_lars", exclude_from_adaptation_follows_weight_decay=False),
      "exclude_from_adaptation_follows_weight_decay",
      "torch_lars",
    ),
    (dict(exclude_bias_from_weight_decay="no"), "exclude_bias_from_weight_decay", "valid boolean"),
    (dict(scheduel={"kind": "constant"}), "scheduel", "Did you mean 'schedule'"),
  ],
)
def test_optimizer_config_bad_values(kwargs, field, match):
  kwargs = {"kind": "lars", "lr": 0.1, **kwargs}
  with pytest.raises(pydantic.ValidationError, match=match) as e:
    OptimizerConfig(**kwargs)
  assert field in str(e.value)


@pytest.mark.parametrize(
  "rules, match",
  [
    (
      [{"name": "backbone.cls_tokn", "scale": 0.1}],
      r"param_group_modifiers\[0\] \(name='backbone.cls_tokn', scale=0.1\): only_names: "
      r"pattern 'backbone\[\./\]cls_tokn' matches no parameter \(match='fullmatch'",
    ),
    (
      [{"name": "head/kernel", "scale": 1.0}, {"pattern": "backbone", "scale": 0.1}],
      r"param_group_modifiers\[1\] \(pattern='backbone', scale=0.1\): .*'backbone' matches no "
      r"parameter \(match='fullmatch'.*'backbone/cls_token'",
    ),
    (
      [{"name": "head/kernel", "value": 0.1}, {"pattern": "head/k.*", "value": 0.2}],
      r"Two rules set the weight decay of 'head/kernel': param_group_modifiers\[0\] "
      r"\(name='head/kernel', value=0.1\) and param_group_modifiers\[1\]",
    ),
    (
      [{"name": "norm/scale", "value": 0.1}],
      r"param_group_modifiers\[0\].*'norm/scale'.*exclude_normalization_params_from_weight_decay",
    ),
    (
      [{"name": "head/bias", "value": 0.0}],
      r"param_group_modifiers\[0\].*'head/bias'.*exclude_bias_from_weight_decay",
    ),
  ],
)
def test_rule_errors_at_first_init(rules, match):
  cfg = OptimizerConfig(kind="lars", lr=0.1, weight_decay=1e-2, param_group_modifiers=rules)
  tx = cfg.build()  # rules need the params: nothing raises before init
  with pytest.raises(ValueError, match=match):
    tx.init(PARAMS)


def test_axis_name_is_for_lars_kinds():
  with pytest.raises(ValueError, match="axis_name is for the LARS kinds"):
    OptimizerConfig(kind="sgd", lr=0.1).build(axis_name="data").init(PARAMS)
  tx = OptimizerConfig(kind="lars", lr=0.1).build(axis_name=None)
  tx.init(PARAMS)


def test_keep_stats_is_for_lars_kinds_and_set_in_build():
  with pytest.raises(ValueError, match="keep_stats is for the LARS kinds; 'sgd' takes none"):
    OptimizerConfig(kind="sgd", lr=0.1).build(keep_stats=True)
  with pytest.raises(pydantic.ValidationError, match=r"pass it to build\(keep_stats=True\)"):
    OptimizerConfig(kind="lars", lr=0.1, options={"keep_stats": True})


# -- OptimizerConfig: keep_stats (issue 18 item 9) --------------------------------------
# Statistics must name exactly the leaves the optimizer adapted (issue 18 item 1); with the
# default exclusions some groups of the partition adapt nothing.


def _stats_keys(paths):
  return {f"{stat}/{p}" for p in paths for stat in ("param_norm", "update_norm", "trust_ratio")}


@pytest.mark.parametrize("kind", ["lars", "tf_lars", "torch_lars"])
def test_optimizer_config_keep_stats_with_default_exclusions(kind):
  cfg = OptimizerConfig(kind=kind, lr=LR, weight_decay=1e-2)
  adapted = [p for p, g in cfg.param_groups(PARAMS).items() if g["adapt"]]
  assert sorted(adapted) == ["backbone/cls_token", "backbone/dense/kernel", "head/kernel"]
  tx = cfg.build(keep_stats=True)
  updates, state = tx.update(GRADS[0], tx.init(PARAMS), PARAMS)
  stats = lars_jax.layer_stats(state)
  assert set(stats) == _stats_keys(adapted)
  # The numbers, from NumPy: |w|, |g + wd w| (Flash: |g|), and the ratio applied.
  w, g = _by_path(PARAMS), _by_path(GRADS[0])
  for p in adapted:
    wn = np.linalg.norm(np.float64(w[p]))
    un = np.linalg.norm(np.float64(g[p]) + (0.0 if kind == "torch_lars" else 1e-2) * w[p])
    ratio = 1e-3 * wn / (un + (1e-2 * wn if kind == "torch_lars" else 0.0))
    np.testing.assert_allclose(
      [stats[f"param_norm/{p}"], stats[f"update_norm/{p}"], stats[f"trust_ratio/{p}"]],
      [wn, un, ratio],
      rtol=1e-6,
      err_msg=p,
    )
  # Statistics change nothing else.
  assert_same(tx, cfg.build())


def test_lars_config_keep_stats_with_exclusions():
  cfg = LARSConfig(weight_decay_rate=1e-2, exclude_from_weight_decay=["bias", "^norm/"])
  tx = cfg.build(0.1, keep_stats=True)
  _, state = tx.update(GRADS[0], tx.init(PARAMS), PARAMS)
  stats = lars_jax.layer_stats(state)
  adapted = ["backbone/cls_token", "backbone/dense/kernel", "head/kernel"]
  assert set(stats) == _stats_keys(adapted)
  w, g = _by_path(PARAMS), _by_path(GRADS[0])
  for p in adapted:
    wn = np.linalg.norm(np.float64(w[p]))
    un = np.linalg.norm(np.float64(g[p]) + 1e-2 * w[p])
    np.testing.assert_allclose(stats[f"trust_ratio/{p}"], 1e-3 * wn / un, rtol=1e-6, err_msg=p)
  assert_same(tx, cfg.build(0.1))


# -- OptimizerConfig: built once, rules through lars_jax.masks ------------------------


def test_groups_are_resolved_once_per_params_structure(monkeypatch):
  calls = []
  resolve = OptimizerConfig._resolve
  monkeypatch.setattr(
    OptimizerConfig, "_resolve", lambda self, t: calls.append(1) or resolve(self, t)
  )
  cfg = OptimizerConfig.from_yaml(CONFIGS / "lars_every_field.yaml")
  tx = cfg.build()
  _run(tx)  # init and three updates
  jax.jit(tx.update)(GRADS[0], tx.init(PARAMS), PARAMS)
  assert len(calls) == 1  # the old build() resolved the rules at every init and update
  tx.init({**PARAMS, "extra": jnp.ones(3)})  # another structure: resolved for it
  assert len(calls) == 2


def test_rules_may_name_leaves_of_other_partitions():
  # As for lars_jax.masks, a rule that selects only another partition's leaves (an
  # optax.MaskedNode in this partition) is not a typo.
  cfg = OptimizerConfig(
    kind="lars",
    lr=LR,
    weight_decay=1e-2,
    param_group_modifiers=[{"name": "head/kernel", "scale": 0.5}],
  )
  labels = _labels(frozen=["head/kernel", "head/bias"])
  tx = optax.multi_transform({"rest": cfg.build(), "frozen": optax.set_to_zero()}, labels)
  ref = optax.multi_transform({"rest": _lars(), "frozen": optax.set_to_zero()}, labels)
  assert_same(tx, ref)


# -- OptimizerConfig: override, lock, YAML -------------------------------------------


def test_optimizer_config_override_merges_nested():
  cfg = OptimizerConfig.from_yaml(CONFIGS / "lars_every_field.yaml")
  new = cfg.override({"schedule": {"total_steps": 10}, "options": {"momentum": 0.5}})
  assert new.schedule.total_steps == 10 and new.schedule.warmup_steps == 1
  assert new.options == {**cfg.options, "momentum": 0.5}
  assert cfg.schedule.total_steps == 4 and cfg.options["momentum"] == 0.8  # unchanged
  # A new option key is allowed in a strict override (options are checked by kind).
  assert (
    cfg.override({"options": {"accumulator_dtype": "float32"}}).options["accumulator_dtype"]
    == "float32"
  )
  with pytest.raises(pydantic.ValidationError, match="options.momentun"):
    cfg.override({"options": {"momentun": 0.5}})
  # A schedule of another kind replaces the old one whole.
  new = cfg.override({"schedule": {"kind": "constant"}})
  assert new.schedule == ConstantSchedule()
  with pytest.raises(ConfigKeyError, match="'schedule.total_step' does not exist.*'total_steps'"):
    cfg.override({"schedule": {"total_step": 10}})
  new = cfg.override({"param_group_modifiers": [{"name": "head.kernel", "scale": 0.5}]})
  assert len(new.param_group_modifiers) == 1  # lists are replaced


def test_optimizer_config_lock_and_frozen_parts():
  cfg = OptimizerConfig.from_yaml(CONFIGS / "lars_every_field.yaml").lock()
  with pytest.raises(ValueError, match="locked"):
    cfg.lr = 0.1
  with pytest.raises(pydantic.ValidationError, match="frozen"):
    cfg.schedule.total_steps = 10
  with pytest.raises(pydantic.ValidationError, match="frozen"):
    cfg.param_group_modifiers[0].scale = 1.0
  assert isinstance(cfg.param_group_modifiers, tuple)
  cfg.validate(["schedule.warmup_steps < schedule.total_steps", "weight_decay <= lr"])
  with pytest.raises(RestrictionError, match="schedule.total_steps"):
    cfg.validate(["schedule.total_steps > 100"])


def test_optimizer_config_yaml_round_trip(tmp_path):
  for name in ("lars_every_field.yaml", "vit_adamw_rules.yaml"):
    cfg = OptimizerConfig.from_yaml(CONFIGS / name)
    assert OptimizerConfig.from_yaml(cfg.to_yaml()) == cfg
    assert OptimizerConfig.from_dict(cfg.as_dict()) == cfg
    cfg.to_yaml(tmp_path / name)
    assert OptimizerConfig.from_yaml(tmp_path / name) == cfg
  assert (
    OptimizerConfig.from_yaml(EXAMPLE).to_yaml()
    == OptimizerConfig.from_yaml(OptimizerConfig.from_yaml(EXAMPLE).to_yaml()).to_yaml()
  )


# ----------------------------------------------------------------------------
# The optimizers without the `config` extra.


def test_optimizers_need_neither_pydantic_nor_yaml():
  # A fresh interpreter where `import pydantic` / `import yaml` fail, as when the
  # `config` extra is not installed.
  code = textwrap.dedent(
    """
    import sys
    for name in ("pydantic", "pydantic_core", "yaml"):
      sys.modules[name] = None  # makes `import name` raise ImportError
    import jax.numpy as jnp
    import lars_jax
    from lars_jax import schedules
    tx, p = lars_jax.lars(0.1), {"w": jnp.ones((2, 2))}
    tx.update(p, tx.init(p), p)
    print(float(schedules.warmup_polynomial_decay(1.0, 1, 3)(1)))
    for name in ("LARSConfig", "OptimizerConfig"):
      try:
        getattr(lars_jax, name)
      except ImportError as e:
        print(name, "ImportError:", e)
    """
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  run = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
  )
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert lines[0] == "1.0"
  for name, line in zip(("LARSConfig", "OptimizerConfig"), lines[1:], strict=True):
    assert line.startswith(f"{name} ImportError:"), run.stdout
    assert re.search(r"pip install ['\"]?lars_jax\[config\]", line), line
