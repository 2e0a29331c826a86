"""The benchmark scripts still run (tiny shapes on the CPU): they are how results are produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
def test_tp_benchmark_smoke(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "tp.py"),
        "--smoke",
        "--out",
        str(tmp_path / "out"),
        "--work",
        str(tmp_path / "work"),
        "--pool-pages",
        "4000",
        "--requests",
        "4",
        "--output-len",
        "4",
        "--skip",
        "serve",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "tp.json").read_text())
    assert res["equality_fp32_2_layers"]["greedy_equal"] == 1.0  # TP=2 == TP=1 on the CPU (gloo)
    assert res["engine"]["greedy_sequences_equal"] == 1.0  # float32 on the CPU
    assert res["engine"]["tp2_control"]["steps"] > 0


def test_trace_generator(tmp_path):
    out = tmp_path / "t.jsonl"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "trace.py"),
            "--adapters",
            "50",
            "--alpha",
            "0.3",
            "--rate",
            "5",
            "--duration",
            "20",
            "--out",
            str(out),
        ],
        check=True,
        timeout=60,
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 50 <= len(rows) <= 150  # ~ rate x duration
    assert all(0 <= r["adapter"] < 50 and 8 <= r["input_len"] < 512 and 8 <= r["output_len"] < 512 for r in rows)
    assert rows == sorted(rows, key=lambda r: r["arrival_s"])
    top = max(sum(r["adapter"] == a for r in rows) for a in range(50))
    assert top > len(rows) / 10  # alpha 0.3: skewed popularity


def test_random_model_tokenizer_gives_every_id_text(tmp_path):
    """The benchmarks' random models get a tokenizer with a word per id, so every generated token
    reaches an HTTP client as text (the ingress sends no empty chunks)."""
    sys.path.insert(0, str(ROOT))
    from app.tokenizer import Tokenizer
    from benchmarks.engine import write_word_tokenizer

    write_word_tokenizer(tmp_path, 1000)
    tok = Tokenizer(str(tmp_path))
    assert all(tok.decode([i]).strip() for i in range(2, 1000))
    assert tok.decode([5, 999]).split() == ["w5", "w999"]


def test_kernel_compile_report(tmp_path):
    """benchmarks/kernel_compile.py compiles every Triton kernel of kernels/ for sm_90 in its GPU launch
    configuration, without a GPU (so a kernel that would not compile on the GPU fails here): every kernel
    of kernels/lora.py, kernels/lora_plan.py and kernels/attention.py is covered, and the tiled LoRA
    kernels compile to pipelined loops without register spills in both regimes (decode and mixed)."""
    sys.path.insert(0, str(ROOT))
    import kernels.attention as ka
    import kernels.lora as kl
    import kernels.lora_plan as kp
    from benchmarks.kernel_compile import kernel_names

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_compile.py"), "--all-kernels", "--out", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "kernel_compile.json").read_text())["rows"]
    assert {r["kernel"] for r in rows} == set(kernel_names(kl)) | set(kernel_names(kp)) | set(kernel_names(ka))
    assert all(r["regs"] and 0 < r["regs"] <= 255 for r in rows), rows
    tiled = [r for r in rows if r["step"] in ("decode", "mixed") and r["kernel"].startswith("lora_")]
    assert {(r["step"], r["kernel"]) for r in tiled} == {
        (s, k) for s in ("decode", "mixed") for k in ("lora_shrink_kernel", "lora_expand_kernel")
    }
    assert all(r["async_copies"] > 0 and r["spill_store_bytes"] == 0 for r in tiled), tiled
    # the machine code: every tiled LoRA kernel has a loop (its K or rank loop) with tensor-core instructions
    assert all(0 < r["sass_loop_instructions"] < r["sass_instructions"] and r["hmma"] > 0 for r in tiled), tiled


def test_saturated_benchmark_smoke(tmp_path):
    """benchmarks/saturated.py (the LoRA / engine end-to-end benchmark) runs its tiny setting on the CPU: the
    base model and n adapters, with the floor and the share of the base run; with --system-prompt L
    --prefix-caching off on each run twice, and with caching every request finds its adapter's system prompt
    (its full pages) cached, without it none does; --scheduler and --pool reach the engine."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "saturated.py"), "--smoke", "--out", str(tmp_path),
           "--system-prompt", "40", "--prefix-caching", "off", "on",
           "--scheduler", '{"admission_headroom_pages": 3}', "--pool", '{"num_pages": 3000}']  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "saturated.json").read_text())
    assert res["settings"][0]["admission_headroom_pages"] == 3  # --scheduler reached the engine's scheduler
    pool = res["settings"][0]["pool"]  # what benchmarks/schedule_sim.py's --pages reproduces
    assert pool["page_size"] == 16 and pool["pages"] == 3000 and res["pool"] == {"num_pages": 3000}
    runs = res["settings"][0]["runs"]
    assert [(r["adapters"], r["prefix_caching"]) for r in runs] == [(n, c) for n in (0, 1, 3) for c in (False, True)]
    assert all(r["steps"] > 0 and r["floor_s"] > 0 for r in runs)
    assert [r["adapter_loads"] for r in runs] == [0, 0, 1, 1, 3, 3]
    for r in runs:  # the per-step trace adds up to the run's totals
        trace = r["steps_trace"]
        assert len(trace) == sum(r["steps_by_kind"].values())
        assert sum(s[4] for s in trace) == r["adapter_loads"] and {s[0] for s in trace} <= {"d", "w"}
        assert all(s[7] >= 0 for s in trace) and max(s[7] for s in trace) > 0 and trace[-1][7] == 0  # KV pages
    assert runs[0]["share_of_base"] == runs[1]["share_of_base"] == 1.0
    page = 16
    for r in runs:  # 12 requests, each after a 40-token system prompt: 2 full pages of it
        assert r["prefix_hit_tokens"] == (12 * (40 // page * page) if r["prefix_caching"] else 0), r
    assert "prefix caching" in (tmp_path / "saturated.md").read_text()


def test_grammar_libs_smoke(tmp_path):
    """The grammar-library comparison runs (demo tokenizer, 10 walks); llguidance's walks are all valid."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "grammar_libs.py"), "--smoke", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "grammar_libs.json").read_text())["tokenizers"]["demo (478)"]["llguidance"]
    assert res["walks"] == 10 and res["invalid"] == 0 and res["fill_us_median"] > 0
    assert "llguidance" in (tmp_path / "grammar_libs.md").read_text()


def test_structured_benchmark_smoke(tmp_path):
    """benchmarks/structured.py --smoke (tiny shape on the CPU): both batches run the same decode steps, the
    constrained one fills bitmasks, and the result files are written."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "structured.py"), "--smoke", "--out", str(tmp_path / "out")]
    proc = subprocess.run(
        cmd + ["--work", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "structured.json").read_text())
    free, half = res["best"]["free"], res["best"]["half_constrained"]
    assert res["constrained"] == 4 and free["decode_steps"] == half["decode_steps"] > 0
    assert free["tokens"] == half["tokens"] == 8 * 12 and half["finished_early"] == 0
    assert half["fill_ms_median"] > 0 and free["fill_ms_median"] == 0 and res["step_ratio_constrained_over_free"] > 0
    assert "Per-step ratio" in (tmp_path / "out" / "structured.md").read_text()


def run_suite(tmp_path, name: str, *extra: str) -> dict:
    """`python -m benchmarks.suite NAME --smoke` (tiny random model on the CPU); returns its JSON."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "benchmarks.suite", name, "--smoke", "--out", str(tmp_path / "out")]
    cmd += ["--work", str(tmp_path / "work"), *extra]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"[{name} ") >= 2  # a progress line per run
    res = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert res["commit"] and res["gpu"].startswith("CPU") and res["settings_used"]["smoke"]
    assert (tmp_path / "out" / f"{name}.md").read_text().startswith(f"# {name}")
    return res


def test_suite_s_lora_table_smoke(tmp_path):
    res = run_suite(tmp_path, "s-lora-table")
    (s,) = res["settings"]
    assert s["setting"] == "S2" and [r["adapters"] for r in s["rows"]] == [0, 3]
    for r in s["rows"]:
        assert r["saturated"]["completed"] == r["saturated"]["requests"] == 12 and r["saturated"]["req_s"] > 0
        assert len(r["points"]) == 2 and all(p["rate"] > 0 and "slo_attainment" in p for p in r["points"])
        assert all(p["kept_up"] is not None and p["kept_up"] >= 0 for p in r["points"])
        assert all(p["late_step_s"] > 0 and p["ramp_ceiling"] > 0 for p in r["points"])
        passed = [
            p["rate"]
            for p in r["points"]
            if not p["stopped"] and (p["slo_attainment"] or 0) >= 0.9 and p["kept_up"] >= 0.9
        ]
        assert r["max_rate"] == (max(passed) if passed else None)
    assert s["rows"][0]["share_of_base_saturated"] == 1.0
    p = s["peft"]
    assert p["peft_one_at_a_time_req_s"] > 0 and p["peft_mixed_req_s"] > 0 and p["ours_req_s"] > 0
    assert len(p["ours_req_s_runs"]) == 3 and p["ours_req_s"] == sorted(p["ours_req_s_runs"])[1]
    assert {f.name for f in (tmp_path / "out").glob("*.png")} == {
        "s-lora-table_throughput.png",
        "s-lora-table_latency.png",
    }


def test_suite_s_lora_table_at_a_fixed_rate(tmp_path):
    """--rate: every n replayed once at that rate on the same trace (arrivals and lengths), no search; a row's
    maximum is the rate when that replay passes (a lower bound), else none; the headline says which n passed."""
    res = run_suite(tmp_path, "s-lora-table", "--rate", "3", "--no-peft")
    (s,) = res["settings"]
    assert [r["adapters"] for r in s["rows"]] == [0, 3] and "peft" not in s
    traces = []
    for r in s["rows"]:
        (p,) = r["points"]
        assert p["rate"] == 3 and p["kept_up"] is not None
        ok = not p["stopped"] and (p["slo_attainment"] or 0) >= 0.9 and p["kept_up"] >= 0.9
        assert r["max_rate"] == (3 if ok else None) and r["bracketed"] is False
        traces.append((p["requests"], p["ramp_ceiling"] is not None))
    assert traces[0] == traces[1]  # the same trace for both n
    md = (tmp_path / "out" / "s-lora-table.md").read_text()
    assert "S2 at 3.00 req/s (--rate: one replay per n, the same trace): n = base " in md and "; n = 3 " in md


def test_suite_s_lora_table_paired_share(tmp_path):
    """--paired-share: the first n gets the rate search, a later n one replay at that share of the first's
    maximum (its row's maximum is that rate if it passes), and the headline says whether it sustains it; when
    the first n found no passing rate, a later n gets its own search."""
    res = run_suite(tmp_path, "s-lora-table", "--paired-share", "0.9", "--points", "3", "--no-peft")
    first, later = res["settings"][0]["rows"]
    assert [first["adapters"], later["adapters"]] == [0, 3] and len(first["points"]) == 3
    md = (tmp_path / "out" / "s-lora-table.md").read_text()
    if first["max_rate"]:
        (p,) = later["points"]
        assert later["paired"] == {"adapters": 0, "share": 0.9} and p["rate"] == pytest.approx(0.9 * first["max_rate"])
        ok = not p["stopped"] and (p["slo_attainment"] or 0) >= 0.9 and p["kept_up"] >= 0.9
        assert later["max_rate"] == (p["rate"] if ok else None) and later["bracketed"] is False
        verdict = "sustains" if ok else "does not sustain"
        assert f"n = 3 {verdict} 90% of the base's maximum ({first['max_rate']:.2f} req/s)" in md
    else:
        assert "paired" not in later and len(later["points"]) == 3 and "--paired-share" not in md


def test_suite_ablations_smoke(tmp_path):
    res = run_suite(tmp_path, "ablations")
    runs = {r["ablation"]: r for r in res["runs"]}
    assert list(runs) == ["default", "no prefetch", "clustering", "free idle adapters", "static split",
                          "no admission headroom"]  # fmt: skip
    assert all(r["requests"] > 0 and r["ttft_p50_s"] is not None for r in runs.values())
    assert runs["no prefetch"]["prefetches"] == 0 and not runs["no prefetch"]["policies"]["prefetch"]
    assert runs["default"]["evictions"] == 0 and runs["free idle adapters"]["evictions"] > 0
    assert runs["free idle adapters"]["loads"] > runs["default"]["loads"]
    assert runs["static split"]["policies"]["static_adapter_pages"] == res["static_adapter_pages"]
    assert runs["clustering"]["policies"]["cluster_min_adapters"] == 2
    assert runs["no admission headroom"]["policies"]["admission_headroom_pages"] == 0
    assert all(r["policies"]["admission_headroom_pages"] == 1 for n, r in runs.items() if n != "no admission headroom")
    assert all(r["preemptions"] >= 0 for r in runs.values())
    (k,) = res["kernels"]["rows"]  # TRITON_INTERPRET=1 (tests/conftest.py): ours vs torch vs padded bmm
    assert k["ours_ms"] > 0 and k["ref_ms"] > 0 and k["bmm_ms"] > 0 and k["max_abs_err"] < 1e-3
    assert (tmp_path / "out" / "ablations.png").exists()


def test_suite_admission_smoke(tmp_path):
    res = run_suite(tmp_path, "admission")
    assert [(r["cv"], r["policy"]) for r in res["runs"]] == [
        (cv, p) for cv in (1.0, 4.0) for p in ("FCFS", "LCFS", "early abort")
    ]
    assert all(r["aborted"] == 0 for r in res["runs"] if r["policy"] != "early abort")
    assert all(0 <= r["slo_attainment"] <= 1 and r["requests"] > 0 for r in res["runs"])
    assert (tmp_path / "out" / "admission.png").exists()
    (tmp_path / "out" / "admission.md").unlink()
    (tmp_path / "out" / "admission.png").unlink()
    from benchmarks.suite import main

    main(["admission", "--report-only", "--out", str(tmp_path / "out")])
    assert "early abort" in (tmp_path / "out" / "admission.md").read_text()  # rewritten from the JSON
    assert (tmp_path / "out" / "admission.png").exists()


@pytest.mark.ray
def test_suite_http_smoke(tmp_path):
    """Starts Ray and Serve: run under the shared Ray lock (flock /tmp/sloray-ray.lock). Serve runs in the
    README's lower-latency mode (Ray's switches: the ingress replica serves HTTP itself, HAProxy in front on
    the port; the other Serve tests cover Serve's default proxy)."""
    env = [
        "RAY_SERVE_THROUGHPUT_OPTIMIZED=1",
        "RAY_SERVE_ENABLE_HA_PROXY=1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=1",  # the replica's drain at shutdown (30 s by default)
    ]
    t0 = time.time()
    res = run_suite(tmp_path, "http", "--http-port", "8131", "--stream-interval-s", "0", "--serve-env", *env)
    assert res["settings_used"]["serve_env"] == env
    # HAProxy, not Serve's proxy, listened on the port: Ray wrote its config (Ray's default location) for it
    configs = [c for c in Path("/tmp/haproxy-serve").glob("*/haproxy.cfg") if c.stat().st_mtime >= t0]
    assert any("bind 127.0.0.1:8131" in c.read_text() for c in configs), configs
    assert [(v["ingress_replicas"], v["stream_interval_s"]) for v in res["http_variants"]] == [(1, 0.0)]
    assert res["http"]["ok"] == res["http"]["requests"] == res["in_process"]["requests"] > 0
    assert res["http_over_in_process_req_s"] > 0 and res["ttft_p50_delta_s"] is not None
    assert res["http"] == res["http_variants"][0]["http"]
    # the groups' own TTFT, read from the service's /metrics: every request counted, below the client's
    st = res["http"]["server_ttft"]
    assert st["count"] == res["http"]["ok"] and 0 < st["p50_s"] <= st["p99_s"], st
    assert st["p50_s"] <= res["http"]["ttft_p99_s"]
    # and the time from arrival to the first step: the groups' histogram, and the in-process replay's median
    sq, queue = res["http"]["server_queue"], res["in_process"]["queue_p50_s"]
    assert sq["count"] == st["count"] and 0 <= sq["p50_s"] <= st["p50_s"]
    assert 0 <= queue <= res["in_process"]["ttft_p50_s"]
    for r in (res["in_process"], res["http"]):  # engine.step() over the replay: counted, CPU within wall
        assert r["steps"] > 0 and 0 < r["step_cpu_mean_s"] <= r["step_wall_mean_s"] * 1.05, r
    assert (tmp_path / "out" / "http.png").exists()


def test_http_variants_zip_the_two_lists():
    """--ingress-replicas and --stream-interval-s: zipped, a list of one repeated, other lengths refused."""
    from types import SimpleNamespace

    from benchmarks.suite import http_variants

    def v(reps, ivs):
        return http_variants(SimpleNamespace(ingress_replicas=reps, stream_interval_s=ivs))

    assert v([1, 1, 2], [0.0, 0.05, 0.05]) == [(1, 0.0), (1, 0.05), (2, 0.05)]
    assert v([2], [0.0, 0.05]) == [(2, 0.0), (2, 0.05)]
    assert v([1, 2], [0.05]) == [(1, 0.05), (2, 0.05)]
    with pytest.raises(SystemExit):
        v([1, 2], [0.0, 0.05, 0.1])


def test_histogram_quantile_and_server_ttft():
    """histogram_quantile interpolates inside the bucket as Prometheus does; server_ttft reads the groups'
    TTFT histogram from a real exposition (prometheus_client's), summed over the groups."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from benchmarks.load import histogram_quantile, server_ttft

    b = [(0.01, 0), (0.02, 5), (0.04, 10), (float("inf"), 10)]
    assert histogram_quantile(b, 0.5) == 0.02 and abs(histogram_quantile(b, 0.75) - 0.03) < 1e-12
    assert histogram_quantile([(float("inf"), 0)], 0.5) is None
    reg = CollectorRegistry()
    h = Histogram("sloray_time_to_first_token_seconds", "ttft", ["group"], buckets=(0.01, 0.02, 0.04), registry=reg)
    for g, v in (("g0", 0.015), ("g0", 0.015), ("g1", 0.03), ("g1", 0.03)):
        h.labels(group=g).observe(v)
    st = server_ttft(generate_latest(reg).decode())
    assert st["count"] == 4 and st["p50_s"] == 0.02 and 0.02 < st["p99_s"] <= 0.04


@pytest.mark.ray
def test_flood_runs_a_variant_on_its_own_server(tmp_path):
    """benchmarks/flood.py on the repository's serve_config.yaml (the demo on the CPU): a variant of its args on a
    server of its own, one small flood; every request answered (200 or 429), each request recorded, the report
    written, and the server gone when the run returns (run 34 of session-2026-12-04d lost a variant to the previous
    variant's server still answering: each variant waits for its port to close). One variant, not two: a second
    server start costs ~35 s of CI on 2 cores and runs the same code; the variant parsing is tested below. Starts
    Ray and Serve (the Ray lock)."""
    from benchmarks.flood import answers, main

    out = tmp_path / "flood"
    main(["--config", str(ROOT / "serve_config.yaml"), "--floods", "1", "--requests", "12", "--slo-s", "2",
          "--num-cpus", "8", "--port", "8132", "--out", str(out),
          "--variant", "seats", "num_ingress_replicas=1", "max_num_seqs=2",
          "engine.scheduler.max_num_batched_tokens=64"])  # fmt: skip
    assert not answers("http://127.0.0.1:8132")
    res = json.loads((out / "flood.json").read_text())
    assert [v["name"] for v in res["variants"]] == ["seats"]
    seats = res["variants"][0]["args"]
    assert (
        seats["max_num_seqs"] == 2
        and seats["num_ingress_replicas"] == 1
        and seats["engine"] == {"scheduler": {"max_num_batched_tokens": 64}}
        and seats["admission_ttft_slo_s"] == 2
    )
    (f,) = res["variants"][0]["floods"]
    assert f["errors"] == 0 and f["ok"] + f["rejected_429"] == f["requests"] == 12 and f["ok"] > 0
    assert len(f["per_request"]) == 12 and 0 <= f["slo_attainment"] <= f["ok"] / 12
    assert "| seats | 1 | " in (out / "flood.md").read_text()


def test_flood_variant_pairs_set_args_and_ray_env():
    """A flood variant's KEY=VALUE pairs change the app's args (dotted keys, YAML values); env.NAME=VALUE pairs
    go to the environment of its Ray processes instead (Ray's own switches), as strings."""
    from benchmarks.flood import variant_args

    base = {"engine": {"scheduler": {"max_num_seqs": 64}}, "num_ingress_replicas": 2}
    args, env = variant_args(
        base, ["engine.scheduler.max_num_seqs=32", "env.RAY_SERVE_THROUGHPUT_OPTIMIZED=1", "engine.warmup=off"], 1.0
    )
    assert args == {"engine": {"scheduler": {"max_num_seqs": 32}, "warmup": False}, "num_ingress_replicas": 2,
                    "admission_ttft_slo_s": 1.0}  # fmt: skip
    assert env == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} and base["engine"]["scheduler"]["max_num_seqs"] == 64
    with pytest.raises(SystemExit):
        variant_args(base, ["env.X"], 1.0)


def test_load_replay_records_each_request():
    """benchmarks/load.py against a real HTTP server (uvicorn, Starlette) that streams three chunks, or answers
    429 for one model: with per_request, each request's send time, status, TTFT and chunks come back in trace
    order; the client's heap is frozen out of the collector while it replays, and unfrozen after."""
    import asyncio
    import gc
    import socket
    import threading
    import time

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from benchmarks.load import replay

    frozen = []

    async def completions(req):
        body = await req.json()
        frozen.append(gc.get_freeze_count())  # this server runs in the client's process
        if body["model"] == "a1":
            return JSONResponse({"error": {"message": "overloaded", "code": 429}}, status_code=429)

        async def events():
            for i in range(3):
                await asyncio.sleep(0.02)
                yield f'data: {{"choices": [{{"text": "t{i}"}}]}}\n\n'
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    before = gc.get_freeze_count()
    try:
        while not server.started:
            time.sleep(0.01)
        trace = [{"arrival_s": 0.1 * i, "adapter": i % 2, "input_len": 4, "output_len": 3} for i in range(4)]
        res = asyncio.run(replay(f"http://127.0.0.1:{port}", trace, "a", 1.0, None, 30.0, per_request=True))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert (res["ok"], res["rejected_429"], res["errors"]) == (2, 2, 0), res["per_request"]
    recs = res["per_request"]
    assert [r["status"] for r in recs] == [200, 429, 200, 429]
    assert [r["chunks"] for r in recs] == [3, 0, 3, 0] and recs[1]["ttft_s"] is None
    assert all(0.02 <= r["ttft_s"] < 1.0 and r["e2e_s"] >= r["ttft_s"] for r in recs[::2])
    # each sent at its arrival (not before; late by at most what a loaded 2-core machine delays a wake-up)
    assert all(t["arrival_s"] - 0.01 <= r["sent_s"] < t["arrival_s"] + 0.5 for t, r in zip(trace, recs)), recs
    assert len(frozen) == 4 and min(frozen) > before and gc.get_freeze_count() == before


def _late_tokens_served(trace: list[dict], step_s: float, slots: int) -> int:
    """A fake-clock server: a step every `step_s` seconds; at each step the requests that have arrived fill its
    `slots` in arrival order, and every request in a slot gets one token at the step's end. Returns the tokens
    that come in the second half of the arrival window."""
    last, queue, running, late, k = trace[-1]["arrival_s"], deque(trace), [], 0, 0
    while queue or running:
        t = k * step_s
        while queue and queue[0]["arrival_s"] <= t and len(running) < slots:
            running.append(queue.popleft()["output_len"])
        k += 1
        late += len(running) if last / 2 <= k * step_s <= last else 0
        running = [n - 1 for n in running if n > 1]
    return late


def test_kept_up_is_late_tokens_over_offered_and_the_ramp_ceiling():
    """The rate search's keeping-up figure: second-half output tokens per second over the trace's offered rate;
    and its ceiling without a backlog at the run's step time, below 1 when each request's decode is as long as
    the trace (the ramp reaches into the second half), where a server short of capacity reads near it."""
    from benchmarks.suite import KEEP_UP, ideal_late_tokens, kept_up, passes, ramp_ceiling

    trace = [{"arrival_s": t, "output_len": 100} for t in (0.0, 5.0, 10.0)]  # 300 tokens over 10 s: 30 tok/s
    assert kept_up(150, trace) == 1.0  # 150 tokens in the last 5 s: 30 tok/s
    assert kept_up(75, trace) == 0.5
    assert kept_up(10, [{"arrival_s": 0.0, "output_len": 5}]) is None  # a burst: no arrival window
    # tokens at a + k * 0.25 s; window [4, 8]: k = 16..32 of the first request, 1..16 of the second, none of the last
    assert ideal_late_tokens([{"arrival_s": t, "output_len": 100} for t in (0.0, 4.0, 8.0)], 0.25) == 33
    dense = [{"arrival_s": i / 10, "output_len": 50} for i in range(101)]  # 10 req/s for 10 s
    assert 0.98 <= ramp_ceiling(dense, 0.01) <= 1.0  # 0.5 s decodes: the ramp is over long before the second half
    assert ramp_ceiling(trace, None) is None and ramp_ceiling([{"arrival_s": 0.0, "output_len": 5}], 0.1) is None

    long = [{"arrival_s": i / 8, "output_len": 160} for i in range(81)]  # 8 req/s for 10 s, 10 s decodes
    step = 1 / 16
    ceiling = ramp_ceiling(long, step)
    unlimited = kept_up(_late_tokens_served(long, step, slots=len(long)), long)
    assert ceiling < KEEP_UP and abs(unlimited - ceiling) < 0.01  # no backlog, yet it fails: the ramp
    short = kept_up(_late_tokens_served(long, step, slots=60), long)  # 80 slots needed: a backlog from 7.5 s
    assert short < unlimited - 0.05
    point = {"stopped": None, "slo_attainment": 1.0, "kept_up": 0.95}
    assert passes(point) and not passes({**point, "kept_up": 0.7}) and not passes({**point, "slo_attainment": 0.8})
    assert not passes({**point, "stopped": "SLO already missed"}) and passes({**point, "kept_up": None})


def test_table_report_when_no_adapter_row_passes(tmp_path):
    """The table's report (markdown and both plots) is written when no n > 0 row passed any rate (the smoke's
    short traces can do that): its throughput plot once failed to log-scale an empty adapters axis, and the
    suite left no markdown."""
    from benchmarks.suite import main

    src = ROOT / "benchmarks" / "results" / "session-2026-12-03-night" / "run13" / "table" / "s-lora-table.json"
    res = json.loads(src.read_text())
    for s in res["settings"]:
        for r in s["rows"]:
            if r["adapters"]:
                r.update(max_rate=None, at_max=None, share_of_base_max_rate=None)
    (tmp_path / "s-lora-table.json").write_text(json.dumps(res))
    main(["s-lora-table", "--report-only", "--out", str(tmp_path)])
    md = (tmp_path / "s-lora-table.md").read_text()
    assert "| S2 | 1000 | 19.76 | - |" in md
    assert (tmp_path / "s-lora-table_throughput.png").exists() and (tmp_path / "s-lora-table_latency.png").exists()


@pytest.mark.parametrize(("sustainable", "want_rates"), [
    (26.0, [20.0, 25.0, 31.25, 28.125, 26.5625]),  # above the burst's capacity: up, then bisect
    (17.0, [20.0, 16.0, 18.0, 17.0, 17.5]),  # below it: down until one passes, then bisect
    (1.0, [20.0, 16.0, 12.8, 10.24, 8.192]),  # far below: the points run out, none passes
])  # fmt: skip
def test_rate_search_steps_from_the_capacity_then_bisects(monkeypatch, sustainable, want_rates):
    """The search's points on a fake replay that passes exactly up to `sustainable` req/s: from the saturated
    capacity (20) up or down by RATE_STEP until a pass and a failure bracket the maximum, then bisecting."""
    from types import SimpleNamespace

    import benchmarks.suite as suite

    def fake_replay(engine, trace, slo, **kw):
        ok = trace[0]["rate"] <= sustainable
        return {"requests": 1, "slo_attainment": 1.0 if ok else 0.5, "kept_up": 1.0, "stopped": None,
                "out_tok_s_window": 1.0, "ttft_p50_s": 0.1, "ttft_p99_s": 0.2}  # fmt: skip

    monkeypatch.setattr(suite, "replay", fake_replay)
    monkeypatch.setattr(suite, "trace_for", lambda a, n, rate: [{"rate": rate}])
    a = SimpleNamespace(points=5, slo_s=6.0)
    res = suite.rate_search(a, None, 100, 20.0, lambda text: None, [])
    assert [p["rate"] for p in res["points"]] == pytest.approx(want_rates)
    passed = [r for r in want_rates if r <= sustainable]
    assert res["max_rate"] == (pytest.approx(max(passed)) if passed else None)
    assert res["bracketed"] == (bool(passed) and max(want_rates) > max(passed))


def test_table_report_marks_unbracketed_maxima_as_lower_bounds(tmp_path):
    """A maximum with no failing rate above it is a lower bound: the table writes it as ">= x" and marks the
    shares of base it enters (">=" when only the row's maximum is a bound, "<=" when only base's, "~" both)."""
    from benchmarks.suite import main

    def row(n: int, outcomes: dict[float, bool]) -> dict:
        points = [{"rate": rate, "stopped": None, "slo_attainment": 1.0 if ok else 0.5, "kept_up": 1.0,
                   "ramp_ceiling": 1.0, "out_tok_s_window": 100.0, "ttft_p50_s": 0.05, "ttft_p99_s": 0.1}
                  for rate, ok in outcomes.items()]  # fmt: skip
        best = max((p for p in points if p["slo_attainment"] == 1.0), key=lambda p: p["rate"])
        return {"adapters": n, "saturated": {"req_s": 10.0}, "max_rate": best["rate"], "at_max": best,
                "points": points}  # fmt: skip

    rows = [row(0, {10.0: True, 12.5: False}), row(100, {8.0: True, 10.0: True}), row(1000, {8.0: True, 10.0: False}),
            row(2000, {6.0: True, 7.5: True})]  # fmt: skip
    for r in rows:
        r["share_of_base_max_rate"] = r["max_rate"] / 10.0
        r["share_of_base_saturated"] = 1.0
    res = {"suite": "s-lora-table", "gpu": "CPU", "commit": "x", "settings_used": {"smoke": False},
           "lengths": [8, 512], "slo_s": 6.0, "settings": [{"setting": "S2", "rows": rows}]}  # fmt: skip
    (tmp_path / "s-lora-table.json").write_text(json.dumps(res))
    main(["s-lora-table", "--report-only", "--out", str(tmp_path)])
    md = (tmp_path / "s-lora-table.md").read_text()
    assert "| S2 | base | 10.00 | 10.00 | 100.00 | 100% |" in md
    assert "| S2 | 100 | 10.00 | >= 10.00 | 100.00 | >= 100% |" in md
    assert "| S2 | 1000 | 10.00 | 8.00 | 100.00 | 80% |" in md
    assert "| S2 | 2000 | 10.00 | >= 7.50 | 100.00 | >= 75% |" in md
    assert "- S2: n = 1000 / base 80% (>= 85%); n = 2000 / n = 100 ~ 75% (>= 95%)" in md


def test_schedule_sim_counts_the_adapters_pages_against_the_batch():
    """benchmarks/schedule_sim.py: an adapter's pages are what the engine packs (rank r on q/k/v/o of the
    Llama-2-7B shape: r / 4 pages of 16 tokens' K and V); with a pool that binds, the adapters' pages leave
    fewer for K/V, so a run over many adapters takes more steps at a smaller batch than the base model's; with
    a pool that does not bind, the same steps."""
    from benchmarks.schedule_sim import adapter_pages, simulate

    assert [adapter_pages("llama2-7b", ["q_proj", "k_proj", "v_proj", "o_proj"], r, 16) for r in (64, 32, 16, 8)] == [
        16, 8, 4, 2]  # fmt: skip
    tight = {n: simulate(n, 1200, requests=80) for n in (0, 1000)}
    assert tight[1000]["steps"] > tight[0]["steps"] and tight[1000]["mean_batch"] < tight[0]["mean_batch"]
    assert tight[1000]["mean_distinct_adapters"] > 10 and tight[0]["mean_distinct_adapters"] == 0
    roomy = {n: simulate(n, 20000, requests=80) for n in (0, 1000)}
    assert roomy[1000]["steps"] == roomy[0]["steps"] and roomy[0]["steps"] < tight[0]["steps"]


def test_schedule_sim_from_a_saturated_record(tmp_path):
    """`schedule_sim --from saturated.json` simulates each run at the pool size, shape, sizes and seed the run
    recorded and writes its counts beside the run's."""
    from benchmarks.schedule_sim import beside_record, simulate

    runs = [{"adapters": n, "prefix_caching": False, "steps": 100 + n, "steps_by_kind": {"decode": 90},
             "mean_batch": 10.0, "mean_distinct_adapters": float(n)} for n in (0, 50)]  # fmt: skip
    rec = {"gpu": "GPU X", "commit": "abc", "requests": 40, "max_len": 256, "seed": 3, "max_num_seqs": 32,
           "max_num_batched_tokens": 512, "scheduler": {"admission_headroom_pages": 0}, "lora": {}, "system_prompt": 0,
           "settings": [{"setting": "llama2-7b-qkvo", "shape": "llama2-7b", "targets": ["q_proj", "k_proj", "v_proj",
                         "o_proj"], "pool": {"pages": 300, "page_size": 16}, "runs": runs}]}  # fmt: skip
    (tmp_path / "saturated.json").write_text(json.dumps(rec))
    lines = beside_record(tmp_path / "saturated.json")
    for r, line in zip(runs, [ln for ln in lines if ln.startswith("| llama2-7b-qkvo")], strict=True):
        sim = simulate(r["adapters"], 300, requests=40, max_len=256, seed=3, max_num_seqs=32,
                       max_num_batched_tokens=512, scheduler={"admission_headroom_pages": 0})  # fmt: skip
        assert line.startswith(f"| llama2-7b-qkvo | 300 | {r['adapters']} | {r['steps']} / {sim['steps']} | 90 / "
                               f"{sim['decode_steps']} |")  # fmt: skip
    with pytest.raises(SystemExit, match="give --pages"):
        del rec["settings"][0]["pool"]
        (tmp_path / "saturated.json").write_text(json.dumps(rec))
        beside_record(tmp_path / "saturated.json")
