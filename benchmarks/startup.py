"""Adapter registration at start: N PEFT adapter directories (rank r on q/k/v/o of a model shape, random
weights written here) added to an engine with one thread, then with the default thread count
(Engine.add_adapters). The model has random weights made on the device (load_format=dummy), so what is timed
is the adapters' reading, validation and packing (what made `serve run` with 1,000 adapters take minutes).

    python benchmarks/startup.py --out DIR [--shape llama2-7b] [--layers 32] [--adapters 1000] [--rank 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import EngineConfig  # noqa: E402
from app.demo import write_peft_adapter  # noqa: E402
from app.engine import Engine  # noqa: E402
from benchmarks.engine import write_model_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--work", default="/tmp/sloray-startup", type=Path)
    ap.add_argument("--shape", default="llama2-7b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--adapters", type=int, default=1000)
    ap.add_argument("--rank", type=int, default=16)
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = write_model_config(a.work / f"{a.shape}-{a.layers or 'all'}", a.shape, a.layers)
    src = a.work / f"adapters-{a.shape}-{a.layers or 'all'}-r{a.rank}"
    t0 = time.perf_counter()
    for i in range(a.adapters):
        d = src / f"a{i}"
        if not (d / "adapter_config.json").exists():
            write_peft_adapter(
                d, model, a.rank, 2.0 * a.rank, ["q_proj", "k_proj", "v_proj", "o_proj"], seed=i, std=0.02
            )
    written = time.perf_counter() - t0
    dirs = {f"a{i}": str(src / f"a{i}") for i in range(a.adapters)}
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "shape": a.shape,
           "layers": a.layers, "adapters": a.adapters, "rank": a.rank, "write_s": written}  # fmt: skip
    for label, workers in (("one_thread", 1), ("default_threads", None)):
        cfg = EngineConfig(model=str(model), device=device, load_format="dummy", warmup="off",
                           dtype="bfloat16" if device == "cuda" else "float32")  # fmt: skip
        engine = Engine(cfg)
        t0 = time.perf_counter()
        engine.add_adapters(dirs, workers=workers)
        res[f"{label}_s"] = time.perf_counter() - t0
        print(f"{label}: {res[f'{label}_s']:.1f} s for {a.adapters} adapters", flush=True)
        del engine
    res["speedup"] = res["one_thread_s"] / res["default_threads_s"]
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "startup.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
