"""The README's own code runs and prints what the README says it prints.

The Flax and pods sections are run by tests/test_flax.py and tests/test_distributed.py
(they need Flax and 8 devices); this file covers the rest, and checks that `.ci/run`
runs exactly the README's test command.
"""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from readme_blocks import README, python_blocks, section  # tests/readme_blocks.py

import lars_jax

ROOT = README.parent


def _run(src: str, ns: dict | None = None) -> tuple[dict, str]:
  ns = {} if ns is None else ns
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(src, "README.md", "exec"), ns)
  return ns, out.getvalue()


def test_ten_lines_prints_the_losses_the_readme_quotes():
  (block,) = python_blocks("Ten lines")
  assert len(block.strip().splitlines()) <= 16
  _, out = _run(block)
  printed = {int(s): float(v) for s, v in (line.split() for line in out.splitlines())}
  assert sorted(printed) == [0, 50, 100, 150, 199]
  # The README's prose quotes these values ("`0 6.265`, `50 0.0277`, ..."): float32 on
  # CPU reproduces them to the printed digits; allow 2% for other XLA versions.
  quoted = dict(re.findall(r"`(\d+) ([0-9.e-]+)`", section("Ten lines")))
  assert sorted(int(k) for k in quoted) == sorted(printed)
  for step, value in quoted.items():
    np.testing.assert_allclose(printed[int(step)], float(value), rtol=0.02, err_msg=f"step {step}")
  assert printed[199] < 1e-5 * printed[0]  # the loss visibly falls


def test_mask_examples_build_masks_on_a_vit_like_tree():
  (block,) = python_blocks("Masks")
  lines = [ln.split("#")[0].rstrip() for ln in block.splitlines()]
  ns, _ = _run(lines[0])  # from lars_jax import masks
  rules = [eval(ln, ns) for ln in lines[1:] if ln]
  params = {
    "encoder": {"block_0": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}},
    "BatchNorm_0": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
    "pos_embedding": jnp.ones((3, 4)),
  }
  paths = jax.tree.leaves(lars_jax.masks.tree_paths(params))
  assert paths == [
    "BatchNorm_0/bias",
    "BatchNorm_0/scale",
    "encoder/block_0/bias",
    "encoder/block_0/kernel",
    "pos_embedding",
  ]
  assert [lars_jax.masks.resolve(rule, params) for rule in rules] == [
    [False, False, False, True, True],  # exclude 'bias' and 'BatchNorm'
    [False, False, False, True, False],  # only encoder kernels
    [False, False, False, True, True],  # ndim >= 2
    [False, False, False, True, False],  # ndim >= 2 and not pos_embedding
  ]


@pytest.mark.parametrize("i", range(3))
def test_migration_one_liners_build_and_step(i):
  blocks = python_blocks("Migrating from TensorFlow / PyTorch")
  assert len(blocks) == 6  # tf_lars, torch_lars, larc; timm, BYOL, flax/MLPerf (test_migrate)
  ns, _ = _run(blocks[i], {"lars_jax": lars_jax, "optax": optax, "lr": 0.1})
  tx = ns["tx"]
  params = {
    "Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
    "BatchNorm_0": {"scale": jnp.ones(2)},
  }
  grads = jax.tree.map(lambda p: 0.5 * p, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
  # tf_lars and torch_lars exclude biases by name; LARC has no exclusions.
  bias_step = float(updates["Dense_0"]["bias"][0])
  kernel_step = float(updates["Dense_0"]["kernel"][0, 0])
  assert bias_step < 0 and kernel_step < 0
  if i < 2:  # excluded bias: a plain SGD step -lr * g
    np.testing.assert_allclose(bias_step, -0.1 * 0.5, rtol=1e-6)


def _config_block(name: str) -> str:
  (block,) = [b for b in python_blocks("Configs in YAML") if f"{name}.from_yaml" in b]
  return block


def _flax_params() -> dict:
  """A Flax Linen model's params: Conv_0, BatchNorm_0, Dense_0 (kernels, biases, scale)."""
  nn = pytest.importorskip("flax.linen")

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x))
      return nn.Dense(2)(x.mean(axis=(1, 2)))

  return Net().init(jax.random.key(0), jnp.ones((1, 6, 6, 3)))["params"]


