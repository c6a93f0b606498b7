"""Orbax checkpoints of lars training runs (lars_jax.checkpoint).

* Continuation: a run saved mid-training and continued in a fresh process (this file
  run as a script in a subprocess) ends bit for bit where the uninterrupted run ends:
  params, momentum, schedule counts, batch statistics and step, for a Flax Linen
  TrainState and for an NNX model + nnx.Optimizer. Learning rate and weight decay are
  schedules, so a lost or reset count would change the numbers.
* Mismatches (another layer width, another optimizer state structure, another dtype)
  raise ValueError naming the path, before any array is read.
* Corruption (a flipped byte in the array data, a truncated or deleted file, a missing
  manifest) raises ValueError; a failed save or restore never removes an earlier step,
  which still restores exactly.
"""

from __future__ import annotations

import gc
import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lars_jax
from lars_jax import masks

ocp = pytest.importorskip("orbax.checkpoint")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402
from flax.training import train_state  # noqa: E402

from lars_jax import checkpoint  # noqa: E402

STEPS, SAVE_AT, BATCH = 8, 3, 32
EXCLUDE = masks.exclude_names("bias", "(?i)batch_?norm")


def _tx():
  return lars_jax.lars(
    optax.warmup_cosine_decay_schedule(0.0, 2.0, 3, STEPS),
    weight_decay=optax.linear_schedule(1e-3, 1e-4, STEPS),
    weight_decay_mask=EXCLUDE,
    trust_coefficient=0.02,
    trust_ratio_mask=EXCLUDE,
    momentum=0.9,
  )


def _batch(i):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4 * BATCH, 8, 8, 1)).astype(np.float32)
  y = np.argmax(x.reshape(len(x), -1) @ rng.normal(size=(64, 10)), axis=1)
  sl = slice((i % 4) * BATCH, (i % 4 + 1) * BATCH)
  return jnp.asarray(x[sl]), jnp.asarray(y[sl])


def _loss(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# ----------------------------------------------------------------------------
# Linen TrainState


class LinenCNN(nn.Module):
  features: int = 8

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(10)(nn.relu(x).reshape(x.shape[0], -1))


class TrainState(train_state.TrainState):
  batch_stats: dict


def linen_state(features=8, tx=None):
  model = LinenCNN(features)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
  return TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=tx or _tx(),
    batch_stats=variables["batch_stats"],
  )


@jax.jit
def linen_step(state, x, y):
  def loss_fn(params):
    logits, new = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats}, x, True, mutable=["batch_stats"]
    )
    return _loss(logits, y), new["batch_stats"]

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  return state.apply_gradients(grads=grads, batch_stats=stats), loss


def linen_train(state, start, stop):
  for i in range(start, stop):
    state, _ = linen_step(state, *_batch(i))
  return state


# ----------------------------------------------------------------------------
# NNX model + optimizer


