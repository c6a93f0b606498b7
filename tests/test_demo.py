"""The large-batch demo (`python -m benchmarks.large_batch`): --quick end to end, and its pieces."""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("mnist1d")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not installed: run from the repository
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import large_batch as lb  # noqa: E402

CHANCE = 0.1  # ten balanced classes


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("large_batch_out")
  return out, lb.main(["--quick", "--out", str(out), "--no-progress"])


def test_quick_beats_chance_by_a_wide_margin(quick_run):
  _, res = quick_run
  rows = res["summary"]
  assert {r["optimizer"] for r in rows} == {"lars", "sgd", "adamw"}
  assert sorted({r["batch_size"] for r in rows}) == [256, 1024]
  for r in rows:
    floor = 0.75 if r["batch_size"] == 256 else 0.4  # 1024: 42 steps in all
    assert r["mean"] > floor, r  # chance is 0.1
    assert r["test_acc"] == [r["mean"]]  # --quick: one seed
  # Same epochs at every batch size: 8,000 training sequences, 6 epochs, 1.5 of warm-up.
  lars = {r["batch_size"]: r for r in rows if r["optimizer"] == "lars"}
  assert {b: r["steps"] for b, r in lars.items()} == {256: 31 * 6, 1024: 7 * 6}
  assert {b: r["warmup_steps"] for b, r in lars.items()} == {256: round(31 * 1.5), 1024: 10}


def test_quick_grids_follow_the_rule(quick_run):
  _, res = quick_run
  for name in ("lars", "sgd", "adamw"):
    small, large = sorted(
      (r for r in res["summary"] if r["optimizer"] == name), key=lambda r: r["batch_size"]
    )
    first = lb.OPTIMIZERS[name].first_lr
    assert small["grid"] == pytest.approx([first / 2, first, 2 * first])
    # From the small batch's best rate to twice the linear-scaling value (x 1024/256).
    best = small["chosen_lr"]
    assert large["grid"] == pytest.approx([best * 2**i for i in range(4)])
    for r in (small, large):
      assert r["chosen_lr"] in r["grid"]
      assert r["grid_val_acc"][r["grid"].index(r["chosen_lr"])] == max(r["grid_val_acc"])


def test_quick_writes_table_json_and_plots(quick_run):
  out, res = quick_run
  names = (
    "results.md",
    "results.json",
    "accuracy_vs_batch_size.png",
    "accuracy_vs_lr.png",
    "trust_ratios.png",
    "update_ratios.png",
  )
  for name in names:
    assert (out / name).stat().st_size > 0, name
  assert (out / "accuracy_vs_lr.png").read_bytes()[:4] == b"\x89PNG"
  md = (out / "results.md").read_text()
  assert md.startswith("| batch | steps | LARS lr | LARS test acc (%) | SGD-momentum lr |")
  assert res["table"] in md and "validation accuracy (%) per peak learning rate" in md
  saved = json.loads((out / "results.json").read_text())
  # 3 + 4 grid points per optimizer, one seed each.
  assert len(saved["runs"]) == len(res["runs"]) == 3 * (3 + 4)
  assert {r["seed"] for r in saved["runs"]} == {0}
  assert saved["summary"] == json.loads(json.dumps(res["summary"]))


def test_quick_logs_diagnostics_at_the_largest_batch_only(quick_run):
  _, res = quick_run
  logged = [r for r in res["runs"] if "update_ratios" in r]
  assert {r["batch_size"] for r in logged} == {1024}
  assert len(logged) == 3 * 4  # every grid point of every optimizer
  names = set(logged[0]["update_ratios"])
  assert "PatchConv_0/kernel" in names and "Dense_0/kernel" in names
  for r in logged:
    for path in ("PatchConv_0/kernel", "PatchConv_2/kernel", "Dense_0/kernel"):
      v = np.asarray(r["update_ratios"][path])
      assert v.shape == (r["steps"],) and np.all(np.isfinite(v)) and np.all(v >= 0)
    if r["optimizer"] != "lars":
      assert r["layer_stats"] == {}  # optax's optimizers keep no statistics
      continue
    # lars_jax.layer_stats of LARS's own state: every leaf is adapted, every step.
    stats = r["layer_stats"]
    assert {k.split("/", 1)[1] for k in stats if k.startswith("trust_ratio/")} == names
    for path in names:
      ratio = np.asarray(stats[f"trust_ratio/{path}"])
      assert ratio.shape == (r["steps"],) and np.all(np.isfinite(ratio)), path
      w = np.asarray(stats[f"param_norm/{path}"])
      u = np.asarray(stats[f"update_norm/{path}"])
      ok = (w > 0) & (u > 0)
      np.testing.assert_allclose(ratio[ok], 1e-3 * w[ok] / u[ok], rtol=1e-4, err_msg=path)


def test_mnist1d_is_generated_offline_and_cached(tmp_path, monkeypatch):
  import mnist1d.data

  def no_download(*args, **kwargs):
    raise AssertionError("get_dataset downloads; the demo must not call it")

  monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
  state = np.random.get_state()
  data = lb.make_mnist1d(180, 20, seed=3, cache_dir=tmp_path)
  assert np.array_equal(np.random.get_state()[1], state[1])  # global RNG left alone
  assert data["x_train"].shape == (180, lb.SEQ_LEN) and data["x_test"].shape == (20, lb.SEQ_LEN)
  assert data["x_train"].dtype == np.float32 and data["y_train"].dtype == np.int32
  assert set(np.unique(np.concatenate([data["y_train"], data["y_test"]]))) == set(range(10))
  cached = tmp_path / "mnist1d_180_20_seed3.npz"
  assert cached.exists()

  def no_generation(*args, **kwargs):
    raise AssertionError("the cached arrays should have been read")

  monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
  again = lb.make_mnist1d(180, 20, seed=3, cache_dir=tmp_path)
  for k in data:
    np.testing.assert_array_equal(again[k], data[k])
  with pytest.raises(ValueError, match="multiple of 10"):
    lb.make_mnist1d(181, 20, cache_dir=tmp_path)