def _by_path(tree) -> dict:
  return dict(zip(jax.tree.leaves(lars_jax.masks.tree_paths(tree)), jax.tree.leaves(tree)))


def test_larsconfig_example_runs_on_a_flax_model():
  params = _flax_params()
  ns, _ = _run(_config_block("LARSConfig"), {"params": params})
  cfg, tx, lr = ns["cfg"], ns["tx"], ns["lr"]
  assert cfg.weight_decay_rate == 1e-6
  assert cfg.exclude_from_weight_decay == ("BatchNorm", "bias")
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
  _, state = tx.update(grads, ns["state"], params)  # schedule(0) = 0: a zero step
  updates = _by_path(tx.update(grads, state, params)[0])  # schedule(1) = 3.2 / 500
  w, g = _by_path(params), _by_path(grads)
  for path in ["BatchNorm_0/scale", "BatchNorm_0/bias", "Conv_0/bias", "Dense_0/bias"]:
    # Excluded by the Flax names: no decay, no trust ratio, a momentum-SGD step.
    np.testing.assert_allclose(updates[path], -lr(1) * g[path], rtol=1e-6, err_msg=path)
  for path in ["Conv_0/kernel", "Dense_0/kernel"]:
    u = g[path] + 1e-6 * w[path]
    ratio = 0.001 * jnp.linalg.norm(w[path]) / jnp.linalg.norm(u)
    np.testing.assert_allclose(updates[path], -lr(1) * ratio * u, rtol=1e-5, err_msg=path)
  # The Keras names the text warns about match nothing on this model.
  keras = cfg.override({"exclude_from_weight_decay": ["batch_normalization", "bias"]})
  with pytest.raises(ValueError, match="'batch_normalization' matches no parameter"):
    keras.build(0.1).init(params)


def test_optimizer_config_example_on_a_flax_resnet_tree(monkeypatch):
  block = _config_block("OptimizerConfig")
  monkeypatch.chdir(ROOT)  # the block reads examples/... from the repository root
  params = {  # the MLPerf Flax ResNet-50's names, tiny shapes
    "conv_init": {"kernel": jnp.ones((7, 7, 3, 8))},
    "bn_init": {"scale": jnp.ones(8), "bias": jnp.zeros(8)},
    "stage1_block1": {"conv1": {"kernel": jnp.ones((1, 1, 8, 8))}},
    "head": {"kernel": jnp.ones((8, 10)), "bias": jnp.zeros(10)},
  }
  _, out = _run(block, {"params": params})
  (printed,) = re.findall(r"print\(.*\)\s+# (.*)", block)
  assert out.strip() == printed


def test_ci_runs_the_readme_test_command():
  quick = section("Quick start on a fresh machine")
  commands = [ln for ln in quick.splitlines() if ln.startswith("python3 -m venv")]
  assert len(commands) == 2, commands  # exactly two: the demo and the tests
  demo, tests = commands
  assert demo.endswith("-m benchmarks.large_batch") and '".[demo]"' in demo
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  assert tests in ci, f".ci/run must run the README's test command {tests!r}"


def test_no_links_to_missing_files():
  text = README.read_text()
  targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
  assert targets  # the README links its notebook, plots and benchmark results
  missing = [t for t in targets if not (ROOT / t).exists()]
  assert not missing, f"README links to missing files: {missing}"
  anchors = re.findall(r"\]\(#([^)]+)\)", text)
  prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)  # '# comments' are no headings
  headings = {
    re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
    for h in re.findall(r"^#+ (.+)$", prose, flags=re.M)
  }
  assert not [a for a in anchors if a not in headings], sorted(set(anchors) - headings)


def test_readme_mentions_no_deleted_module():
  text = README.read_text()
  for name in re.findall(r"`lars_jax\.(\w+)", text):
    assert hasattr(lars_jax, name) or pathlib.Path(ROOT, "lars_jax", f"{name}.py").exists(), name