class NNXCNN(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    self.batch_norm = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(8 * 8 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.batch_norm(self.conv(x)))
    return self.head(x.reshape(x.shape[0], -1))


def nnx_objects():
  model = NNXCNN(nnx.Rngs(0))
  return model, nnx.Optimizer(model, _tx(), wrt=nnx.Param)


@nnx.jit
def nnx_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(lambda m: _loss(m(x), y))(model)
  optimizer.update(model, grads)
  return loss


def nnx_train(model, optimizer, start, stop):
  model.train()
  for i in range(start, stop):
    nnx_step(model, optimizer, *_batch(i))


def nnx_tree(model, optimizer):
  """What is checkpointed for NNX: the model's and the optimizer's state."""
  return {"model": nnx.state(model), "optimizer": nnx.state(optimizer)}


def _flat(tree):
  """{path: numpy array} of every leaf, for bit-for-bit comparisons."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {masks.path_str(p): np.asarray(x) for p, x in flat}


def _assert_bitwise_equal(got, want):
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].dtype == want[k].dtype, k
    np.testing.assert_array_equal(got[k], want[k], err_msg=k, strict=True)


# ----------------------------------------------------------------------------
# Fresh-process continuation (this file run as a script).


def _continue(directory, out):
  """Restores the latest Linen and NNX steps into freshly built objects, saves them as
  restored, trains to STEPS and saves the final state."""
  mngr = checkpoint.manager(os.path.join(directory, "linen"))
  state = checkpoint.restore(mngr, linen_state())
  restored_linen = _flat(state)
  final_linen = _flat(linen_train(state, int(state.step), STEPS))

  mngr = checkpoint.manager(os.path.join(directory, "nnx"))
  model, optimizer = nnx_objects()
  restored = checkpoint.restore(mngr, nnx_tree(model, optimizer))
  nnx.update(model, restored["model"])
  nnx.update(optimizer, restored["optimizer"])
  restored_nnx = _flat(nnx_tree(model, optimizer))
  nnx_train(model, optimizer, int(optimizer.step[...]), STEPS)
  final_nnx = _flat(nnx_tree(model, optimizer))
  arrays = {}
  for name, d in [
    ("restored_linen", restored_linen),
    ("final_linen", final_linen),
    ("restored_nnx", restored_nnx),
    ("final_nnx", final_nnx),
  ]:
    arrays.update({f"{name}:{k}": v for k, v in d.items()})
  np.savez(out, **arrays)


def _load(out, name):
  with np.load(out) as z:
    return {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith(name + ":")}


def test_continue_in_fresh_process_is_bit_identical(tmp_path):
  # Uninterrupted runs.
  want_linen = _flat(linen_train(linen_state(), 0, STEPS))
  model, optimizer = nnx_objects()
  nnx_train(model, optimizer, 0, STEPS)
  want_nnx = _flat(nnx_tree(model, optimizer))

  # Interrupted runs: save at SAVE_AT - 1 and SAVE_AT.
  state = linen_train(linen_state(), 0, SAVE_AT - 1)
  mngr = checkpoint.manager(tmp_path / "linen")
  assert checkpoint.save(mngr, SAVE_AT - 1, state)
  state = linen_train(state, SAVE_AT - 1, SAVE_AT)
  assert checkpoint.save(mngr, SAVE_AT, state)
  saved_linen = _flat(state)
  model, optimizer = nnx_objects()
  nnx_train(model, optimizer, 0, SAVE_AT)
  assert checkpoint.save(checkpoint.manager(tmp_path / "nnx"), SAVE_AT, nnx_tree(model, optimizer))
  saved_nnx = _flat(nnx_tree(model, optimizer))

  out = tmp_path / "out.npz"
  proc = subprocess.run(
    [sys.executable, __file__, str(tmp_path), str(out)],
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  _assert_bitwise_equal(_load(out, "restored_linen"), saved_linen)
  _assert_bitwise_equal(_load(out, "final_linen"), want_linen)
  _assert_bitwise_equal(_load(out, "restored_nnx"), saved_nnx)
  _assert_bitwise_equal(_load(out, "final_nnx"), want_nnx)

  # The schedule counts and the step went on from the checkpoint (a reset would make
  # the comparison above fail; this says why).
  final = _load(out, "final_linen")
  assert int(final["step"]) == STEPS
  assert [int(v) for k, v in final.items() if k.endswith("count")] == [STEPS, STEPS]
  assert int(_load(out, "restored_linen")["step"]) == SAVE_AT
  assert any(k.startswith("opt_state/3/trace/") for k in final)  # momentum is in there


# ----------------------------------------------------------------------------
# Mismatches, corruption, nothing lost.


@pytest.fixture
def saved(tmp_path):
  """A directory with steps 1 and 2 of a Linen run, and the states saved."""
  mngr = checkpoint.manager(tmp_path / "ckpt", max_to_keep=3)
  states = {}
  state = linen_state()
  for step in (1, 2):
    state = linen_train(state, step - 1, step)
    checkpoint.save(mngr, step, state)
    states[step] = _flat(state)
  return mngr, states


def _restores_exactly(mngr, states, step):
  _assert_bitwise_equal(_flat(checkpoint.restore(mngr, linen_state(), step=step)), states[step])


def test_mismatched_target_names_the_path(saved):
  mngr, states = saved
  with pytest.raises(ValueError, match=r"params/Conv_0/kernel: shape \(3, 3, 1, 8\) in the "):
    checkpoint.restore(mngr, linen_state(features=16))
  # A constant learning rate has no schedule count in its state.
  with pytest.raises(ValueError, match=r"opt_state/2/count: in the checkpoint but not in target"):
    checkpoint.restore(mngr, linen_state(tx=lars_jax.lars(2.0, optax.constant_schedule(1e-3))))
  # Another optimizer altogether.
  with pytest.raises(ValueError, match=r"does not match `target`: .*opt_state/0/count"):
    checkpoint.restore(mngr, linen_state(tx=optax.sgd(0.1, momentum=0.9)))
  half = linen_state()
  half = half.replace(params=jax.tree.map(lambda p: p.astype(jnp.bfloat16), half.params))
  with pytest.raises(ValueError, match="params/Dense_0/bias: dtype float32 in the checkpoint, "):
    checkpoint.restore(mngr, half)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint step 7 .* steps there are \[1, 2\]"):
    checkpoint.restore(mngr, linen_state(), step=7)
  # Nothing was touched.
  assert mngr.all_steps() == [1, 2]
  _restores_exactly(mngr, states, 2)


def _data_file(mngr, step):
  files = glob.glob(os.path.join(mngr.directory, str(step), "state", "**", "d", "*"))
  return max(files, key=os.path.getsize)  # the array data (the kernels: ~20 KiB)


# When a read of a damaged step fails, orbax leaves its other shard-read coroutines
# unawaited; Python reports them at garbage collection. Our error is already raised.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_data", "delete_manifest"])
def test_corrupted_step_raises_and_earlier_step_restores(saved, damage):
  mngr, states = saved
  if damage == "flip_byte":
    path = _data_file(mngr, 2)
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      byte = f.read(1)
      f.seek(-1, os.SEEK_CUR)
      f.write(bytes([byte[0] ^ 0x10]))
  elif damage == "truncate":
    path = _data_file(mngr, 2)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  elif damage == "delete_data":
    os.remove(_data_file(mngr, 2))
  else:
    for f in glob.glob(os.path.join(mngr.directory, "2", "manifest", "*")):
      os.remove(f)
  fresh = checkpoint.manager(mngr.directory, max_to_keep=3)  # no cached reads
  with pytest.raises(ValueError, match=r"checkpoint step 2 .*corrupted") as err:
    checkpoint.restore(fresh, linen_state())
  assert "The other steps saved there ([1]) are untouched" in str(err.value)
  assert fresh.all_steps() == [1, 2]
  _restores_exactly(fresh, states, 1)
  err = None  # the traceback holds those coroutines: collect them inside this test
  gc.collect()


def test_failed_saves_lose_nothing(saved):
  mngr, states = saved
  state = checkpoint.restore(mngr, linen_state())
  with pytest.raises(ValueError, match="step 2 is already saved"):
    checkpoint.save(mngr, 2, linen_train(state, 2, 3))
  with pytest.raises(TypeError, match="'note' is a str"):
    checkpoint.save(mngr, 3, {"state": state, "note": "not an array"})
  with pytest.raises(ValueError, match="`step` must be a non-negative int"):
    checkpoint.save(mngr, -1, state)
  assert mngr.all_steps() == [1, 2]
  _restores_exactly(mngr, states, 1)
  _restores_exactly(mngr, states, 2)
  # max_to_keep=3: old steps go only once three newer ones are committed.
  for step in (3, 4):
    state = linen_train(state, step - 1, step)
    checkpoint.save(mngr, step, state)
  assert mngr.all_steps() == [2, 3, 4]
  _restores_exactly(mngr, states, 2)


def test_empty_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    checkpoint.restore(checkpoint.manager(tmp_path), linen_state())
  with pytest.raises(ValueError, match="max_to_keep"):
    checkpoint.manager(tmp_path, max_to_keep=0)


if __name__ == "__main__":
  _continue(sys.argv[1], sys.argv[2])
