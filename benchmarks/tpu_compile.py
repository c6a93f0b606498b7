"""The optimizer step as the TPU compiler builds it, without a TPU.

libtpu compiles for a TPU topology on any machine: `get_topology_desc("v5e:2x2")`
gives TPU devices, and a step lowered on `jax.ShapeDtypeStruct`s sharded over them
compiles with the real TPU compiler. Nothing runs; what we read is the compiler's
plan: `memory_analysis()` (per-chip temporaries) and the optimized HLO (fusions,
collectives, and the HBM traffic counted from the ENTRY computation, below).

Usage (from the repository root, with ``pip install "lars_jax[tpu-aot]"``):

    python -m benchmarks.tpu_compile                       # the tables of RESULTS.md
    python -m benchmarks.tpu_compile --trees resnet50 --layouts 2x2
    python -m benchmarks.tpu_compile --variants            # part 2: alternative LARS steps
    python -m benchmarks.tpu_compile --json out.json

**HBM traffic.** ``cost_analysis()['bytes accessed']`` counts the compiler's
asynchronous moves between HBM and on-chip memory as if both ends were HBM. We count
instead, in the ENTRY computation of the optimized HLO, only what touches HBM (a shape
is on-chip when its layout carries ``S(n)`` with n > 0): every instruction's HBM
operands and HBM results; a ``copy-start`` its source if in HBM (a prefetch) and its
destination if in HBM (an eviction); a ``slice-start`` the slice's size if its operand
is in HBM, plus its destination if in HBM; ``*-done``, ``parameter``, ``bitcast``,
``get-tuple-element``, ``tuple`` and ``opt-barrier`` nothing. Logical sizes, without
tile padding (reported on its own). SGD-momentum then comes out at exactly 20 bytes
per parameter (read w, g, t; write w, t) on every tree: that validates the count.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import lars_jax
from benchmarks import harness
from benchmarks import trees as trees_lib

# Nothing runs on a TPU here, so several compiling processes may share libtpu (it
# otherwise takes a machine-wide lock file at start-up).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

OPTIMIZERS = (
  "sgd-momentum",
  "optax.lars",
  "lars_jax.lars",
  "lars_jax.tf_lars",
  "lars_jax.torch_lars",
)

# ----------------------------------------------------------------------------
# Layouts: a topology, a mesh over its chips, and a rule that shards each leaf.


@dataclasses.dataclass(frozen=True)
class Layout:
  name: str
  topology: str  # libtpu topology name
  mesh_shape: tuple[int, ...]
  axes: tuple[str, ...]
  rule: str  # "replicated", "fsdp" or "megatron"


LAYOUTS = {
  "2x2": Layout("v5e:2x2, replicated", "v5e:2x2", (4,), ("data",), "replicated"),
  "8x8-fsdp": Layout("v5e:8x8, FSDP", "v5e:8x8", (64,), ("fsdp",), "fsdp"),
  "16x16-fsdp": Layout("v5e:16x16, FSDP", "v5e:16x16", (256,), ("fsdp",), "fsdp"),
  "8x8-megatron": Layout(
    "v5e:8x8, Megatron 4 x FSDP 16", "v5e:8x8", (16, 4), ("fsdp", "model"), "megatron"
  ),
  "16x16-megatron": Layout(
    "v5e:16x16, Megatron 4 x FSDP 64", "v5e:16x16", (64, 4), ("fsdp", "model"), "megatron"
  ),
}


def fsdp_spec(shape: tuple[int, ...], n: int, axis: str, skip: tuple[int, ...] = ()) -> list:
  """Shard the largest dimension divisible by `n` over `axis` (first on ties); else none."""
  spec: list = [None] * len(shape)
  best = -1
  for d, size in enumerate(shape):
    if d not in skip and size % n == 0 and (best < 0 or size > shape[best]):
      best = d
  if best >= 0:
    spec[best] = axis
  return spec


# Megatron (tensor-parallel) split of a transformer block, by leaf name: attention heads
# and the MLP's hidden dimension over 'model' (query/key/value and fc1 column-parallel,
# out and fc2 row-parallel). The remaining largest divisible dimension goes to 'fsdp'.
MEGATRON = {
  ("query", "kernel"): 1,
  ("key", "kernel"): 1,
  ("value", "kernel"): 1,
  ("query", "bias"): 0,
  ("key", "bias"): 0,
  ("value", "bias"): 0,
  ("out", "kernel"): 0,
  ("fc1", "kernel"): 1,
  ("fc1", "bias"): 0,
  ("fc2", "kernel"): 0,
}


def leaf_spec(layout: Layout, path: tuple[str, ...], shape: tuple[int, ...]) -> P:
  if layout.rule == "replicated":
    return P()
  sizes = dict(zip(layout.axes, layout.mesh_shape))
  if layout.rule == "fsdp":
    return P(*fsdp_spec(shape, sizes["fsdp"], "fsdp"))
  model_dim = MEGATRON.get(tuple(path[-2:]))
  if model_dim is None:
    return P(*fsdp_spec(shape, sizes["fsdp"], "fsdp"))
  spec = fsdp_spec(shape, sizes["fsdp"], "fsdp", skip=(model_dim,))
  assert shape[model_dim] % sizes["model"] == 0, (path, shape)
  spec[model_dim] = "model"
  return P(*spec)


def applies(layout: Layout, tree: str) -> bool:
  """Megatron splits transformer blocks; ResNet-50 has none."""
  return layout.rule != "megatron" or tree != "resnet50"


# ----------------------------------------------------------------------------
# Trees: ResNet-50 and ViT-B/16 from trees.py, and a ~1B-parameter decoder.


def transformer_1b_shapes(
  depth: int = 18, d: int = 2048, heads: int = 16, mlp: int = 8192, vocab: int = 32768
) -> trees_lib.Shapes:
  """A GPT-style decoder, 1,040,670,720 params in 292 leaves (flax layout, untied head)."""
  tree: trees_lib.Shapes = {"embed": {"embedding": (vocab, d)}}
  for i in range(depth):
    tree[f"block_{i}"] = trees_lib.transformer_block(d, heads, mlp)
  tree["final_norm"] = {"scale": (d,), "bias": (d,)}
  tree["head"] = {"kernel": (d, vocab)}
  return tree


TREES: dict[str, Callable[[], trees_lib.Shapes]] = {
  "resnet50": trees_lib.resnet50_shapes,
  "vit_b16": trees_lib.vit_b16_shapes,
  "transformer_1b": transformer_1b_shapes,
}

# ----------------------------------------------------------------------------
# Counting the optimized HLO.

DTYPE_BYTES = {
  "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
  "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
  "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16, "token": 0,
}  # fmt: skip
_ARRAY = re.compile(r"([a-z]\w*)\[([\d,]*)\](?:\{([^}]*)\})?")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
NO_TRAFFIC = {"parameter", "bitcast", "get-tuple-element", "tuple", "opt-barrier", "after-all"}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass
class Array:
  dtype: str
  dims: tuple[int, ...]
  space: int  # memory space: 0 = HBM
  tile: tuple[int, ...]

  @property
  def bytes(self) -> float:
    return math.prod(self.dims) * DTYPE_BYTES.get(self.dtype, 4)

  @property
  def padded_bytes(self) -> float:
    dims = list(self.dims) or [1]
    for k, t in enumerate(reversed(self.tile)):
      if k < len(dims):
        dims[-1 - k] = -(-dims[-1 - k] // t) * t
    return math.prod(dims) * DTYPE_BYTES.get(self.dtype, 4)


def parse_shape(text: str) -> list[Array]:
  out = []
  for dtype, dims, layout in _ARRAY.findall(text):
    layout = layout or ""
    space = re.search(r"S\((\d+)\)", layout)
    tile = re.search(r"T\(([\d,]+)\)", layout)
    out.append(
      Array(
        dtype,
        tuple(int(x) for x in dims.split(",") if x),
        int(space.group(1)) if space else 0,
        tuple(int(x) for x in tile.group(1).split(",")) if tile else (),
      )
    )
  return out


def _balanced(text: str, start: int) -> int:
  """Index just past the parenthesis group opening at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      return i + 1
  raise ValueError(f"unbalanced HLO: {text[start : start + 80]}")


