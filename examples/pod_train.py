"""Multi-process (pod) training with lars_jax: sharded params and optimizer state,
per-process input, batch norm, keep_stats logging and orbax checkpoints.

On a pod (TPU, or a GPU cluster that `jax.distributed.initialize()` detects), run the
same command on every host:

    python examples/pod_train.py --ckpt-dir gs://bucket/run1 --model 4

On one CPU machine, N local processes joined on 127.0.0.1, each with its own virtual
CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=K`, set by the launcher):

    python examples/pod_train.py --local-processes 2 --local-devices 4 --model 2 \\
        --steps 10 --save-every 5 --ckpt-dir /tmp/pod_run

Run it again with a larger `--stop-at` (or none) and it resumes from the newest
checkpoint. `--out FILE.npz` makes process 0 write the final state (gathered from every
process) and the losses, for comparisons.

The mesh is `data x model` (`--model` devices per model group, the rest data): every
kernel is split over both axes where its shape allows (FSDP over `data`, Megatron over
`model`), the batch over `data`; optimizer state leaves live where their parameters
live (`lars_jax.sharding.state_shardings`). Flax computes batch-norm statistics over
the global batch: arrays inside `jit` are global, so nothing needs an `axis_name`.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import subprocess
import sys
import time

import numpy as np

IMAGE, CHANNELS, CLASSES, DATASET = 8, 4, 8, 4096


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ckpt-dir", required=True, help="one directory all processes share")
  p.add_argument("--steps", type=int, default=10, help="length of the run (lr schedule)")
  p.add_argument("--stop-at", type=int, default=None, help="stop early (a preemption)")
  p.add_argument("--save-every", type=int, default=5)
  p.add_argument("--log-every", type=int, default=5)
  p.add_argument("--batch", type=int, default=32, help="global batch size")
  p.add_argument("--model", type=int, default=1, help="size of the 'model' mesh axis")
  p.add_argument(
    "--model-across-processes",
    action="store_true",
    help="'model' groups span processes (each process then loads every row)",
  )
  p.add_argument("--out", default=None, help="process 0 writes the final state here (.npz)")
  p.add_argument("--local-processes", type=int, default=None, help="launch N local workers")
  p.add_argument("--local-devices", type=int, default=1, help="CPU devices per local worker")
  p.add_argument("--coordinator", default=None, help=argparse.SUPPRESS)  # set by launcher
  p.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


# ----------------------------------------------------------------------------
# One machine: start N workers joined on 127.0.0.1 and relay their output.


def launch(args: argparse.Namespace, argv: list[str]) -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
  n = args.local_processes
  own, skip = [], False  # the worker's arguments: argv without the launcher's own
  for a in argv:
    if not skip and not a.startswith(("--local-processes", "--local-devices")):
      own.append(a)
    skip = a in ("--local-processes", "--local-devices")
  procs = [
    subprocess.Popen(
      [sys.executable, __file__, *own, f"--coordinator=127.0.0.1:{port}", f"--process-id={i}"],
      env=env | {"POD_TRAIN_NUM_PROCESSES": str(n)},
    )
    for i in range(n)
  ]
  return max(p.wait() for p in procs)


# ----------------------------------------------------------------------------
# The worker: the same code on a pod host and on a local process.


def worker(args: argparse.Namespace) -> None:
  import jax

  if args.coordinator:  # local processes
    n = int(os.environ["POD_TRAIN_NUM_PROCESSES"])
    jax.distributed.initialize(args.coordinator, num_processes=n, process_id=args.process_id)
  else:  # a pod: coordinator, process count and id from the environment
    jax.distributed.initialize()
  train(args)


def train(args: argparse.Namespace) -> None:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax
  import orbax.checkpoint as ocp
  from jax.experimental import multihost_utils
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  import lars_jax
  import lars_jax.sharding

  pid = jax.process_index()

  def log(msg: str) -> None:
    if pid == 0:
      print(msg, flush=True)

  # -- mesh: data x model over every process's devices ------------------------
  devices = np.array(jax.devices())  # all processes' devices, process by process
  n_model = args.model
  if args.model_across_processes:  # device k of each process in one model group
    grid = devices.reshape(n_model, -1).T
  else:  # the usual pod layout: model groups within a host
    grid = devices.reshape(-1, n_model)
  mesh = Mesh(grid, ("data", "model"))
  log(f"{jax.process_count()} processes, {jax.device_count()} devices, mesh {dict(mesh.shape)}")

  # -- model: a CNN with batch norm, kernels split over data (FSDP) and model --
  def split(init, *axes):
    return nn.with_partitioning(init, axes)

  kernel, zeros, ones = nn.initializers.lecun_normal(), nn.initializers.zeros, nn.initializers.ones

  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
      for i, (features, spec) in enumerate(
        [(16, (None, None, None, "model")), (32, (None, None, "data", "model"))]
      ):
        x = nn.Conv(
          features, (3, 3), use_bias=False, kernel_init=split(kernel, *spec), name=f"Conv_{i}"
        )(x)  # no bias before batch norm
        x = nn.BatchNorm(
          use_running_average=not train,
          momentum=0.9,
          scale_init=split(ones, "model"),
          bias_init=split(zeros, "model"),
          name=f"BatchNorm_{i}",
        )(x)
        x = nn.relu(x)
      x = x.mean(axis=(1, 2))
      x = nn.Dense(64, kernel_init=split(kernel, "data", "model"), bias_init=split(zeros, "model"))(
        x
      )
      x = nn.relu(x)
      return nn.Dense(CLASSES, kernel_init=split(kernel, "model", "data"))(x)

  model = CNN()
  exclude = lars_jax.masks.exclude_names("bias", "BatchNorm")
  lr = optax.warmup_cosine_decay_schedule(0.0, 2.0, warmup_steps=2, decay_steps=args.steps)
  tx = lars_jax.lars(
    lr,
    weight_decay=1e-4,
    weight_decay_mask=exclude,
    trust_coefficient=0.02,
    trust_ratio_mask=exclude,
    momentum=0.9,
    keep_stats=True,
  )

  # -- shardings of the whole train state, from the model's annotations ------
  x0 = jnp.zeros((1, IMAGE, IMAGE, CHANNELS))
  boxed = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x0)
  replicated = NamedSharding(mesh, P())
  param_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), nn.get_partition_spec(boxed["params"]))
  abstract_params = jax.tree.map(
    lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
    nn.unbox(boxed["params"]),
    param_sh,
  )
  state_sh = {
    "step": replicated,
    "params": param_sh,
    "batch_stats": jax.tree.map(lambda _: replicated, boxed["batch_stats"]),
    "opt_state": lars_jax.sharding.state_shardings(tx, abstract_params),
  }

  def init_state(key):
    variables = nn.unbox(model.init(key, x0, train=False))
    return {
      "step": jnp.zeros([], jnp.int32),
      "params": variables["params"],
      "batch_stats": variables["batch_stats"],
      "opt_state": tx.init(variables["params"]),
    }

  def train_step(state, x, y):
    def loss_fn(params):
      logits, new = model.apply(
        {"params": params, "batch_stats": state["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, new["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {
      "step": state["step"] + 1,
      "params": optax.apply_updates(state["params"], updates),
      "batch_stats": batch_stats,
      "opt_state": opt_state,
    }, loss

  data_sh = NamedSharding(mesh, P("data"))
  step_fn = jax.jit(
    train_step,
    in_shardings=(state_sh, data_sh, data_sh),
    out_shardings=(state_sh, replicated),
    donate_argnums=0,
  )

  # -- data: each process loads only the rows its devices hold ----------------
  rows = process_rows(data_sh, args.batch)
  data_x, data_y = dataset()

  def global_batch(step):
    start = (step * args.batch) % DATASET
    idx = start + rows  # this process's rows of the global batch
    return (
      jax.make_array_from_process_local_data(data_sh, data_x[idx], (args.batch, *data_x.shape[1:])),
      jax.make_array_from_process_local_data(data_sh, data_y[idx], (args.batch,)),
    )

  print(
    f"[process {pid}] loads rows {compact(rows)} of each global batch of {args.batch}", flush=True
  )

  # -- checkpoints: every process calls save/restore on the same directory ----
  options = ocp.CheckpointManagerOptions(max_to_keep=2)
  with ocp.CheckpointManager(os.path.abspath(args.ckpt_dir), options=options) as mngr:
    latest = mngr.latest_step()
    if latest is None:
      state = jax.jit(init_state, out_shardings=state_sh)(jax.random.key(0))
    else:
      target = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
        jax.eval_shape(init_state, jax.random.key(0)),
        state_sh,
      )
      state = mngr.restore(latest, args=ocp.args.StandardRestore(target))
      log(f"restored step {latest} from {args.ckpt_dir}")

    losses = []
    stop = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
    t0 = time.perf_counter()
    for step in range(int(state["step"]), stop):
      state, loss = step_fn(state, *global_batch(step))
      losses.append(float(loss))
      if (step + 1) % args.save_every == 0 or step + 1 == stop:  # written in the background
        mngr.save(step + 1, args=ocp.args.StandardSave(state))
      if (step + 1) % args.log_every == 0 or step + 1 == stop:
        stats = lars_jax.layer_stats(state["opt_state"])  # replicated scalars: no collective
        ratios = "  ".join(
          f"{k.split('/', 1)[1]} {v:.3g}" for k, v in stats.items() if k.startswith("trust_ratio/")
        )
        log(f"step {step + 1:3d}  loss {losses[-1]:.6f}  trust ratio: {ratios}")
    mngr.wait_until_finished()
  log(
    f"trained steps {stop - len(losses)}..{stop} in {time.perf_counter() - t0:.1f} s; "
    f"checkpoints at {mngr.all_steps()}"
  )

  if args.out:
    # Each process holds only its shards: gather (a collective, every process calls it).
    full = multihost_utils.process_allgather(state, tiled=True)
    if pid == 0:
      flat = {
        lars_jax.masks.path_str(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(full)
      }
      np.savez(args.out, losses=np.asarray(losses, np.float32), **flat)


def process_rows(sharding, batch: int) -> np.ndarray:
  """The rows of a global batch that this process's devices hold, in the order
  `jax.make_array_from_process_local_data` expects them: its distinct row blocks,
  ascending. With 'model' within a process that is a contiguous block of
  batch / n_processes rows; with 'model' across processes every process loads all rows."""
  blocks = sorted(
    {
      idx[0].indices(batch)[:2]
      for idx in sharding.addressable_devices_indices_map((batch,)).values()
    }
  )
  return np.concatenate([np.arange(a, b) for a, b in blocks])


def compact(rows: np.ndarray) -> str:
  """'0-15' for a contiguous run of row numbers, else the runs joined by commas."""
  breaks = np.flatnonzero(np.diff(rows) != 1)
  runs = np.split(rows, breaks + 1)
  return ",".join(f"{r[0]}-{r[-1]}" for r in runs)


def dataset() -> tuple[np.ndarray, np.ndarray]:
  """A fixed synthetic image set (the same on every host, as files would be)."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((DATASET, IMAGE, IMAGE, CHANNELS)).astype(np.float32)
  teacher = rng.standard_normal((CHANNELS, CLASSES))
  y = np.argmax(x.mean(axis=(1, 2)) @ teacher, axis=1).astype(np.int32)
  return x, y


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.local_processes is not None:
    return launch(args, argv)
  worker(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
