"""lars_jax.masks: paths on every tree users hand us, builders, resolve, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compat import nnx_list, nnx_value

import lars_jax
from lars_jax import masks

flax = pytest.importorskip("flax")
from flax import nnx, struct  # noqa: E402
from flax.core import FrozenDict  # noqa: E402


def _cnn():
  return {
    "conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.zeros(4)},
    "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
    "head": {"kernel": jnp.ones((4, 2))},
  }


def _leaf_paths(tree):
  return jax.tree.leaves(masks.tree_paths(tree))


# ----------------------------------------------------------------------------
# Paths


def test_paths_nested_dict():
  assert masks.tree_paths(_cnn()) == {
    "bn": {"bias": "bn/bias", "scale": "bn/scale"},
    "conv": {"bias": "conv/bias", "kernel": "conv/kernel"},
    "head": {"kernel": "head/kernel"},
  }


def test_paths_frozen_dict():
  tree = FrozenDict({"params": {"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}})
  assert _leaf_paths(tree) == ["params/Dense_0/bias", "params/Dense_0/kernel"]
  assert masks.exclude_names("bias")(tree) == FrozenDict(
    {"params": {"Dense_0": {"bias": False, "kernel": True}}}
  )


class _Block(nnx.Module):
  def __init__(self, rngs):
    self.layers = nnx_list([nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 2, rngs=rngs)])
    self.norm = nnx.LayerNorm(2, rngs=rngs)


def test_paths_nnx_state():
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  assert _leaf_paths(state) == ["bias", "kernel"]  # no '/value' from the Param wrapper
  state = nnx.state(_Block(nnx.Rngs(0)), nnx.Param)
  assert _leaf_paths(state) == [
    "layers/0/bias",
    "layers/0/kernel",
    "layers/1/bias",
    "layers/1/kernel",
    "norm/bias",
    "norm/scale",
  ]
  # Anchored patterns see the names users see.
  bits = masks.resolve(masks.exclude_names(r"bias$", r"^norm/"), state)
  assert bits == [False, True, False, True, False, False]
  bits = masks.resolve(masks.only_names(r"layers/\d+/kernel", match="fullmatch"), state)
  assert bits == [False, True, False, True, False, False]


def test_lars_on_nnx_state_with_name_mask():
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  grads = jax.tree.map(jnp.ones_like, params)
  tx = lars_jax.add_decayed_weights(0.5, mask=masks.exclude_names("bias"))
  u, _ = tx.update(grads, tx.init(params), params)
  v = nnx_value
  np.testing.assert_array_equal(v(u["bias"]), v(grads["bias"]))
  np.testing.assert_allclose(v(u["kernel"]), 1.0 + 0.5 * v(params["kernel"]), rtol=1e-6)
  tx = lars_jax.lars(0.1, weight_decay=1e-4, weight_decay_mask=masks.min_ndim(2))
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  nnx.update(model, optax.apply_updates(params, u))  # the result is still a State


def test_paths_lists_and_tuples():
  tree = {"layers": [jnp.ones(1), (jnp.ones(2), jnp.ones((2, 2)))], "out": (jnp.ones(3),)}
  assert _leaf_paths(tree) == ["layers/0", "layers/1/0", "layers/1/1", "out/0"]
  assert masks.min_ndim(2)(tree) == {"layers": [False, (False, True)], "out": (False,)}


@struct.dataclass
class _FlaxParams:
  kernel: jax.Array
  bias: jax.Array


@dataclasses.dataclass
class _JaxParams:
  embedding: jax.Array
  scale: jax.Array


jax.tree_util.register_dataclass(_JaxParams, data_fields=["embedding", "scale"], meta_fields=[])


def test_paths_dataclasses():
  flax_tree = {"dense": _FlaxParams(kernel=jnp.ones((2, 2)), bias=jnp.zeros(2))}
  assert _leaf_paths(flax_tree) == ["dense/kernel", "dense/bias"]
  assert masks.exclude_names("bias")(flax_tree) == {"dense": _FlaxParams(kernel=True, bias=False)}
  jax_tree = [_JaxParams(embedding=jnp.ones((5, 2)), scale=jnp.ones(2))]
  assert _leaf_paths(jax_tree) == ["0/embedding", "0/scale"]
  assert masks.resolve(masks.only_names("embedding"), jax_tree) == [True, False]
  # End to end through lars (optax.masked inside optax.lars would need the same).
  tx = lars_jax.lars(0.1, weight_decay=0.1, weight_decay_mask=masks.only_names("embedding"))
  grads = jax.tree.map(jnp.ones_like, jax_tree)
  u, _ = tx.update(grads, tx.init(jax_tree), jax_tree)
  assert isinstance(u[0], _JaxParams)


# ----------------------------------------------------------------------------
# Builders


def test_exclude_names_search():
  m = masks.exclude_names("bias")(_cnn())
  assert m == {
    "bn": {"bias": False, "scale": True},
    "conv": {"bias": False, "kernel": True},
    "head": {"kernel": True},
  }
  m = masks.exclude_names("bias", "bn/")(_cnn())
  assert m["bn"] == {"bias": False, "scale": False} and m["conv"]["kernel"] is True


def test_only_names_search_and_fullmatch():
  assert masks.resolve(masks.only_names("conv"), _cnn()) == [False, False, True, True, False]
  assert masks.resolve(masks.only_names(r".*/kernel", match="fullmatch"), _cnn()) == [
    False,
    False,
    False,
    True,
    True,
  ]
  # 'kernel' appears in paths, but no path *is* 'kernel'.
  with pytest.raises(ValueError, match="'kernel' matches no parameter"):
    masks.only_names("kernel", match="fullmatch")(_cnn())
  assert masks.resolve(masks.exclude_names("kernel", match="search"), _cnn()) == [
    True,
    True,
    True,
    False,
    False,
  ]


def test_unmatched_pattern_names_pattern_and_lists_paths():
  with pytest.raises(ValueError, match=r"pattern 'batchnorm' matches no parameter") as e:
    masks.exclude_names("bias", "batchnorm")(_cnn())
  assert "'conv/kernel'" in str(e.value) and "'bn/scale'" in str(e.value)
  many = {f"layer{i}": jnp.ones(2) for i in range(10)}
  with pytest.raises(ValueError, match=r"\(and 4 more\)"):
    masks.only_names("nothing")(many)


def test_invalid_patterns():
  with pytest.raises(ValueError, match=r"exclude_names.*'\(bias' is not a valid regular"):
    masks.exclude_names("(bias")
  with pytest.raises(TypeError, match="patterns must be strings"):
    masks.only_names(3)
  with pytest.raises(ValueError, match="`match`"):
    masks.exclude_names("bias", match="exact")


def test_min_ndim():
  tree = {"s": jnp.array(1.0), "v": jnp.ones(3), "m": jnp.ones((2, 2)), "t": jnp.ones((1, 1, 1))}
  assert masks.resolve(masks.min_ndim(0), tree) == [True] * 4
  assert masks.min_ndim(1)(tree) == {"m": True, "s": False, "t": True, "v": True}
  assert masks.min_ndim(2)(tree) == {"m": True, "s": False, "t": True, "v": False}
  assert masks.min_ndim(3)(tree) == {"m": False, "s": False, "t": True, "v": False}
  # Works on abstract params too (init on ShapeDtypeStruct).
  abstract = jax.eval_shape(lambda: tree)
  assert masks.min_ndim(2)(abstract) == masks.min_ndim(2)(tree)
  for bad in [-1, 1.5, True]:
    with pytest.raises(ValueError, match="`n`"):
      masks.min_ndim(bad)


def test_all_of_any_of():
  name, rank = masks.exclude_names("bn/"), masks.min_ndim(2)
  assert masks.resolve(masks.all_of(name, rank), _cnn()) == [False, False, False, True, True]
  assert masks.resolve(masks.any_of(masks.only_names("bn/scale"), rank), _cnn()) == [
    False,
    True,
    False,
    True,
    True,
  ]
  # Mixed forms: a prefix tree, a bool, a callable.
  prefix = {"bn": False, "conv": True, "head": True}
  assert masks.resolve(masks.all_of(prefix, True, rank), _cnn()) == [
    False,
    False,
    False,
    True,
    True,
  ]
  assert masks.resolve(masks.any_of(False, prefix), _cnn()) == [False, False, True, True, True]
  with pytest.raises(ValueError, match="at least one mask"):
    masks.all_of()


# ----------------------------------------------------------------------------
# resolve


def test_resolve_forms():
  tree = _cnn()
  assert masks.resolve(None, tree) == [True] * 5
  assert masks.resolve(True, tree) == [True] * 5
  assert masks.resolve(False, tree) == [False] * 5
  assert masks.resolve(np.bool_(False), tree) == [False] * 5
  assert masks.resolve(
    {"bn": False, "conv": {"bias": False, "kernel": True}, "head": True}, tree
  ) == [
    False,
    False,
    False,
    True,
    True,
  ]
  assert masks.resolve(lambda p: {"bn": True, "conv": False, "head": False}, tree) == [
    True,
    True,
    False,
    False,
    False,
  ]
  assert masks.resolve(masks.exclude_names("bias"), {}) == []


@pytest.mark.parametrize(
  "mask",
  [
    {"bn": True, "conv": True},  # a key missing
    {"bn": True, "conv": True, "head": True, "extra": True},  # a key too many
    [True, True, True],  # a list for a dict
    {"bn": {"scale": True}, "conv": True, "head": True},  # a subtree missing a key
  ],
)
def test_resolve_structure_mismatch(mask):
  with pytest.raises(ValueError, match=r"`mask` does not match the parameter tree"):
    masks.resolve(mask, _cnn())
  tx = lars_jax.add_decayed_weights(0.1, mask=mask)
  with pytest.raises(ValueError, match="`mask`"):
    tx.init(_cnn())
  with pytest.raises(ValueError, match="`mask`"):
    lars_jax.scale_by_trust_ratio(mask=lambda p: mask).init(_cnn())


@pytest.mark.parametrize("leaf", [1, 1.0, "yes", jnp.array(True), np.array([True])])
def test_resolve_non_bool_leaves(leaf):
  with pytest.raises(TypeError, match="`mask` must hold Python bools"):
    masks.resolve({"bn": leaf, "conv": True, "head": True}, _cnn())


def test_value_dependent_mask_under_jit():
  value_mask = lambda p: jax.tree.map(lambda x: jnp.sum(x) > 0, p)  # noqa: E731
  tx = lars_jax.add_decayed_weights(0.1, mask=value_mask)
  params = _cnn()
  with pytest.raises(TypeError, match="not from values"):
    jax.jit(tx.update)(params, tx.init(params), params)


def test_builders_work_in_optax_masked():
  params = _cnn()
  ours = optax.masked(optax.add_decayed_weights(0.1), masks.exclude_names("bias"))
  u, _ = ours.update(params, ours.init(params), params)
  np.testing.assert_array_equal(u["conv"]["bias"], params["conv"]["bias"])
  np.testing.assert_allclose(u["conv"]["kernel"], 1.1 * params["conv"]["kernel"], rtol=1e-6)


# ----------------------------------------------------------------------------
# Callable masks inside optax wrappers


def _grads(params, i):
  return jax.tree.map(lambda x: jnp.sin(x + 0.3 * i + jnp.arange(x.size).reshape(x.shape)), params)


def test_callable_masks_in_inject_hyperparams():
  params = _cnn()
  mask_wd, mask_tr = masks.exclude_names("bias", "bn/"), masks.min_ndim(2)
  kwargs = dict(learning_rate=0.5, weight_decay=1e-2, trust_coefficient=0.01, momentum=0.9)
  plain = lars_jax.lars(**kwargs, weight_decay_mask=mask_wd, trust_ratio_mask=mask_tr)
  injected = optax.inject_hyperparams(
    lars_jax.lars, static_args=("weight_decay_mask", "trust_ratio_mask")
  )(**kwargs, weight_decay_mask=mask_wd, trust_ratio_mask=mask_tr)
  assert set(injected.init(params).hyperparams) == {
    "learning_rate",
    "weight_decay",
    "trust_coefficient",
    "eps",
    "momentum",
  }
  p1 = p2 = params
  s1, s2 = plain.init(params), injected.init(params)
  step1, step2 = jax.jit(plain.update), jax.jit(injected.update)
  for i in range(3):
    u1, s1 = step1(_grads(p1, i), s1, p1)
    u2, s2 = step2(_grads(p2, i), s2, p2)
    jax.tree.map(np.testing.assert_array_equal, u1, u2)
    if i == 0:  # the masks took effect: bn/scale (1-D, 'bn/') got a plain SGD step
      np.testing.assert_allclose(u2["bn"]["scale"], -0.5 * _grads(p2, 0)["bn"]["scale"], rtol=1e-6)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)


def test_callable_masks_in_multisteps():
  params = _cnn()
  mask = masks.all_of(masks.exclude_names("bias"), masks.min_ndim(2))
  inner = lars_jax.lars(0.5, weight_decay=1e-2, weight_decay_mask=mask, trust_ratio_mask=mask)
  tx = optax.MultiSteps(inner, every_k_schedule=2)
  state = tx.init(params)
  grads = [_grads(params, i) for i in range(2)]
  u0, state = jax.jit(tx.update)(grads[0], state, params)
  u1, state = jax.jit(tx.update)(grads[1], state, params)
  for leaf in jax.tree.leaves(u0):
    np.testing.assert_array_equal(leaf, jnp.zeros_like(leaf))
  mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  expected, _ = inner.update(mean, inner.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), u1, expected)


# ----------------------------------------------------------------------------
# Name masks inside partitions (optax.masked / multi_transform / partition)


def _backbone_and_head():
  """A frozen-backbone layout: every bias is in the backbone, the head holds none."""
  return {
    "backbone": {
      "conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.full(4, 0.5)},
      "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
    },
    "head": {"kernel": jnp.linspace(-1.0, 1.0, 8).reshape(4, 2), "scale": jnp.ones(2)},
  }


def _head_lars(weight_decay_mask, trust_ratio_mask):
  return lars_jax.lars(
    0.5,
    weight_decay=0.1,
    trust_coefficient=0.01,
    weight_decay_mask=weight_decay_mask,
    trust_ratio_mask=trust_ratio_mask,
  )


# The same masks written out by hand, over the whole tree (the backbone entries are ignored
# inside a partition): decay every head leaf, adapt only the head kernel.
_HEAD_BOOL_MASKS = (
  {"backbone": False, "head": {"kernel": True, "scale": True}},
  {"backbone": False, "head": {"kernel": True, "scale": False}},
)
# By name: 'bias' matches only backbone (masked-out) leaves in the head's partition.
_HEAD_NAME_MASKS = (
  masks.exclude_names("bias"),
  masks.all_of(masks.exclude_names("bias"), masks.only_names("kernel"), masks.min_ndim(2)),
)
_BACKBONE_BOOL_MASKS = (
  {"backbone": {"conv": {"kernel": True, "bias": False}, "bn": False}, "head": False},
  {"backbone": {"conv": {"kernel": True, "bias": False}, "bn": False}, "head": False},
)
_BACKBONE_NAME_MASKS = (masks.exclude_names("bias", "bn/"), masks.min_ndim(2))


def _labels(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: path[0].key, params)


def _wrapped(wrapper, by_name):
  """`wrapper` around LARS partitions whose masks are given by name or as bools."""
  head = _head_lars(*(_HEAD_NAME_MASKS if by_name else _HEAD_BOOL_MASKS))
  if wrapper == "masked":  # a per-leaf mask keeps the backbone's paths (see the next test)
    return optax.masked(head, masks.only_names("^head/"))
  wd_mask, tr_mask = _BACKBONE_NAME_MASKS if by_name else _BACKBONE_BOOL_MASKS
  backbone = lars_jax.lars(
    0.1,
    weight_decay=0.2,
    trust_coefficient=0.02,
    weight_decay_mask=wd_mask,
    trust_ratio_mask=tr_mask,
  )
  factory = getattr(optax, wrapper)
  return factory({"backbone": backbone, "head": head}, _labels)


@pytest.mark.parametrize(
  "wrapper",
  ["masked", "multi_transform"] + (["partition"] if hasattr(optax, "partition") else []),
)
def test_name_masks_inside_partitions_equal_bool_masks(wrapper):
  params = _backbone_and_head()
  by_name, by_bool = _wrapped(wrapper, True), _wrapped(wrapper, False)
  p1 = p2 = params
  s1, s2 = by_name.init(params), by_bool.init(params)
  step1, step2 = jax.jit(by_name.update), jax.jit(by_bool.update)
  for i in range(3):
    u1, s1 = step1(_grads(p1, i), s1, p1)
    u2, s2 = step2(_grads(p2, i), s2, p2)
    jax.tree.map(np.testing.assert_array_equal, u1, u2)
    if i == 0:  # the masks took effect: head/scale is decayed but not adapted
      g, w = _grads(params, 0)["head"]["scale"], params["head"]["scale"]
      np.testing.assert_allclose(u1["head"]["scale"], -0.5 * (g + 0.1 * w), rtol=1e-6)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)


def test_name_mask_on_a_tree_with_masked_nodes():
  tree = _backbone_and_head()
  tree["backbone"] = jax.tree.map(lambda _: optax.MaskedNode(), tree["backbone"])
  # Only the partition's own leaves get a value; the placeholders stay in place.
  assert masks.exclude_names("bias")(tree) == {
    "backbone": {
      "bn": {"bias": optax.MaskedNode(), "scale": optax.MaskedNode()},
      "conv": {"bias": optax.MaskedNode(), "kernel": optax.MaskedNode()},
    },
    "head": {"kernel": True, "scale": True},
  }
  assert masks.resolve(masks.only_names("kernel"), tree) == [True, False]
  assert masks.resolve(masks.any_of(masks.only_names("conv/"), masks.min_ndim(2)), tree) == [
    True,
    False,
  ]
  assert masks.tree_paths(tree)["head"] == {"kernel": "head/kernel", "scale": "head/scale"}


def test_typo_in_a_partition_is_still_an_error():
  # 'bais' matches nothing, even counting the other partition's (masked-out) paths.
  head = _head_lars(masks.exclude_names("bais"), True)
  tx = optax.multi_transform({"backbone": optax.set_to_zero(), "head": head}, _labels)
  with pytest.raises(ValueError, match=r"pattern 'bais' matches no parameter") as e:
    tx.init(_backbone_and_head())
  # The paths shown include the other partitions', where the user's names live.
  assert "'backbone/conv/bias'" in str(e.value) and "'head/kernel'" in str(e.value)


def test_prefix_mask_of_optax_masked_hides_paths_and_the_error_says_so():
  # A prefix mask puts one MaskedNode where the whole backbone was: 'bias' is nowhere.
  tx = optax.masked(
    _head_lars(masks.exclude_names("bias"), True), {"backbone": False, "head": True}
  )
  with pytest.raises(ValueError, match=r"'bias' matches no parameter.*'backbone', ") as e:
    tx.init(_backbone_and_head())
  assert "per-leaf mask" in str(e.value) and "masks.only_names('^head/')" in str(e.value)


def test_typo_in_top_level_lars_is_still_an_error():
  tx = lars_jax.lars(0.1, weight_decay=1e-4, weight_decay_mask=masks.exclude_names("bais"))
  with pytest.raises(
    ValueError,
    match=r"exclude_names: pattern 'bais' matches no parameter \(match='search' over '/'-joined "
    r"paths\). Parameter paths look like: 'backbone/bn/bias', ",
  ) as e:
    tx.init(_backbone_and_head())
  assert "MaskedNode" not in str(e.value)  # no partition, no note about partitions


# ----------------------------------------------------------------------------
# Masks called on a step counter (optax.inject_hyperparams without static_args)

_BUILT_MASKS = [
  masks.exclude_names("bias"),
  masks.only_names("kernel", match="search"),
  masks.min_ndim(2),
  masks.all_of({"bn": False, "conv": True, "head": True}),  # not even a callable inside
  masks.any_of(False, masks.min_ndim(2)),
]


@pytest.mark.parametrize("mask", _BUILT_MASKS, ids=lambda m: m.__name__)
@pytest.mark.parametrize(
  "count", [jnp.zeros([], jnp.int32), 7, np.int64(3), np.array(2, np.uint8)], ids=type
)
def test_every_builder_rejects_a_step_counter(mask, count):
  with pytest.raises(
    TypeError, match=r"called with a step counter.*inject_hyperparams.*static_args"
  ):
    mask(count)
  with pytest.raises(TypeError, match="step counter"):  # traced, as in inject's update
    jax.jit(mask)(jnp.asarray(count))


def test_builders_accept_scalar_float_params():
  # A one-leaf params tree is a scalar too; only an integer scalar is a step counter.
  w = jnp.array(2.0)
  assert masks.min_ndim(0)(w) is True
  assert masks.exclude_names("bias")({"bias": w, "w": w}) == {"bias": False, "w": True}
  assert masks.all_of(True)(w) is True


_KW = dict(weight_decay=0.1, trust_coefficient=0.05)
_WD, _TR = masks.exclude_names("bias", "bn/"), masks.min_ndim(2)

# (factory, its other kwargs) for every public factory with a mask argument.
_MASKED_FACTORIES = [
  (lars_jax.lars, dict(learning_rate=0.5, momentum=0.9, **_KW)),
  (lars_jax.add_decayed_weights, dict(weight_decay=0.1)),
  (lars_jax.scale_by_trust_ratio, dict(trust_coefficient=0.05)),
  (lars_jax.scale_by_sum_norms_trust_ratio, dict(**_KW)),
  (lars_jax.torch_lars, dict(learning_rate=0.5, momentum=0.9, **_KW)),
]


def _mask_kwargs(factory):
  if factory is lars_jax.lars:
    return dict(weight_decay_mask=_WD, trust_ratio_mask=_TR)
  if factory is lars_jax.torch_lars:
    return dict(weight_decay_mask=_WD)
  return dict(mask=_WD)


def _same_steps(tx1, tx2, params, steps=3):
  p1 = p2 = params
  s1, s2 = tx1.init(params), tx2.init(params)
  step1, step2 = jax.jit(tx1.update), jax.jit(tx2.update)
  for i in range(steps):
    u1, s1 = step1(_grads(p1, i), s1, p1)
    u2, s2 = step2(_grads(p2, i), s2, p2)
    jax.tree.map(np.testing.assert_array_equal, u1, u2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)


@pytest.mark.parametrize(
  "factory, kwargs", _MASKED_FACTORIES, ids=lambda x: getattr(x, "__name__", "")
)
def test_factories_under_inject_hyperparams(factory, kwargs):
  params, mask_kwargs = _cnn(), _mask_kwargs(factory)
  # Without static_args inject calls the masks as schedules, on the step counter.
  with pytest.raises(TypeError, match=r"step counter.*static_args="):
    optax.inject_hyperparams(factory)(**kwargs, **mask_kwargs).init(params)
  # With them, the same numbers as the plain factory.
  injected = optax.inject_hyperparams(factory, static_args=tuple(mask_kwargs))(
    **kwargs, **mask_kwargs
  )
  _same_steps(factory(**kwargs, **mask_kwargs), injected, params)
  # ... and the masks took effect: bn/scale moves differently than with no mask.
  unmasked = factory(**kwargs)
  u_all, _ = unmasked.update(_grads(params, 0), unmasked.init(params), params)
  u_one, _ = injected.update(_grads(params, 0), injected.init(params), params)
  assert not np.allclose(u_all["bn"]["scale"], u_one["bn"]["scale"])


def test_tf_lars_and_larc_under_inject_hyperparams_need_no_static_args():
  # tf_lars takes pattern lists and larc an inner optimizer: inject keeps both as they are.
  params = _cnn()
  kw = dict(learning_rate=0.5, weight_decay_rate=0.1, eeta=0.05)
  tf = dict(exclude_from_weight_decay=["bias", "bn/"], exclude_from_layer_adaptation=["bn/"])
  _same_steps(
    lars_jax.tf_lars(**kw, **tf), optax.inject_hyperparams(lars_jax.tf_lars)(**kw, **tf), params
  )
  inner = lars_jax.lars(0.5, weight_decay_mask=_WD, trust_ratio_mask=_TR)
  kw = dict(learning_rate=0.5, weight_decay=0.1)
  _same_steps(
    lars_jax.larc(inner, **kw), optax.inject_hyperparams(lars_jax.larc)(inner, **kw), params
  )