@dataclasses.dataclass
class Instr:
  name: str
  shape: list[Array]
  opcode: str
  operands: list[str]
  attrs: str


def entry_instructions(hlo: str) -> list[Instr]:
  entry = hlo[hlo.index("\nENTRY") :]
  entry = entry[: entry.index("\n}")]
  out = []
  for line in entry.splitlines()[1:]:
    m = _INSTR.match(line)
    if not m:
      continue
    name, rest = m.groups()
    end = _balanced(rest, 0) if rest.startswith("(") else rest.index(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    op = rest.index("(")
    close = _balanced(rest, op)
    operands = re.findall(r"%([\w.\-]+)", rest[op:close])
    out.append(Instr(name, parse_shape(shape), rest[:op], operands, rest[close:]))
  return out


@dataclasses.dataclass
class HloCount:
  hbm_bytes: float = 0.0
  hbm_padded_bytes: float = 0.0
  fusions: int = 0
  collectives: dict[str, int] = dataclasses.field(default_factory=dict)
  loops: int = 0  # while/call/conditional in ENTRY (their bodies are not counted)
  hbm_temps: list[tuple[str, str, float]] = dataclasses.field(default_factory=list)


def count_hlo(hlo: str) -> HloCount:
  instrs = entry_instructions(hlo)
  shapes = {i.name: i.shape for i in instrs}
  c = HloCount(collectives={k: 0 for k in COLLECTIVES})

  def add(arrays: list[Array]) -> None:
    for a in arrays:
      if a.space == 0:
        c.hbm_bytes += a.bytes
        c.hbm_padded_bytes += a.padded_bytes

  for ins in instrs:
    op = ins.opcode
    base = op.removesuffix("-start").removesuffix("-done")
    if base in COLLECTIVES and not op.endswith("-done"):
      c.collectives[base] += 1
    if op == "async-start":
      called = re.search(r"calls=%([\w.\-]+)", ins.attrs)
      for coll in COLLECTIVES:
        if called and coll.replace("-", "_") in called.group(1).replace("-", "_"):
          c.collectives[coll] += 1
    if op == "fusion":
      c.fusions += 1
    if op in ("while", "call", "conditional"):
      c.loops += 1
    if op in NO_TRAFFIC or op.endswith("-done") or op == "constant":
      continue
    operands = [a for o in ins.operands for a in shapes.get(o, [])]
    if op == "copy-start":  # (destination, source, context)
      add(operands[:1])
      add(ins.shape[:1])
    elif op == "slice-start":  # ((source), destination, context)
      dest = ins.shape[len(operands)]
      if operands[0].space == 0:  # read: the slice's size, from HBM
        add([dataclasses.replace(dest, space=0)])
      add([dest])
    elif op.endswith("-start") or op == "async-start":
      # Async collectives: the result tuple may repeat the operands before the outputs.
      res = ins.shape
      if len(res) > len(operands) and [r.dims for r in res[: len(operands)]] == [
        o.dims for o in operands
      ]:
        res = res[len(operands) :]
      add(operands)
      add([r for r in res if r.dtype not in ("u32", "s32") or r.dims])
    else:
      add(operands)
      add(ins.shape)
      for a in ins.shape:
        if a.space == 0 and a.bytes >= 1 << 20:
          c.hbm_temps.append((ins.name, op, a.bytes))
  return c


# ----------------------------------------------------------------------------
# Compiling a step.


def topology_devices(topology: str) -> list:
  from jax.experimental import topologies

  return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)


