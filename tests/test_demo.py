"""`python -m lars_jax.demo --quick` end to end, plus its small pieces."""

import json

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

import lars_jax  # noqa: E402
from lars_jax import demo  # noqa: E402

CHANCE = 0.1  # ten balanced classes


def _init_params():
  import jax
  import jax.numpy as jnp

  return demo.ResNet().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]


def _adapted_paths(params) -> set[str]:
  """Paths of the leaves the demo's LARS decays and adapts (not biases, not BatchNorm)."""
  import jax

  paths = jax.tree.leaves(lars_jax.masks.tree_paths(params))
  return {p for p, a in zip(paths, lars_jax.masks.resolve(demo.EXCLUDE, params)) if a}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo_out")
  return out, demo.main(["--quick", "--out", str(out), "--no-progress"])


def test_quick_lars_beats_chance_by_a_wide_margin(quick_run):
  _, res = quick_run
  lars_rows = [r for r in res["summary"] if r["optimizer"] == "lars"]
  assert len(lars_rows) == len(demo.QUICK_BATCH_SIZES)
  for r in lars_rows:
    assert r["mean"] > 0.7, r  # chance is 0.1
  # The largest batch (the whole training set) takes one step per epoch.
  full = max(lars_rows, key=lambda r: r["batch_size"])
  assert full["batch_size"] == 1437
  assert full["steps"] == 15  # --quick: 15 epochs


def test_quick_writes_table_json_and_plots(quick_run):
  out, res = quick_run
  for name in ("results.md", "results.json", "accuracy_vs_batch_size.png", "trust_ratios.png"):
    assert (out / name).stat().st_size > 0, name
  table = (out / "results.md").read_text()
  assert table.startswith("| batch | steps | LARS peak lr |")
  assert table == res["table"] + "\n"
  saved = json.loads((out / "results.json").read_text())
  assert len(saved["runs"]) == len(res["runs"]) == 2 * len(demo.QUICK_BATCH_SIZES)
  assert {r["optimizer"] for r in saved["runs"]} == {"lars", "sgd"}
  assert (out / "accuracy_vs_batch_size.png").read_bytes()[:4] == b"\x89PNG"


def test_quick_logs_trust_ratios_of_adapted_kernels_only(quick_run):
  _, res = quick_run
  logged = [r for r in res["runs"] if r.trust_ratios]
  assert len(logged) == 1
  run = logged[0]
  assert run.optimizer == "lars" and run.batch_size == 1437
  names = set(run.trust_ratios)
  # Biases and batch-norm parameters are neither decayed nor adapted: no ratio logged.
  assert names and all(n.endswith("/kernel") for n in names)
  assert not any("BatchNorm" in n or n.endswith("bias") for n in names)
  assert names == _adapted_paths(_init_params())  # every adapted layer, in a Python dict
  for values in run.trust_ratios.values():
    v = np.asarray(values)
    assert v.shape == (run.steps,)
    assert np.all(np.isfinite(v)) and np.all(v > 0)


def test_logged_first_step_ratios_match_a_direct_computation(quick_run):
  import jax
  import jax.numpy as jnp
  import optax

  _, res = quick_run
  run = next(r for r in res["runs"] if r.trust_ratios)
  eta, wd = 0.001, 5e-4  # the demo's defaults
  # Step 1 of the logged run (seed 0, the whole training set as one batch), recomputed.
  x, y, _, _ = demo.load_digits_split()
  model = demo.ResNet()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  perm = np.random.default_rng(10_000).permutation(len(y))

  def loss_fn(params):
    logits, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      jnp.asarray(x[perm]),
      train=True,
      mutable=["batch_stats"],
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y[perm])).mean()

  grads = jax.grad(loss_fn)(variables["params"])
  # The logged numbers are lars_jax.layer_diagnostics' ratios for the recipe's settings.
  diag = lars_jax.layer_diagnostics(
    variables["params"],
    grads,
    weight_decay=wd,
    weight_decay_mask=demo.EXCLUDE,
    trust_coefficient=eta,
    trust_ratio_mask=demo.EXCLUDE,
  )
  assert set(run.trust_ratios) == _adapted_paths(variables["params"])
  for path, values in run.trust_ratios.items():
    np.testing.assert_allclose(values[0], float(diag[f"trust_ratio/{path}"]), rtol=1e-4)
  for path in ("Conv_0/kernel", "Dense_0/kernel", "ResidualBlock_1/Conv_2/kernel"):
    node_w, node_g = variables["params"], grads
    for k in path.split("/"):
      node_w, node_g = node_w[k], node_g[k]
    w, g = np.asarray(node_w, np.float64), np.asarray(node_g, np.float64)
    expected = eta * np.linalg.norm(w) / np.linalg.norm(g + wd * w)
    np.testing.assert_allclose(run.trust_ratios[path][0], expected, rtol=1e-4, err_msg=path)
  # Convolutions in front of a zero-initialised batch-norm scale get a zero gradient on
  # step 1, so u = wd * w and the ratio is exactly eta / wd = 2.
  for path in ("ResidualBlock_0/Conv_0/kernel", "ResidualBlock_1/Conv_1/kernel"):
    np.testing.assert_allclose(run.trust_ratios[path][0], eta / wd, rtol=1e-5, err_msg=path)


