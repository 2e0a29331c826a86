"""What the GPU compiler makes of the Triton kernels, on any machine (no GPU needed).
Runs one Llama-2-7B layer's LoRA (q/k/v, o, gate/up, down through `kernels.lora.lora_apply`, as the engine
calls it) for a decode step (256 tokens) and a mixed step (254 decode tokens + 2 x 1024-token prefill
chunks) with every kernel launch captured instead of run, under each configuration given (default: the
default `LoRAKernelConfig`). Each captured launch is compiled for an NVIDIA target (default sm_90, the
H100 / H200) with the argument specialization Triton's launcher would apply to those arguments (16-divisible
ints and pointers, ints equal to 1 as constants, `do_not_specialize` honoured), then ptxas reports registers
and spills. Per launch: registers per thread, spill bytes, shared memory, how many global loads the
software pipeliner turned into async copies (0: every loop iteration waits for its own loads), and the
machine code's size (cuobjdump's SASS): instructions in all and in the largest loop body, a static count
(per thread, each executed once or once per iteration) that shows what a kernel spends on each byte. A
compile-time view, not a timing (benchmarks/kernels.py times them). --all-kernels adds every other launch
configuration of kernels/ (the plan, paged attention, KV append, LoRA over small pages), so a kernel that
would not compile for the GPU shows here (tests/test_benchmarks.py runs it).

usage: python benchmarks/kernel_compile.py [--arch 90] [--out DIR] [--all-kernels] [--lora-kernels JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import KernelInterface, native_specialize_impl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels.attention as ka  # noqa: E402
import kernels.lora as kl  # noqa: E402
import kernels.lora_plan as kp  # noqa: E402
from benchmarks.kernels import build_adapters, llama_groups  # noqa: E402

MODULES = (kl, kp, ka)  # the modules whose kernel globals the launches look up
LAUNCH_OPTIONS = ("num_warps", "num_stages")


def kernel_names(module) -> list[str]:
    """The Triton kernels a module launches (module globals ending in `_kernel`)."""
    return [n for n in dir(module) if n.endswith("_kernel") and isinstance(getattr(module, n), KernelInterface)]


@contextmanager
def captured():
    """Within the block, every Triton kernel of kernels/lora.py and kernels/attention.py records its
    launches (kernel name, kernel, {param: value}, launch options) in the yielded list instead of running."""
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

    saved = [(m, n, getattr(m, n)) for m in MODULES for n in kernel_names(m)]
    try:
        for m, n, fn in saved:
            setattr(m, n, Capture(n, fn))
        yield launches
    finally:
        for m, n, fn in saved:
            setattr(m, n, fn)


def lora_layer(steps: dict[str, tuple[int, list[int]]], config, v_width: int = 256) -> None:
    """One Llama-2-7B layer's LoRA through lora_apply, as the engine calls it (64 adapters of ranks cycling
    over {8, 16, 32, 64}, aligned, float32 v of width v_width (the engine: the step's largest rank), one plan
    per step), for each step {name: (decode tokens, prefill chunk lengths)}."""
    gen = torch.Generator().manual_seed(0)
    groups = llama_groups(4096, 11008)
    n_ad = 64
    pool, page_table, _ = build_adapters(groups, [(8, 16, 32, 64)[i % 4] for i in range(n_ad)], 131072,
                                         torch.bfloat16, "cpu", gen)  # fmt: skip
    scales = torch.ones(n_ad)
    for decode, prefill in steps.values():
        lens = prefill + [1] * decode
        indptr = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        slots = torch.arange(len(lens), dtype=torch.int32) % n_ad
        T = int(indptr[-1])
        plan = kl.plan_for_step(indptr, slots, n_ad, T, max(lens), config)
        for g in groups:
            x = torch.zeros(T, g.K, dtype=torch.bfloat16)
            y = torch.zeros(T, sum(g.n_out), dtype=torch.bfloat16)
            v = torch.zeros(T, len(g.n_out), v_width)
            kl.lora_apply(y, x, v, pool, page_table, g.a_off, g.b_off, g.ranks, scales, indptr, slots,
                          g.out_offsets, max_seg_len=max(lens), aligned=True, plan=plan, config=config)  # fmt: skip


STEPS = {"decode": (256, []), "mixed": (254, [1024, 1024])}


def other_paths() -> None:
    """Every other GPU launch configuration: LoRA over pages smaller than its blocks and unaligned offsets,
    paged attention (decode one-pass and split, prefill), KV append."""
    bf = torch.bfloat16
    S, K, R, P = 6, 4096, 64, 100
    pool = torch.zeros(40, P, dtype=bf)
    table = torch.zeros(S, 8, dtype=torch.int32)
    offs = torch.zeros(S, 3, dtype=torch.int32)
    ranks = torch.full((S, 3), 16, dtype=torch.int32)
    scales = torch.ones(S)
    out_offsets = [0, 4096, 5120, 6144]  # q / k / v of 32 query and 8 KV heads of 128
    for lens in ([64, 37, 128], [1] * 8):
        T = sum(lens)
        indptr = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
        slots = torch.arange(len(lens), dtype=torch.int32) % S
        x, y, v = torch.zeros(T, K, dtype=bf), torch.zeros(T, 6144, dtype=bf), torch.zeros(T, 3, R)
        kl.lora_apply(
            y, x, v, pool, table, offs, offs, ranks, scales, indptr, slots, out_offsets, max_seg_len=max(lens)
        )  # aligned=False, 100-element pages
    Hq, Hkv, D, page = 32, 8, 128, 16
    kv = torch.zeros(64, 2 * page * Hkv * D, dtype=bf)
    for seqs, q_lens, hkv in (([300] * 8, [1] * 8, Hkv), ([5000], [1], 1), ([700, 33], [200, 33], Hkv)):
        T = sum(q_lens)
        q = torch.zeros(T, Hq, D, dtype=bf)
        kvp = kv if hkv == Hkv else torch.zeros(64, 2 * page * hkv * D, dtype=bf)
        seq = torch.tensor(seqs, dtype=torch.int32)
        qind = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32)
        ka.paged_attention(
            q,
            kvp,
            page,
            hkv,
            torch.zeros(len(seqs), 320, dtype=torch.int32),
            seq,
            qind,
            D**-0.5,
            torch.zeros_like(q),
            max_q_len=max(q_lens),
        )
    ka.kv_append(
        kv, page, torch.zeros(9, Hkv, D, dtype=bf), torch.zeros(9, Hkv, D, dtype=bf), torch.zeros(9, dtype=torch.int32)
    )


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
    k = triton.compile(
        ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(opts),
    )
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    for exe in ("ptxas", "ptxas-blackwell"):  # the one that reads this Triton's PTX version
        ptxas = nvidia_tool(exe)
        info = subprocess.run(
            [ptxas, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v", f.name, "-o", os.devnull],
            capture_output=True,
            text=True,
        ).stderr
        if "Used " in info:
            break
    os.unlink(f.name)
    regs = next(
        (int(line.split("Used ")[1].split(" registers")[0]) for line in info.splitlines() if "Used " in line), None
    )
    spill = next((line.strip() for line in info.splitlines() if "spill stores" in line), "")
    spill_bytes = int(spill.split(" bytes spill stores")[0].split(",")[-1]) if spill else None
    ttgir = k.asm["ttgir"]
    sass = sass_counts(k.asm["cubin"])
    return dict(
        regs=regs,
        spill_store_bytes=spill_bytes,
        shared_bytes=k.metadata.shared,
        async_copies=ttgir.count("async_copy_global_to_local"),
        num_warps=opts.get("num_warps", 4),
        num_stages=opts.get("num_stages", 3),
        **sass,
    )


def nvidia_tool(name: str) -> str:
    """Path of a CUDA tool that Triton's wheel ships (ptxas, cuobjdump)."""
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def sass_counts(cubin: bytes) -> dict:
    """Static SASS counts of a kernel: `sass_instructions` in all, `sass_loop_instructions` in the largest
    loop body (from a backward branch's target to the branch), `hmma` tensor-core instructions."""
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    text = subprocess.run([nvidia_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
    os.unlink(f.name)
    # one (address, opcode without predicate or modifiers, last operand) per instruction, in address order
    code = []
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;/]+);", text):
        words = [w for w in m.group(2).split() if not w.startswith("@")]
        code.append((int(m.group(1), 16), words[0].split(".")[0], words[-1]))
    index = {addr: i for i, (addr, _, _) in enumerate(code)}
    loops = [
        i - index[int(last, 16)] + 1
        for i, (addr, op, last) in enumerate(code)
        if op == "BRA" and last.startswith("0x") and int(last, 16) < addr and int(last, 16) in index
    ]
    return dict(
        sass_instructions=len(code),
        sass_loop_instructions=max(loops, default=0),
        hmma=sum(op == "HMMA" for _, op, _ in code),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--all-kernels",
        action="store_true",
        help="also every other launch configuration (LoRA over small pages, attention, KV append)",
    )
    ap.add_argument(
        "--lora-kernels", default="{}",
        help='EngineConfig.lora.kernels overrides as JSON (e.g. \'{"decode": {"expand_n": 128}}\')',
    )  # fmt: skip
    ap.add_argument("--v-width", type=int, default=256, help="v's rank width (the engine: the step's largest rank)")
    args = ap.parse_args()
    from app.config import LoRAKernelOverrides

    config = LoRAKernelOverrides(**json.loads(args.lora_kernels)).config()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles the GPU launch configuration")
    rows, seen = [], {}
    runs = [(step, lambda step=step: lora_layer({step: STEPS[step]}, config, args.v_width)) for step in STEPS]
    for step, run in runs + ([("other", other_paths)] if args.all_kernels else []):
        with captured() as launches:
            run()
        for name, fn, params, opts in launches:
            consts = {p.name: params[p.name] for p in fn.params if p.is_constexpr}
            key = (name, json.dumps(consts, sort_keys=True, default=str), json.dumps(opts, sort_keys=True))
            if key not in seen:
                seen[key] = compile_launch(fn, params, opts, args.arch)
            row = dict(step=step, kernel=name, consts=consts, **seen[key])
            if row in rows:
                continue
            rows.append(row)
            print(
                f"{step:8s} {name:30s} regs {row['regs']:>3} spills {row['spill_store_bytes']:>5} B "
                f"smem {row['shared_bytes']:>6} async {row['async_copies']} sass {row['sass_instructions']:>5} "
                f"(loop {row['sass_loop_instructions']:>4}, hmma {row['hmma']:>3})",
                flush=True,
            )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        res = dict(triton=triton.__version__, arch=args.arch, config=str(config), rows=rows)
        (args.out / "kernel_compile.json").write_text(json.dumps(res, indent=1, default=str))
        lines = [
            f"# Triton kernels as compiled for sm_{args.arch} (Triton {triton.__version__}, no GPU)",
            "",
            "One Llama-2-7B layer's LoRA through lora_apply (decode: 256 tokens; mixed: 254 decode tokens + "
            f"2 x 1024-token chunks) with LoRAKernelConfig overrides {args.lora_kernels}, each launch compiled with the launcher's "
            "argument specialization; registers per thread and spill stores from ptxas; async = global loads "
            "the software pipeliner made asynchronous; SASS instructions (static, per thread) in all and in the "
            "largest loop body, and the tensor-core ones among them. Not a timing.",
            "",
            "| step | kernel | regs | spill store B | shared B | async copies | warps | stages | SASS | loop | HMMA |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            lines.append(
                f"| {r['step']} | {r['kernel']} | {r['regs']} | {r['spill_store_bytes']} | "
                f"{r['shared_bytes']} | {r['async_copies']} | {r['num_warps']} | {r['num_stages']} | "
                f"{r['sass_instructions']} | {r['sass_loop_instructions']} | {r['hmma']} |"
            )
        (args.out / "kernel_compile.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