def abstract_tree(shapes: trees_lib.Shapes, layout: Layout, devices: list) -> tuple[Any, Any]:
  mesh = Mesh(np.array(devices).reshape(layout.mesh_shape), layout.axes)
  flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=trees_lib.is_shape)
  shardings, structs = [], []
  for path, shape in flat:
    names = tuple(str(getattr(k, "key", k)) for k in path)
    sh = NamedSharding(mesh, leaf_spec(layout, names, shape))
    shardings.append(sh)
    structs.append(jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sh))
  return treedef.unflatten(structs), treedef.unflatten(shardings)


def per_chip_param_bytes(params: Any) -> int:
  total = 0
  for p in jax.tree.leaves(params):
    total += 4 * math.prod(p.sharding.shard_shape(p.shape))
  return total


def compile_step(tx: optax.GradientTransformation, params: Any, param_sh: Any):
  """The donated step `params, state = step(params, state, grads)`, compiled for TPU."""
  state = lars_jax.sharding.abstract_state(tx, params, param_sh)  # the rest replicated
  state_sh = jax.tree.map(lambda s: s.sharding, state)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  jitted = jax.jit(step, donate_argnums=(0, 1), out_shardings=(param_sh, state_sh))
  return jitted.lower(params, state, params).compile()


@dataclasses.dataclass
class Row:
  layout: str
  tree: str
  optimizer: str
  params: int  # whole model
  chip_param_bytes: int
  temp_bytes: int
  hbm_bytes: float
  hbm_padded_bytes: float
  fusions: int
  collectives: dict[str, int]
  compile_s: float
  big_temps: list

  @property
  def temp_pct(self) -> float:
    return 100.0 * self.temp_bytes / self.chip_param_bytes

  @property
  def bytes_per_param(self) -> float:
    return self.hbm_bytes / (self.chip_param_bytes / 4)

  @property
  def padding_pct(self) -> float:
    return 100.0 * (self.hbm_padded_bytes / self.hbm_bytes - 1.0)