def test_trust_ratio_diagnostics_filters_layer_diagnostics_to_adapted_layers():
  import jax
  import jax.numpy as jnp

  params = {
    "Conv_0": {"kernel": jnp.array([3.0, 4.0])},  # |w| = 5
    "Zero_0": {"kernel": jnp.zeros(3)},  # zero norm: ratio falls back to 1
    "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},  # excluded by name
  }
  grads = {
    "Conv_0": {"kernel": jnp.array([0.0, 1.0])},
    "Zero_0": {"kernel": jnp.ones(3)},
    "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
  }
  recipe = demo.Recipe("lars", 1.0, weight_decay=0.1, trust_coefficient=0.01)
  got = jax.jit(demo.trust_ratio_diagnostics(recipe))(params, grads)
  full = jax.jit(
    lambda p, g: lars_jax.layer_diagnostics(
      p,
      g,
      weight_decay=0.1,
      weight_decay_mask=demo.EXCLUDE,
      trust_coefficient=0.01,
      trust_ratio_mask=demo.EXCLUDE,
    )
  )(params, grads)
  # Exactly the trust_ratio entries of the adapted leaves, with the library's values.
  assert sorted(got) == ["trust_ratio/Conv_0/kernel", "trust_ratio/Zero_0/kernel"]
  assert {k: float(v) for k, v in got.items()} == {k: float(full[k]) for k in got}
  # layer_diagnostics reports 1 for the excluded leaves; the filter drops them.
  assert float(full["trust_ratio/BatchNorm_0/scale"]) == 1.0
  u = np.array([0.3, 1.4])  # g + 0.1 w
  np.testing.assert_allclose(
    float(got["trust_ratio/Conv_0/kernel"]), 0.05 / np.linalg.norm(u), 1e-6
  )
  assert float(got["trust_ratio/Zero_0/kernel"]) == 1.0


def test_schedule_warms_up_then_decays_to_zero():
  s = demo.warmup_poly_schedule(2.0, total_steps=20, warmup_steps=4)
  vals = np.array([float(s(c)) for c in range(21)])
  np.testing.assert_allclose(vals[:4], [0.5, 1.0, 1.5, 2.0], rtol=1e-6)
  np.testing.assert_allclose(vals[4], 2.0, rtol=1e-6)
  assert np.all(np.diff(vals[4:]) <= 0)
  assert vals[20] == 0.0
  np.testing.assert_allclose(vals[12], 2.0 * (1 - 8 / 16) ** 2, rtol=1e-6)


def test_bad_inputs_name_the_argument():
  with pytest.raises(ValueError, match="--batch-sizes"):
    demo._batch_sizes(["0"], 100)
  with pytest.raises(ValueError, match="--batch-sizes"):
    demo._batch_sizes(["200"], 100)
  with pytest.raises(ValueError, match="`optimizer`"):
    demo.make_optimizer(demo.Recipe("adam", 1.0), 32, 10, 1)
  assert demo._batch_sizes(["full", "32", "32"], 100) == [32, 100]


def test_split_is_fixed_and_validation_never_sees_test_images():
  x_tr, y_tr, x_te, y_te = demo.load_digits_split()
  assert x_tr.shape == (1437, 8, 8, 1) and x_te.shape == (360, 8, 8, 1)
  assert x_tr.dtype == np.float32 and y_tr.dtype == np.int32
  assert abs(float(x_tr.mean())) < 1e-4 and abs(float(x_tr.std()) - 1) < 1e-4
  np.testing.assert_array_equal(y_te, demo.load_digits_split()[3])
  assert np.bincount(y_te).min() >= 35  # stratified: ~36 of each digit
  from sklearn.datasets import load_digits

  labels = load_digits().target
  tr, te = demo.split_indices(labels)
  v_tr, v_val = demo.split_indices(labels, validation=True)
  assert len(set(tr) | set(te)) == 1797 and not set(tr) & set(te)
  assert set(v_tr) | set(v_val) == set(tr) and not set(v_val) & set(te)
  assert demo.load_digits_split(validation=True)[0].shape == (1077, 8, 8, 1)
