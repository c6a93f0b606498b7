"""lars_jax across 2 local processes joined by `jax.distributed` (CPU, gloo collectives).

`python tests/distributed/multi_process.py` is the launcher: it picks a free loopback
port and starts 2 workers (`--worker I --port P`), each with 4 virtual CPU devices, so the
global mesh has 8 devices, 4 per process. Every worker prints `PASS name` / `FAIL name`
lines (prefixed with its process id); the launcher echoes them and exits non-zero if a
worker fails or hangs.

In each worker:
- pjit: a sharded jitted train step on two global meshes: `model` split across the two
  processes (norm all-reduces cross the process boundary) and `model` within a process
  (`data` across processes, the usual pod layout);
- shard_map: the Megatron MLP with `axis_name` (per-leaf names and the PartitionSpec
  tree), `model` across processes;
and every step's params and momentum, shard by shard as this process holds them, equal
the single-process NumPy reference (rtol 1e-5).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

NUM_PROCESSES = 2
LOCAL_DEVICES = 4
TIMEOUT_S = 240


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch() -> int:
  port = free_port()
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
  env["JAX_PLATFORMS"] = "cpu"
  procs = [
    subprocess.Popen(
      [sys.executable, __file__, "--worker", str(i), "--port", str(port)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(NUM_PROCESSES)
  ]
  deadline = time.monotonic() + TIMEOUT_S
  codes = []
  for i, proc in enumerate(procs):
    try:
      out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      out, _ = proc.communicate()
      print(f"FAIL worker {i} timed out after {TIMEOUT_S}s")
    codes.append(proc.returncode)
    for line in out.splitlines():
      # gloo/absl chatter stays out unless something failed.
      if codes[-1] != 0 or line.startswith(("PASS", "FAIL", "[p")):
        print(f"[p{i}] {line}" if not line.startswith("[p") else line)
  print(f"worker exit codes: {codes}")
  return 0 if all(c == 0 for c in codes) else 1


def worker(process_id: int, port: int) -> int:
  import jax

  jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=NUM_PROCESSES,
    process_id=process_id,
  )
  import _common as C
  import numpy as np
  from jax.sharding import AxisType, Mesh

  C.require_devices(NUM_PROCESSES * LOCAL_DEVICES)
  assert jax.local_device_count() == LOCAL_DEVICES, jax.local_devices()
  assert jax.process_count() == NUM_PROCESSES
  devices = np.array(jax.devices()).reshape(NUM_PROCESSES, LOCAL_DEVICES)
  auto = (AxisType.Auto, AxisType.Auto)
  explicit = (AxisType.Explicit, AxisType.Explicit)
  # mesh[d, m]: `model` pairs device k of process 0 with device k of process 1.
  across = devices.T
  # `data` across processes, `model` within one.
  within = devices

  def spans(mesh, axis):
    """Whether moving along `axis` changes process (for the record)."""
    procs = {d.process_index for d in np.take(mesh.devices, 0, axis=1 - axis).flat}
    return len(procs) > 1

  def pjit_across():
    mesh = Mesh(across, ("data", "model"), axis_types=auto)
    assert spans(mesh, 1) and not spans(mesh, 0)
    C.pjit_run(mesh)

  def pjit_within():
    mesh = Mesh(within, ("data", "model"), axis_types=auto)
    assert spans(mesh, 0) and not spans(mesh, 1)
    C.pjit_run(mesh)

  def shard_map_across():
    mesh = Mesh(across, ("data", "model"), axis_types=explicit)
    C.sm_check(mesh)

  code = C.run_checks(
    {
      "mp_pjit_model_across": pjit_across,
      "mp_pjit_model_within": pjit_within,
      "mp_shard_map": shard_map_across,
    }
  )
  jax.distributed.shutdown()
  return code


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--worker", type=int, default=None, help="process id (internal)")
  parser.add_argument("--port", type=int, default=None, help="coordinator port (internal)")
  args = parser.parse_args()
  if args.worker is None:
    return launch()
  return worker(args.worker, args.port)


if __name__ == "__main__":
  sys.exit(main())