def measure(
  tx: optax.GradientTransformation, params: Any, param_sh: Any, *, layout: str, tree: str, name: str
) -> Row:
  t0 = time.perf_counter()
  exe = compile_step(tx, params, param_sh)
  secs = time.perf_counter() - t0
  mem = exe.memory_analysis()
  count = count_hlo(exe.as_text())
  if count.loops:
    warnings.warn(
      f"{name} on {tree}, {layout}: {count.loops} loops in ENTRY, not counted", stacklevel=2
    )
  return Row(
    layout=layout,
    tree=tree,
    optimizer=name,
    params=sum(math.prod(p.shape) for p in jax.tree.leaves(params)),
    chip_param_bytes=per_chip_param_bytes(params),
    temp_bytes=int(mem.temp_size_in_bytes),
    hbm_bytes=count.hbm_bytes,
    hbm_padded_bytes=count.hbm_padded_bytes,
    fusions=count.fusions,
    collectives=count.collectives,
    compile_s=secs,
    big_temps=count.hbm_temps,
  )


# ----------------------------------------------------------------------------
# Part 2: alternative LARS steps (prototypes; f32, lars_jax.lars's numbers with
# masks.min_ndim(2) for decay and adaptation, lr 0.1, momentum 0.9, wd 1e-4).


