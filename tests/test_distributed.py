"""lars_jax under pmap, jit + NamedSharding, shard_map and multi-process jax.distributed.

JAX fixes its device count when it starts, so every multi-device check runs in a
subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=N` set before JAX is
imported: `python tests/distributed/<script>.py`. A script batches several checks (one
JAX start-up each) and prints `PASS <name>` or `FAIL <name>` plus a traceback per check;
the tests here assert on those lines and on the exit code.

What the checks compare (see tests/distributed/*.py): every step of a sharded run (params
and momentum) against a float64 NumPy LARS reference on one device and the whole batch,
rtol 1e-5; the shardings of params and optimizer state; one all-reduce for all layer
norms in the compiled HLO; and the code of the README's 'Training on pods'.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

SCRIPTS = pathlib.Path(__file__).parent / "distributed"
TIMEOUT_S = 300


def _run(script: str, devices: int | None = 8) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  if devices is not None:
    flags += f" --xla_force_host_platform_device_count={devices}"
  env["XLA_FLAGS"] = flags.strip()
  return subprocess.run(
    [sys.executable, str(SCRIPTS / script)],
    env=env,
    capture_output=True,
    text=True,
    timeout=TIMEOUT_S,
    cwd=SCRIPTS,
  )


def _outcome(proc: subprocess.CompletedProcess, name: str) -> str:
  """The `PASS name ...` line of a check, or fails the test with its traceback."""
  out = proc.stdout
  m = re.search(rf"^(?:\[p\d\] )?PASS {re.escape(name)}\b.*$", out, flags=re.M)
  if m:
    return m.group(0)
  m = re.search(
    rf"^(?:\[p\d\] )?FAIL {re.escape(name)}\b.*?(?=^(?:\[p\d\] )?(?:PASS|FAIL) |\Z)",
    out,
    flags=re.M | re.S,
  )
  detail = m.group(0) if m else f"no result for {name!r}"
  pytest.fail(f"{detail}\n--- exit code {proc.returncode}; stderr tail:\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="module")
def single_host() -> subprocess.CompletedProcess:
  return _run("single_host.py")


@pytest.mark.parametrize(
  "check",
  [
    "pmap",  # 1. data parallel, grads pmean'ed; replicas identical; = one device
    "pjit_auto",  # 2. jit + NamedSharding, 2x4 mesh, Auto axes; state sharded like params
    "pjit_explicit",  # 2. the same with explicit-sharding axes (jax.make_mesh's default)
    "init_abstract",  # 2. init on ShapeDtypeStructs, eval_shape + out_shardings, 4 GiB model
    "shard_map",  # 3. axis_name as names / PartitionSpec tree; the pitfalls differ
    "one_all_reduce",  # 5. one all-reduce for all norms in the compiled HLO
  ],
)
def test_single_host(single_host, check):
  _outcome(single_host, check)


def test_single_host_exit_code(single_host):
  assert single_host.returncode == 0, single_host.stdout + single_host.stderr[-3000:]


def test_shard_map_presets(single_host):
  """tf_lars, torch_lars and larc under shard_map equal the same preset on one device."""
  line = _outcome(single_host, "shard_map_presets")
  if "SKIPPED" in line:
    pytest.skip(line)


def test_multi_process():
  """2 processes x 4 CPU devices, jax.distributed on loopback (gloo): = one process."""
  proc = _run("multi_process.py", devices=None)  # the launcher sets 4 per worker
  for worker in ("[p0]", "[p1]"):
    for check in ("mp_pjit_model_across", "mp_pjit_model_within", "mp_shard_map"):
      if f"{worker} PASS {check}" not in proc.stdout:
        pytest.fail(f"{worker} {check} did not pass:\n{proc.stdout[-6000:]}")
  assert proc.returncode == 0, proc.stdout[-6000:]


def test_readme_pods_section_runs():
  """The code blocks of the README's 'Training on pods' run as written (8 devices)."""
  proc = _run("doc_pods.py")
  _outcome(proc, "doc_pods block 1")
  _outcome(proc, "doc_pods block 2")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def shard_map_axis_check() -> subprocess.CompletedProcess:
  return _run("shard_map_axis_check.py")


@pytest.mark.parametrize(
  "check",
  [
    "split_without_axis_name_raises",  # ValueError names the leaf, 'model' and axis_name
    "split_with_axis_name_equals_one_device",  # names per leaf / PartitionSpec tree
    "replicated_without_axis_name",  # invariant params need no axis_name
    "no_vma_is_per_shard",  # check_vma=False: no error, per-shard norm (documented)
    "presets_raise_and_work",  # tf_lars (both momenta), torch_lars, larc
    "unadapted_split_leaf_needs_no_axis_name",  # no norm taken: no error
  ],
)
def test_shard_map_without_axis_name(shard_map_axis_check, check):
  """Issue 11 §4: under shard_map with check_vma, a parameter split over a mesh axis
  that `axis_name` does not cover raises instead of silently using its slice's norm."""
  _outcome(shard_map_axis_check, check)


def test_shard_map_axis_check_exit_code(shard_map_axis_check):
  proc = shard_map_axis_check
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