def test_validation_is_carved_from_the_training_set():
  data = {
    "x_train": np.arange(100, dtype=np.float32)[:, None],
    "y_train": np.arange(100, dtype=np.int32),
    "x_test": np.zeros((7, 1), np.float32),
    "y_test": np.zeros(7, np.int32),
  }
  s = lb.split_data(data, 30)
  assert s["fit"][1].tolist() == list(range(70)) and s["val"][1].tolist() == list(range(70, 100))
  assert s["val"][0][:, 0].tolist() == list(range(70, 100)) and len(s["test"][1]) == 7
  with pytest.raises(ValueError, match="--n-val"):
    lb.split_data(data, 100)


@pytest.mark.parametrize("kernel_size,stride", [(5, 2), (3, 1), (4, 2)])
def test_patch_conv_is_a_same_padded_convolution(kernel_size, stride):
  conv = lb.PatchConv(6, kernel_size, stride)
  x = jax.random.normal(jax.random.key(0), (3, 40, 4))
  params = jax.jit(conv.init)(jax.random.key(1), x)
  kernel = params["params"]["kernel"]
  assert kernel.shape == (kernel_size, 4, 6)
  want = jax.jit(
    lambda x, k: jax.lax.conv_general_dilated(
      x, k, (stride,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")
    )
  )(x, kernel)
  np.testing.assert_allclose(jax.jit(conv.apply)(params, x), want, rtol=1e-5, atol=1e-5)


def test_model_shapes_and_precise_batch_norm():
  model = lb.CNN()
  v = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, lb.SEQ_LEN)))
  shapes = jax.tree.map(jnp.shape, v["params"])
  assert shapes["PatchConv_0"]["kernel"] == (5, 1, 16)
  assert shapes["PatchConv_2"]["kernel"] == (3, 32, 32)
  assert shapes["Dense_0"]["kernel"] == (32 * 5, 10)  # 40 -> 20 -> 10 -> 5 positions
  x = np.random.default_rng(1).normal(1.0, 3.0, (64, lb.SEQ_LEN)).astype(np.float32)
  stats = lb.precise_batch_norm(model, v["params"], v["batch_stats"], x, chunk=32)
  # The first batch norm sees the first convolution of x: its mean over both chunks.
  conv0 = jax.jit(lb.PatchConv(16, 5, 2).apply)(
    {"params": v["params"]["PatchConv_0"]}, x[..., None]
  )
  halves = np.asarray(conv0).reshape(2, 32 * 20, 16)
  np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], halves.mean(1).mean(0), rtol=1e-4)
  np.testing.assert_allclose(stats["BatchNorm_0"]["var"], halves.var(1).mean(0), rtol=1e-3)


def test_grid_and_plan():
  assert lb._grid(1.0, 8.0) == [1.0, 2.0, 4.0, 8.0]
  assert lb._grid(0.3, 0.3 * 64) == pytest.approx([0.3 * 2**i for i in range(7)])
  assert lb.Plan(batch_size=1024, steps_per_epoch=58, epochs=8, warmup_steps=116).total_steps == 464


def test_every_settings_field_is_an_option():
  """The command line is generated from `Settings`: each field, with its type, no hand mirror."""
  changed = dict(batch_sizes=(128, 512), optimizers=("adamw", "lars"), epochs=3, warmup_epochs=0.5,
                 seeds=2, n_train=5_000, n_val=1_000, n_test=1_000, data_seed=4, max_extend=1,
                 bn_examples=1024)  # fmt: skip
  assert set(changed) == {f.name for f in dataclasses.fields(lb.Settings)}
  argv, lists = [], ("batch_sizes", "optimizers")
  for name, value in changed.items():
    argv += ["--" + name.replace("_", "-"), *map(str, value if name in lists else [value])]
  settings, args = lb.parse_args(argv + ["--out", "elsewhere"])
  assert settings == lb.Settings(**changed) and args.out == "elsewhere" and not args.quick
  assert lb.parse_args(["--quick"])[0] == lb.Settings.quick()
  assert lb.parse_args(["--quick", "--seeds", "2"])[0] == dataclasses.replace(
    lb.Settings.quick(), seeds=2
  )
  assert lb.parse_args([])[0] == lb.Settings()


def test_bad_settings_name_the_field_and_the_option():
  with pytest.raises(ValueError, match=r"Settings.batch_sizes \(--batch-sizes\).*9000"):
    lb.parse_args(["--quick", "--batch-sizes", "9000"])
  with pytest.raises(ValueError, match=r"Settings.warmup_epochs \(--warmup-epochs\)"):
    lb.parse_args(["--epochs", "4", "--warmup-epochs", "4"])
  with pytest.raises(ValueError, match=r"Settings.optimizers .*among lars, sgd, adamw"):
    lb.Settings(optimizers=("lars", "nesterov"))
  with pytest.raises(ValueError, match=r"Settings.n_val \(--n-val\)"):
    lb.Settings(n_train=1_000, n_val=1_000)
  s = lb.parse_args(["--batch-sizes", "512", "256", "512", "--seeds", "5"])[0]
  assert s.batch_sizes == (256, 512) and s.seeds == 5 and s.n_train == 70_000
  assert lb.Settings(batch_sizes=[1024, 256]).batch_sizes == (256, 1024)  # as the notebook may