def lars_variant(norm: str = "barrier", ratio: str = "vector") -> optax.GradientTransformation:
  """`lars_jax.lars` written out, with one choice changed at a time.

  norm: how ||g + wd w|| is computed: "barrier" (lars_jax today: a recomputation
    g - (-wd) w with (-wd, w) behind an optimization_barrier), "recompute" (the same
    without the barrier), "shared" (the norm of the decayed update itself, as the
    chain of add_decayed_weights and scale_by_trust_ratio), "platform" (the barrier
    when lowering for CPU, the shared update elsewhere: `lax.platform_dependent`).
  ratio: "vector" (lars_jax today: all norms stacked, one vector of ratios), or
    "leaf" (each leaf's ratio from its own two scalars, nothing stacked).
  """
  lr, wd, mu, eta = harness.LR, harness.WD, harness.MOMENTUM, 0.001

  def init_fn(params):
    return optax.TraceState(trace=jax.tree.map(jnp.zeros_like, params))

  def update_fn(grads, state, params):
    g_l, treedef = jax.tree.flatten(grads)
    w_l, t_l = treedef.flatten_up_to(params), treedef.flatten_up_to(state.trace)
    us, sq = [], []
    for g, w in zip(g_l, w_l):
      if w.ndim < 2:
        us.append(g)
        sq.append(None)
        continue
      u = g + wd * w
      if norm == "shared":
        src = u
      elif norm == "recompute":
        src = g - (-wd) * w
      elif norm == "barrier":
        src = _barrier_source(g, w, wd)
      else:  # "platform": the barrier where it helps (XLA CPU), nothing elsewhere
        src = jax.lax.platform_dependent(
          g, w, cpu=lambda g, w: _barrier_source(g, w, wd), default=lambda g, w: g + wd * w
        )
      us.append(u)
      sq.append((jnp.sum(w * w), jnp.sum(src * src)))
    kept = [k for k, s in enumerate(sq) if s is not None]
    ratios: list[Any] = [None] * len(us)
    if ratio == "vector":
      pn = jnp.sqrt(jnp.stack([sq[k][0] for k in kept]))
      un = jnp.sqrt(jnp.stack([sq[k][1] for k in kept]))
      zero = (pn == 0) | (un == 0)
      r = jnp.where(zero, 1.0, eta * pn / jnp.where(zero, 1.0, un))
      for j, k in enumerate(kept):
        ratios[k] = r[j]
    else:
      for k in kept:
        pn, un = jnp.sqrt(sq[k][0]), jnp.sqrt(sq[k][1])
        zero = (pn == 0) | (un == 0)
        ratios[k] = jnp.where(zero, 1.0, eta * pn / jnp.where(zero, 1.0, un))
    new_t, out = [], []
    for u, t, r in zip(us, t_l, ratios):
      x = -lr * (u if r is None else r * u)
      tn = x + mu * t
      new_t.append(tn)
      out.append(tn)
    return treedef.unflatten(out), optax.TraceState(trace=treedef.unflatten(new_t))

  return optax.GradientTransformation(init_fn, update_fn)


def _barrier_source(g: jax.Array, w: jax.Array, wd: float) -> jax.Array:
  """lars_jax's `_norm_source` today: g - (-wd) w, with -wd tied to the leaf by a barrier."""
  neg, _ = jax.lax.optimization_barrier((-jnp.asarray(wd, jnp.float32), w))
  return g - neg * w


def public_chain() -> optax.GradientTransformation:
  """The chain of lars_jax's public transforms (the decayed update has two users)."""
  import lars_jax

  m2 = lars_jax.masks.min_ndim(2)
  return optax.chain(
    lars_jax.add_decayed_weights(harness.WD, mask=m2),
    lars_jax.scale_by_trust_ratio(0.001, mask=m2),
    lars_jax.scale_by_learning_rate(harness.LR),
    lars_jax.trace(harness.MOMENTUM),
  )


VARIANTS: dict[str, Callable[[], optax.GradientTransformation]] = {
  "chain of public transforms": public_chain,
  "v: barrier, vector (= lars)": lambda: lars_variant("barrier", "vector"),
  "v: recompute, vector": lambda: lars_variant("recompute", "vector"),
  "v: shared, vector": lambda: lars_variant("shared", "vector"),
  "v: barrier, per leaf": lambda: lars_variant("barrier", "leaf"),
  "v: recompute, per leaf": lambda: lars_variant("recompute", "leaf"),
  "v: shared, per leaf": lambda: lars_variant("shared", "leaf"),
  "v: platform, vector": lambda: lars_variant("platform", "vector"),
}


# ----------------------------------------------------------------------------
# Output.


def fmt_bytes(b: float) -> str:
  if b == 0:
    return "0"
  for unit, s in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
    if b >= s:
      return f"{b / s:.3g} {unit}"
  return f"{b:.0f} B"


