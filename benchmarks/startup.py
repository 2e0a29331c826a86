"""Adapter registration at start: N PEFT adapter directories (rank r on q/k/v/o of a model shape, random
weights written here) added to an engine with one thread, then with the default thread count
(Engine.add_adapters). The model has random weights made on the device (load_format=dummy), so what is timed
is the adapters' reading, validation and packing (what made `serve run` with 1,000 adapters take minutes).

With `--serve`, instead: the Serve application (deployments.builder.build_app, as `serve run` builds it) with
`adapter_dir` holding the N directories, and the time from its start to the first answered completion (an
adapter's), split by the group's own startup figures (model, warm-up, adapters) into "after the model was
loaded" (issue 13's goal: within 60 s for 1,000 adapters on the 7B preset).

`--distinct K` writes K weight sets and hard-links the others' files to them (N x rank-16 7B adapters are
N x 33 MB): every directory is still read, validated and packed on its own; the page cache serves the reads.

    python benchmarks/startup.py --out DIR [--shape llama2-7b] [--layers 32] [--adapters 1000] [--rank 16]
        [--distinct K] [--serve]
"""

from __future__ import annotations

import argparse
import json
import os
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
    ap.add_argument("--distinct", type=int, default=None, help="weight sets written (the rest hard-linked)")
    ap.add_argument("--serve", action="store_true", help="time the Serve app to its first answer")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--timeout-s", type=float, default=900.0, help="give up waiting for the first answer")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = write_model_config(a.work / f"{a.shape}-{a.layers or 'all'}", a.shape, a.layers)
    src = a.work / f"adapters-{a.shape}-{a.layers or 'all'}-r{a.rank}"
    t0 = time.perf_counter()
    distinct = min(a.distinct or a.adapters, a.adapters)
    for i in range(a.adapters):
        d = src / f"a{i}"
        if (d / "adapter_config.json").exists():
            continue
        if i < distinct:
            write_peft_adapter(
                d, model, a.rank, 2.0 * a.rank, ["q_proj", "k_proj", "v_proj", "o_proj"], seed=i, std=0.02
            )
        else:
            d.mkdir(parents=True)
            for f in ("adapter_model.safetensors", "adapter_config.json"):
                os.link(src / f"a{i % distinct}" / f, d / f)
    written = time.perf_counter() - t0
    dirs = {f"a{i}": str(src / f"a{i}") for i in range(a.adapters)}
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "shape": a.shape,
           "layers": a.layers, "adapters": a.adapters, "rank": a.rank, "distinct_weight_sets": distinct,
           "write_s": written}  # fmt: skip
    if a.serve:
        res.update(serve_first_answer(a, model, src, device))
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "startup_serve.json").write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
        return
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


def serve_first_answer(a, model: Path, adapter_dir: Path, device: str) -> dict:
    """Starts the Serve app on `model` (dummy weights) with every directory of `adapter_dir` registered at
    start, sends a one-token completion for adapter "a0" until one is answered, and returns the times (s):
    to the first answer from the start, the group's own startup split, and the first answer after the model
    was loaded (the group's start + its model time, on the wall clock)."""
    import httpx
    import ray
    from ray import serve

    from deployments.builder import BuildArgs, build_app

    t_start = time.time()
    ray.init(include_dashboard=False, num_cpus=None if device == "cuda" else 2)
    serve.start(http_options={"host": "127.0.0.1", "port": a.http_port})
    build = BuildArgs(
        model=str(model), adapter_dir=str(adapter_dir), device=device,
        dtype="bfloat16" if device == "cuda" else "float32", engine={"load_format": "dummy"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{a.http_port}/v1/completions"
    body = {"model": "a0", "prompt": "hello", "max_tokens": 1, "temperature": 0}
    try:
        serve.run(build_app(build), name="sloray-startup", route_prefix="/", blocking=False)
        t_deployed = time.time()
        answered, status = None, None
        while time.time() - t_start < a.timeout_s:
            try:
                r = httpx.post(url, json=body, timeout=30)
                status = r.status_code
                if status == 200:
                    answered = time.time()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        group = serve.get_deployment_handle("SLoRAGroup-0", app_name="sloray-startup")
        startup = group.stats.remote().result(timeout_s=60)["startup"]
    finally:
        serve.shutdown()
        ray.shutdown()
    model_loaded = startup["started"] + startup["model_s"]
    return {
        "serve_run_returned_s": t_deployed - t_start,
        "first_answer_s": answered - t_start if answered else None,
        "last_status": status,
        "group": startup,
        "first_answer_after_model_loaded_s": answered - model_loaded if answered else None,
    }


if __name__ == "__main__":
    main()
