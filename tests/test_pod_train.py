"""examples/pod_train.py end to end, and the state shardings it relies on.

The example runs in subprocesses: `--local-processes 2 --local-devices 2` starts two
processes joined by `jax.distributed` on 127.0.0.1 (gloo), with a 2 (data) x 2 (model)
global mesh: `data` across the processes, `model` within each. Checks:
- 2 processes equal one device (same command, `--local-processes 1`) after 10 steps,
  within 2e-6 (params, batch statistics, momentum, the kept layer statistics, losses);
- the checkpoint saved at step 5, restored by 2 fresh processes, continues to step 10
  bit for bit as the uninterrupted run;
- the same checkpoint restored by 1 process on another mesh (1 x 4) continues close to
  it (not bitwise: the reductions are split differently).
The multi-process runs share a persistent compilation cache, so the resumed run does not
compile again.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lars_jax
from lars_jax import sharding as lsh

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pod_train.py"
TIMEOUT_S = 300
TOL = 2e-6

pytest.importorskip("flax")
ocp = pytest.importorskip("orbax.checkpoint")


def _run(tmp: pathlib.Path, name: str, *args: str, ckpt: pathlib.Path | None = None) -> dict:
  """Runs the example; returns its output file (process 0's gathered final state)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the launcher sets the device count per worker
  env["JAX_COMPILATION_CACHE_DIR"] = str(tmp / "jax_cache")
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  out = tmp / f"{name}.npz"
  cmd = [
    sys.executable,
    str(EXAMPLE),
    "--steps=10",
    "--save-every=5",
    f"--out={out}",
    f"--ckpt-dir={ckpt or tmp / name}",
    *args,
  ]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
  log = proc.stdout + proc.stderr[-4000:]
  if "Multiprocess computations aren't implemented on the CPU backend" in log:
    # The example's library calls work there; the CPU backend of old jaxlib (0.4.35)
    # has no collectives between processes, so N local processes cannot run.
    pytest.skip(f"jaxlib {jax.__version__}: no multi-process collectives on the CPU backend")
  assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{log}"
  with np.load(out) as f:
    result = dict(f)
  result["log"] = proc.stdout
  return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
  tmp = tmp_path_factory.mktemp("pod")
  two = ("--local-processes=2", "--local-devices=2", "--model=2")
  out = {"two": _run(tmp, "two", *two)}
  out["one"] = _run(tmp, "one", "--local-processes=1", "--local-devices=1")
  # A preemption after step 5: a directory with only the step-5 checkpoint.
  for name in ("resumed", "other_mesh"):
    shutil.copytree(tmp / "two" / "5", tmp / name / "5")
  out["resumed"] = _run(tmp, "resumed", *two)
  out["other_mesh"] = _run(
    tmp, "other_mesh", "--local-processes=1", "--local-devices=4", "--model=4"
  )
  return out


def _state_keys(result: dict) -> list[str]:
  return sorted(k for k in result if k not in ("log", "losses"))


def test_two_processes_equal_one_device(runs):
  two, one = runs["two"], runs["one"]
  assert "2 processes, 4 devices, mesh {'data': 2, 'model': 2}" in two["log"]
  assert "[process 0] loads rows 0-15" in two["log"]  # its half of the batch (stdout of both)
  assert "[process 1] loads rows 16-31" in two["log"]
  assert "1 processes, 1 devices" in one["log"]
  assert _state_keys(two) == _state_keys(one)
  assert any(k.startswith("opt_state/0/stats/trust_ratio/") for k in two)  # keep_stats
  assert int(two["step"]) == int(one["step"]) == 10
  for key in [*_state_keys(one), "losses"]:
    np.testing.assert_allclose(two[key], one[key], rtol=TOL, atol=TOL, err_msg=key)
  assert one["losses"][-1] < one["losses"][0]  # it trains
  # Logged from process 0 only, every 5 steps, with the trust ratios.
  assert two["log"].count("step  10  loss") == 1
  assert "trust ratio: Conv_0/kernel" in two["log"]


def test_resume_in_fresh_processes_is_bit_identical(runs):
  two, resumed = runs["two"], runs["resumed"]
  assert "restored step 5" in resumed["log"]
  assert len(resumed["losses"]) == 5  # steps 6..10 only
  np.testing.assert_array_equal(resumed["losses"], two["losses"][5:])
  for key in _state_keys(two):
    np.testing.assert_array_equal(resumed[key], two[key], err_msg=key)


def test_restore_on_another_mesh_continues_closely(runs):
  two, other = runs["two"], runs["other_mesh"]
  assert "1 processes, 4 devices, mesh {'data': 1, 'model': 4}" in other["log"]
  assert "restored step 5" in other["log"]
  for key in _state_keys(two):
    np.testing.assert_allclose(other[key], two[key], rtol=1e-5, atol=1e-5, err_msg=key)


# ----------------------------------------------------------------------------
# lars_jax.sharding in this process (one device): full state trees for every optimizer.

M2 = lars_jax.masks.min_ndim(2)
OPTIMIZERS = {
  "lars keep_stats": lambda: lars_jax.lars(
    optax.linear_schedule(0.1, 0.0, 10),
    weight_decay=1e-4,
    weight_decay_mask=M2,
    trust_ratio_mask=M2,
    keep_stats=True,
  ),
  "lars": lambda: lars_jax.lars(0.1, weight_decay=optax.constant_schedule(1e-4)),
  "tf_lars keep_stats": lambda: lars_jax.tf_lars(0.1, keep_stats=True),
  "torch_lars keep_stats": lambda: lars_jax.torch_lars(0.1, momentum=0.9, keep_stats=True),
  "larc keep_stats": lambda: lars_jax.larc(optax.sgd(1.0, momentum=0.9), 0.1, keep_stats=True),
  "inject lars keep_stats": lambda: optax.inject_hyperparams(
    lars_jax.lars, static_args=("weight_decay_mask", "trust_ratio_mask", "keep_stats")
  )(learning_rate=0.1, weight_decay_mask=M2, trust_ratio_mask=M2, keep_stats=True),
  "optax.lars": lambda: optax.lars(0.1, weight_decay=1e-4),
  "sgd momentum": lambda: optax.sgd(0.1, momentum=0.9),
  "adamw": lambda: optax.adamw(1e-3),
}


def _params():
  return {"dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}, "scale": jnp.ones(3)}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_shardings_is_the_full_state_tree(name):
  tx = OPTIMIZERS[name]()
  params = _params()
  specs = {"dense": {"kernel": P(None, "model"), "bias": P("model")}, "scale": P()}
  state = jax.eval_shape(tx.init, params)
  shardings = lsh.state_shardings(tx, params, specs)
  assert jax.tree.structure(shardings) == jax.tree.structure(state)
  by_shape = {}
  for s, a in zip(jax.tree.leaves(shardings), jax.tree.leaves(state)):
    by_shape.setdefault(a.shape, set()).add(s)
  assert by_shape[(4, 2)] == {P(None, "model")}  # momentum / moments of the kernel
  assert by_shape.get((), {P()}) == {P()}  # counts and kept statistics: replicated


def test_tree_map_params_alone_gives_a_prefix_with_keep_stats():
  """What the helper fixes: optax.tree_map_params's non-param callback sees each
  LayerStats field whole, so one sharding stands for a tree of scalars."""
  tx = OPTIMIZERS["lars keep_stats"]()
  params = _params()
  state = jax.eval_shape(tx.init, params)
  prefix = optax.tree_map_params(
    tx, lambda _, s: s, state, params, transform_non_params=lambda _: "replicated"
  )
  assert prefix[0].stats.param_norm == "replicated"  # not a tree
  with pytest.raises(ValueError, match="param_norm|Expected dict"):  # older jax: no path
    jax.tree.map(lambda a, s: a, state, prefix)


def test_sharded_restore_with_keep_stats(tmp_path):
  """Save a keep_stats state, restore it into ShapeDtypeStructs carrying the shardings."""
  axis_type = getattr(jax.sharding, "AxisType", None)  # jax >= 0.5; older meshes are Auto
  kw = {"axis_types": (axis_type.Auto,)} if axis_type else {}
  mesh = jax.make_mesh((1,), ("model",), **kw)
  params = _params()
  specs = {"dense": {"kernel": P(None, "model"), "bias": P("model")}, "scale": P()}
  param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
  tx = OPTIMIZERS["lars keep_stats"]()
  params = jax.device_put(params, param_sh)
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update(jax.tree.map(lambda p: 0.5 * p, params), state, params)
  with ocp.CheckpointManager(tmp_path) as mngr:
    mngr.save(2, args=ocp.args.StandardSave(state))
    mngr.wait_until_finished()
    target = lsh.abstract_state(tx, params, param_sh)
    restored = mngr.restore(2, args=ocp.args.StandardRestore(target))
  for a, b, t in zip(jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(target)):
    np.testing.assert_array_equal(a, b)
    assert a.sharding == t.sharding
  assert lars_jax.layer_stats(restored) == lars_jax.layer_stats(state)


def test_missing_shardings_name_the_parameter():
  with pytest.raises(ValueError, match="'dense/bias' has no sharding"):
    lsh.state_shardings(lars_jax.lars(0.1), {"dense": {"bias": np.ones(2)}})


def test_replicated_sharding_must_be_inferable_or_given():
  params = {"w": jnp.ones((2, 2))}
  single = {"w": jax.sharding.SingleDeviceSharding(jax.devices()[0])}
  with pytest.raises(ValueError, match="Pass `replicated=`"):
    lsh.state_shardings(lars_jax.lars(0.1), params, single)
  sh = lsh.state_shardings(lars_jax.lars(0.1), params, single, replicated=single["w"])
  assert sh[2].trace == single