def table(rows: list[Row]) -> str:
  head = (
    "| layout, tree | optimizer | temporaries (% of per-chip params) | HBM B/param "
    "(x SGD-m) | tile padding | fusions | all-reduce / all-gather / reduce-scatter |\n"
    "|---|---|---:|---:|---:|---:|---:|"
  )
  lines = [head]
  last = None
  base: dict[tuple[str, str], float] = {}
  for r in rows:
    if r.optimizer == "sgd-momentum":
      base[(r.layout, r.tree)] = r.bytes_per_param
  for r in rows:
    key = (r.layout, r.tree)
    label = f"{r.layout}, {r.tree} ({fmt_bytes(r.chip_param_bytes)}/chip)" if key != last else ""
    last = key
    sgd = base.get(key)
    ratio = f" ({r.bytes_per_param / sgd:.2f}x)" if sgd else ""
    coll = r.collectives
    lines.append(
      f"| {label} | {r.optimizer} | {fmt_bytes(r.temp_bytes)} ({r.temp_pct:.1f}%) | "
      f"{r.bytes_per_param:.1f}{ratio} | +{r.padding_pct:.1f}% | {r.fusions} | "
      f"{coll['all-reduce']} / {coll['all-gather']} / {coll['reduce-scatter']} |"
    )
  return "\n".join(lines)


def versions() -> str:
  try:
    from importlib.metadata import version

    libtpu = version("libtpu")
  except Exception:  # noqa: BLE001
    libtpu = "?"
  return f"jax {jax.__version__}, libtpu {libtpu}, optax {optax.__version__}"


def candidates(names: list[str]) -> dict[str, Callable[[], optax.GradientTransformation]]:
  all_ = {**harness.optimizers(include_presets=True), **VARIANTS}
  missing = [n for n in names if n not in all_]
  if missing:
    raise SystemExit(f"unknown optimizers {missing}; choose from {sorted(all_)}")
  return {n: all_[n] for n in names}


def run(
  trees: list[str],
  layouts: list[str],
  builders: dict[str, Callable[[], optax.GradientTransformation]],
  verbose: bool = True,
) -> list[Row]:
  rows = []
  for lname in layouts:
    layout = LAYOUTS[lname]
    devices = topology_devices(layout.topology)
    for tname in trees:
      if not applies(layout, tname):
        continue
      params, param_sh = abstract_tree(TREES[tname](), layout, devices)
      for oname, build in builders.items():
        row = measure(build(), params, param_sh, layout=layout.name, tree=tname, name=oname)
        rows.append(row)
        if verbose:
          print(
            f"  {layout.name:32s} {tname:15s} {oname:28s} temp {fmt_bytes(row.temp_bytes):>9s} "
            f"({row.temp_pct:5.1f}%)  {row.bytes_per_param:5.1f} B/param  "
            f"fusions {row.fusions:4d}  {row.collectives}  [{row.compile_s:.1f} s]",
            file=sys.stderr,
            flush=True,
          )
  return rows


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--trees", nargs="+", default=list(TREES), choices=list(TREES))
  ap.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
  ap.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
  ap.add_argument("--variants", action="store_true", help="add the part-2 LARS variants")
  ap.add_argument("--json", help="also write the rows to this file")
  args = ap.parse_args(argv)
  builders = candidates(args.optimizers)
  if args.variants:
    builders.update(VARIANTS)
  t0 = time.perf_counter()
  rows = run(args.trees, args.layouts, builders)
  print(
    f"TPU compiler's view ({versions()}, {datetime.date.today()}); float32, donated step, "
    f"wd 1e-4, biases/norm scales neither decayed nor adapted; "
    f"{time.perf_counter() - t0:.0f} s on {harness.machine().split(',')[0]}\n"
  )
  print(table(rows))
  if args.json:
    with open(args.json, "w") as fh:
      json.dump([dataclasses.asdict(r) for r in rows], fh, indent=1)


if __name__ == "__main__":
  main()
