"""What the GPU compiler makes of the decode-LoRA kernels, on any machine (no GPU needed).

Runs one Llama-2-7B decode layer (batch 256, q/k/v, o, gate/up, down, through `kernels.lora.lora_apply`
as the engine calls it) with every kernel launch captured instead of run, for each variant of
DECODE_CFG in `benchmarks/lora_tune.py` LAYER_VARIANTS. Each captured launch is compiled for an NVIDIA
target (default sm_90, the H100) with the argument specialization Triton's launcher would apply to
those arguments (16-divisible ints and pointers, ints equal to 1 as constants, `do_not_specialize`
honoured), then ptxas reports registers and spills. Per launch: registers per thread, spill bytes,
shared memory, and how many global loads the software pipeliner turned into async copies (0: every
loop iteration waits for its own loads). A compile-time view, not a timing: what it says about speed
must be confirmed by `benchmarks/lora_tune.py --layer` on the GPU.

usage: python benchmarks/kernel_compile.py [--arch 90] [--out DIR] [--variants all|default]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import native_specialize_impl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels.lora as kl  # noqa: E402
from benchmarks.lora_tune import LAYER_VARIANTS, decode_case  # noqa: E402

KERNELS = [name for name in dir(kl) if name.startswith("_") and name.endswith("_kernel")]
LAUNCH_OPTIONS = ("num_warps", "num_stages")


def capture_layer(batch: int = 256, v_width: int = 256) -> list[tuple[str, object, dict, dict]]:
    """(kernel name, kernel, {param: value}, launch options) of every launch of one decode layer."""
    gen = torch.Generator().manual_seed(0)
    groups, _, pool, page_table, _, _, seg_slot, indptr, scales = decode_case(4, batch, gen, "cpu", torch.bfloat16)
    launches = []

    class Capture:
        def __init__(self, name, fn):
            self.name, self.fn = name, fn

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                params = dict(zip(self.fn.arg_names, args))
                params.update({k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS})
                opts = {k: kwargs[k] for k in LAUNCH_OPTIONS if k in kwargs}
                launches.append((self.name, self.fn, params, opts))
            return launch

    saved = {name: getattr(kl, name) for name in KERNELS}
    try:
        for name, fn in saved.items():
            setattr(kl, name, Capture(name, fn))
        plan = torch.zeros(kl.PLAN_ROWS, batch, dtype=torch.int32)
        for g in groups:
            x = torch.zeros(batch, g.K, dtype=torch.bfloat16)
            y = torch.zeros(batch, sum(g.n_out), dtype=torch.bfloat16)
            v = torch.zeros(batch, len(g.n_out), v_width)
            kl.lora_apply(y, x, v, pool, page_table, g.a_off, g.b_off, g.ranks, scales, indptr, seg_slot,
                          g.out_offsets, max_seg_len=1, aligned=True, plan=plan)
    finally:
        for name, fn in saved.items():
            setattr(kl, name, fn)
    return launches


def compile_launch(fn, params: dict, opts: dict, arch: int) -> dict:
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        value = params[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", value
            continue
        ty, key = native_specialize_impl(BaseBackend, value, False, not p.do_not_specialize, True)
        signature[p.name] = ty
        if ty == "constexpr":
            constexprs[p.name] = key
        elif key == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    k = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                       target=GPUTarget("cuda", arch, 32), options=dict(opts))
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    for exe in ("ptxas", "ptxas-blackwell"):     # the one that reads this Triton's PTX version
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", exe)
        info = subprocess.run([ptxas, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v", f.name,
                               "-o", os.devnull], capture_output=True, text=True).stderr
        if "Used " in info:
            break
    os.unlink(f.name)
    regs = next((int(line.split("Used ")[1].split(" registers")[0]) for line in info.splitlines() if "Used " in line),
                None)
    spill = next((line.strip() for line in info.splitlines() if "spill stores" in line), "")
    spill_bytes = int(spill.split(" bytes spill stores")[0].split(",")[-1]) if spill else None
    ttgir = k.asm["ttgir"]
    return dict(regs=regs, spill_store_bytes=spill_bytes, shared_bytes=k.metadata.shared,
                async_copies=ttgir.count("async_copy_global_to_local"),
                num_warps=opts.get("num_warps", 4), num_stages=opts.get("num_stages", 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--variants", choices=["all", "default"], default="all")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles the GPU launch configuration")
    default = dict(kl.DECODE_CFG)
    variants = [{}] if args.variants == "default" else [{}] + [v for v in LAYER_VARIANTS if v]
    rows, seen = [], {}
    for var in variants:
        kl.DECODE_CFG.update(default)
        kl.DECODE_CFG.update(var)
        for name, fn, params, opts in capture_layer():
            if name in ("_decode_plan_kernel", "_decode_tiles_kernel"):
                continue
            consts = {p.name: params[p.name] for p in fn.params if p.is_constexpr}
            key = (name, json.dumps(consts, sort_keys=True, default=str), json.dumps(opts, sort_keys=True))
            if key not in seen:
                seen[key] = compile_launch(fn, params, opts, args.arch)
            row = dict(variant=var, kernel=name, consts=consts, **seen[key])
            if row in rows:
                continue
            rows.append(row)
            print(f"{str(var):60s} {name:30s} regs {row['regs']:>3} spills {row['spill_store_bytes']:>5} B "
                  f"smem {row['shared_bytes']:>6} async {row['async_copies']}", flush=True)
    kl.DECODE_CFG.update(default)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        res = dict(triton=triton.__version__, arch=args.arch, default_cfg=default, rows=rows)
        (args.out / "kernel_compile.json").write_text(json.dumps(res, indent=1, default=str))
        lines = [f"# Decode-LoRA kernels as compiled for sm_{args.arch} (Triton {triton.__version__}, no GPU)", "",
                 "One Llama-2-7B decode layer (batch 256) through lora_apply, each launch compiled with the "
                 "launcher's argument specialization; registers per thread and spill stores from ptxas; async = "
                 "global loads the software pipeliner made asynchronous. Not a timing.", "",
                 "| variant | kernel | regs | spill store B | shared B | async copies | warps | stages |",
                 "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['variant']} | {r['kernel']} | {r['regs']} | {r['spill_store_bytes']} | "
                         f"{r['shared_bytes']} | {r['async_copies']} | {r['num_warps']} | {r['num_stages']} |")
        (args.out / "kernel_compile.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
