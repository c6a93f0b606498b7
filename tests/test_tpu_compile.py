"""benchmarks/tpu_compile.py: the HBM counter on hand-written HLO, and a real TPU compile.

The counter tests run everywhere. The compile tests need libtpu (``pip install
"lars_jax[tpu-aot]"``), which compiles for a TPU topology without a TPU; they skip
with that reason otherwise. They compile a 4-leaf tree for v5e:2x2 (a few seconds).
"""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not installed: run from the repository
  sys.path.insert(0, str(ROOT))

from benchmarks import tpu_compile as tc  # noqa: E402

# A prefetch of p1 into on-chip memory (S(1)), a sliced prefetch of a quarter of p0,
# a two-output reduction, an all-reduce that stays on chip, and the update.
HLO = """HloModule m, is_scheduled=true

%f (a: f32[1024], b: f32[1024]) -> (f32[], f32[]) {
  ROOT %t = (f32[]{:T(128)}, f32[]{:T(128)}) tuple(%a, %b)
}

ENTRY %main (p0: f32[1024], p1: f32[1024]) -> f32[1000] {
  %p0 = f32[1024]{0:T(1024)} parameter(0), metadata={op_name="p[0]"}
  %p1 = f32[1024]{0:T(1024)} parameter(1)
  %copy-start = (f32[1024]{0:T(1024)S(1)}, f32[1024]{0:T(1024)}, u32[]{:S(2)}) copy-start(%p1)
  %slice-start = ((f32[1024]{0:T(1024)}), f32[256]{0:T(1024)S(1)}, s32[]{:S(2)}) slice-start(%p0)
  %copy-done = f32[1024]{0:T(1024)S(1)} copy-done(%copy-start)
  %slice-done = f32[256]{0:T(1024)S(1)} slice-done(%slice-start)
  %r = (f32[]{:T(128)}, f32[]{:T(128)}) fusion(%p0, %copy-done), kind=kLoop, calls=%f
  %g = f32[]{:T(128)} get-tuple-element(%r), index=0
  %v = f32[2]{0:T(128)S(1)} fusion(%g), kind=kLoop, calls=%f
  %ars = f32[2]{0:T(128)S(1)} all-reduce-start(%v), replica_groups={}
  %ard = f32[2]{0:T(128)S(1)} all-reduce-done(%ars)
  ROOT %out = f32[1000]{0:T(1024)} fusion(%p0, %copy-done, %slice-done, %ard), kind=kLoop, calls=%f
}
"""


def test_counts_only_what_touches_hbm():
  c = tc.count_hlo(HLO)
  # copy-start: its HBM source (4 KiB), not its on-chip destination.
  # slice-start: the slice read from HBM (256 floats), destination on chip.
  # %r: p0 from HBM, copy-done on chip, two f32 scalars written. %v: reads one of
  # them, writes on chip. The all-reduce: on chip. %out: p0 again, 1000 floats out.
  assert c.hbm_bytes == 4096 + 1024 + (4096 + 8) + 4 + 0 + (4096 + 4000)
  # Tiled: a scalar occupies a 128-element tile, f32[256] and f32[1000] 1024 elements.
  assert c.hbm_padded_bytes == 4096 + 4096 + (4096 + 2 * 512) + 512 + 0 + (4096 + 4096)
  assert c.fusions == 3
  assert c.collectives == {
    "all-reduce": 1,
    "all-gather": 0,
    "reduce-scatter": 0,
    "all-to-all": 0,
    "collective-permute": 0,
  }


def test_parse_shape_memory_space_and_tiles():
  (a,) = tc.parse_shape("f32[3,3,512,512]{3,2,1,0:T(8,128)S(1)}")
  assert (a.dtype, a.dims, a.space, a.tile) == ("f32", (3, 3, 512, 512), 1, (8, 128))
  b, c = tc.parse_shape("(bf16[7,100]{1,0:T(8,128)(2,1)}, pred[]{:T(512)})")
  assert (b.space, b.bytes, b.padded_bytes) == (0, 1400, 2 * 8 * 128)
  assert (c.dims, c.bytes) == ((), 1)


def test_fsdp_spec_takes_the_largest_divisible_dim():
  assert tc.fsdp_spec((3, 3, 64, 256), 64, "fsdp") == [None, None, None, "fsdp"]
  assert tc.fsdp_spec((1000,), 64, "fsdp") == [None]  # not divisible: replicated
  assert tc.fsdp_spec((768, 12, 64), 4, "fsdp", skip=(0,)) == [None, None, "fsdp"]


needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason='libtpu is not installed (pip install "lars_jax[tpu-aot]" compiles for TPU here)',
)

SMALL = {
  "dense": {"kernel": (512, 1024), "bias": (1024,)},
  "norm": {"scale": (1024,)},
  "out": {"kernel": (1024, 256)},
}


@pytest.fixture(scope="module")
def devices():
  return tc.topology_devices("v5e:2x2")


def _row(devices, layout, name):
  params, sh = tc.abstract_tree(SMALL, layout, devices)
  tx = tc.candidates([name])[name]()
  return tc.measure(tx, params, sh, layout=layout.name, tree="small", name=name)


@needs_libtpu
def test_sgd_momentum_is_20_bytes_per_param(devices):
  row = _row(devices, tc.LAYOUTS["2x2"], "sgd-momentum")
  assert row.bytes_per_param == 20.0  # read w, g, t; write w, t: validates the count
  assert row.temp_bytes == 0
  assert row.fusions == 4  # one per leaf


@needs_libtpu
def test_lars_compiles_for_tpu_within_the_two_pass_bound(devices):
  row = _row(devices, tc.LAYOUTS["2x2"], "lars_jax.lars")
  # Norm pass (w, g) plus update pass (w, g, t in; w, t out) is at most 28 B/param.
  assert 20.0 <= row.bytes_per_param <= 28.5
  assert row.temp_bytes >= 0 and row.fusions > 4
  assert sum(row.collectives.values()) == 0  # replicated: nothing to sum


@needs_libtpu
def test_lars_under_fsdp_sums_all_norms_in_one_all_reduce(devices):
  fsdp4 = tc.Layout("v5e:2x2, FSDP", "v5e:2x2", (4,), ("fsdp",), "fsdp")
  row = _row(devices, fsdp4, "lars_jax.lars")
  assert row.collectives["all-reduce"] == 1
  assert row.collectives["all-gather"] == 0
