"""The engine on the CPU (app/engine.py, app/llm.py): the offline API, stop conditions, streaming,
refused requests, detokenization, precisions and backends, and warm-up."""

from __future__ import annotations

import pytest

from app import LLM, SamplingParams
from app.demo import DEMO_ADAPTERS
from app.engine import WARMUP_PREFIX
from app.tokenizer import IncrementalDetokenizer
from tests.models import greedy


def test_offline_api_text_and_ids(llm):
    assert set(llm.engine.adapters) == set(DEMO_ADAPTERS)
    outs = llm.generate(["Hello, world", [5, 6, 7]], adapters=["demo-r4-attn", None], sampling_params=greedy())
    assert [len(o.token_ids) for o in outs] == [8, 8]
    assert outs[0].text == llm.engine.tokenizer.decode(outs[0].token_ids)
    assert outs[0].prompt == "Hello, world" and outs[1].prompt_token_ids == [5, 6, 7]
    assert all(o.finish_reason == "length" and o.finished for o in outs)
    # an adapter changes the output; the same adapter in a different batch gives the same tokens
    base = llm.generate(["Hello, world"], sampling_params=greedy())[0]
    assert base.token_ids != outs[0].token_ids
    again = llm.generate(["x", "Hello, world"], adapters=[None, "demo-r4-attn"], sampling_params=greedy())[1]
    assert again.token_ids == outs[0].token_ids


def test_stop_strings_and_stop_tokens(llm):
    full = llm.generate(["The quick brown"], sampling_params=greedy(16))[0]
    assert len(full.text) > 4
    stop = full.text[3:5]
    out = llm.generate(["The quick brown"], sampling_params=greedy(16, stop=[stop]))[0]
    assert out.finish_reason == "stop"
    assert out.text == full.text[: full.text.find(stop)]
    kept = llm.generate(["The quick brown"], sampling_params=greedy(16, stop=[stop], include_stop_str_in_output=True))
    assert kept[0].finish_reason == "stop" and kept[0].text == full.text[: full.text.find(stop) + len(stop)]
    tok = full.token_ids[4]
    out = llm.generate(["The quick brown"], sampling_params=greedy(16, stop_token_ids=[tok]))[0]
    cut = full.token_ids.index(tok)
    assert out.finish_reason == "stop" and out.token_ids == full.token_ids[: cut + 1]
    # as vLLM: the stop token's text is not in the output unless include_stop_str_in_output (a stop token where
    # both texts are whole characters: the detokenizer holds back a partial UTF-8 sequence)
    decode = llm.engine.tokenizer.decode
    ids = full.token_ids
    cut = next(
        c for c in range(1, len(ids))
        if c == ids.index(ids[c]) and "\ufffd" not in decode(ids[: c + 1]) and decode(ids[:c]) != decode(ids[: c + 1])
    )  # fmt: skip
    for keep in (False, True):
        p = greedy(16, stop_token_ids=[ids[cut]], include_stop_str_in_output=keep)
        out = llm.generate(["The quick brown"], sampling_params=p)[0]
        assert out.finish_reason == "stop" and out.token_ids == ids[: cut + 1]
        assert out.text == decode(ids[: cut + keep]).rstrip("\ufffd")


def test_truncate_prompt_tokens(llm):
    """vLLM's truncate_prompt_tokens offline: the model sees the prompt's last k tokens (-1: max_model_len)."""
    ids = llm.engine.tokenizer.encode("The quick brown fox jumps over the lazy dog")
    want = llm.generate([ids[-4:]], sampling_params=greedy(6))[0]
    for prompt in (ids, "The quick brown fox jumps over the lazy dog"):
        got = llm.generate([prompt], sampling_params=greedy(6, truncate_prompt_tokens=4))[0]
        assert got.prompt_token_ids == ids[-4:] and got.token_ids == want.token_ids
    whole = llm.generate([ids], sampling_params=greedy(6, truncate_prompt_tokens=-1))[0]
    assert whole.prompt_token_ids == ids  # shorter than max_model_len: nothing cut
    for bad in (0, -2):
        with pytest.raises(ValueError, match="truncate_prompt_tokens"):
            greedy(6, truncate_prompt_tokens=bad)


def test_skip_special_tokens(llm):
    """vLLM's skip_special_tokens: special tokens add no text by default, their own text when False; the EOS
    that ends an output adds none either way unless include_stop_str_in_output."""
    tok = llm.engine.tokenizer
    bos, eos = tok.hf.bos_token_id, tok.eos_token_id
    assert bos is not None and eos is not None and bos != eos
    forced = dict(logit_bias={bos: 100.0})  # every token is BOS (special)
    skipped = llm.generate(["Hello"], sampling_params=greedy(3, **forced))[0]
    shown = llm.generate(["Hello"], sampling_params=greedy(3, skip_special_tokens=False, **forced))[0]
    assert skipped.token_ids == shown.token_ids == [bos] * 3
    assert skipped.text == "" and shown.text == tok.hf.bos_token * 3
    ends = dict(max_tokens=3, temperature=0.0, logit_bias={eos: 100.0}, skip_special_tokens=False)
    out = llm.generate(["Hello"], sampling_params=SamplingParams(**ends))[0]
    assert out.token_ids == [eos] and out.finish_reason == "stop" and out.text == ""
    out = llm.generate(["Hello"], sampling_params=SamplingParams(include_stop_str_in_output=True, **ends))[0]
    assert out.text == tok.hf.eos_token


def test_eos_stops_unless_ignored(llm):
    eos = llm.engine.tokenizer.eos_token_id
    # find a prompt whose greedy continuation hits EOS by forcing it through stop_token_ids equivalence:
    # with ignore_eos=False the engine must stop at the first EOS it samples
    e = llm.engine
    e.eos_token_ids = {eos} | set(llm.generate([[9, 9]], sampling_params=greedy(3))[0].token_ids[1:2])
    out = llm.generate([[9, 9]], sampling_params=SamplingParams(max_tokens=3, temperature=0))[0]
    assert out.finish_reason == "stop" and len(out.token_ids) == 2
    e.eos_token_ids = {eos}


def test_generation_config_eos_ids_stop(llm, demo, tmp_path):
    """generation_config.json's eos_token_id (a list, as chat models' turn-end tokens) stops generation too,
    as in vLLM; config.json's and the tokenizer's stay."""
    import json
    import shutil

    from app import LLM

    second = llm.generate([[9, 9]], sampling_params=greedy(3))[0].token_ids[1]
    model = tmp_path / "model"
    shutil.copytree(demo / "model", model)
    gen = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": [gen["eos_token_id"], second]}))
    other = LLM(str(model), device="cpu", dtype="float32", warmup="off")
    assert other.engine.eos_token_ids == {llm.engine.tokenizer.eos_token_id, second}
    out = other.generate([[9, 9]], sampling_params=SamplingParams(max_tokens=3, temperature=0))[0]
    assert out.finish_reason == "stop" and len(out.token_ids) == 2


def test_streaming_deltas_add_up(llm):
    e = llm.engine
    rid = e.add_request("Hello, world", greedy(12), adapter="demo-r16-all")
    text, ids = "", []
    while e.has_unfinished():
        for o in e.step():
            assert o.request_id == rid
            text += o.delta_text
            ids += o.delta_token_ids
            last = o
    assert last.finished and text == last.text and ids == last.token_ids


def test_bad_requests_are_refused(llm):
    e = llm.engine
    with pytest.raises(ValueError, match="empty"):
        e.add_request([], greedy())
    with pytest.raises(ValueError, match="vocabulary"):
        e.add_request([10**6], greedy())
    with pytest.raises(ValueError, match="context length"):
        e.add_request([1] * 10, greedy(10**5))
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(max_tokens=4, min_tokens=5)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    assert not e.has_unfinished()


def test_incremental_detokenizer_matches_full_decode(llm):
    tok = llm.engine.tokenizer
    ids = tok.encode("Hello, world! Serving thousands of concurrent LoRA adapters. é ü 日本")
    d = IncrementalDetokenizer(tok)
    for i in range(1, len(ids) + 1):
        d.add(ids[:i])
    assert d.text == tok.decode(ids)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_runs_close_to_float32(demo, llm, dtype):
    """float16 / bfloat16 weights, pool and adapters: the first greedy token mostly agrees with float32."""
    half = LLM(model=str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype=dtype)
    assert half.engine.executor.pool.dtype == getattr(__import__("torch"), dtype)
    prompts = [[3 + i, 7 + 2 * i, 11 + i] for i in range(12)]
    names = [None] + list(DEMO_ADAPTERS)
    adapters = [names[i % len(names)] for i in range(12)]
    a = [o.token_ids[0] for o in llm.generate(prompts, greedy(1), adapters)]
    b = [o.token_ids[0] for o in half.generate(prompts, greedy(1), adapters)]
    assert sum(x == y for x, y in zip(a, b)) >= 9, (a, b)


def test_triton_backend_in_the_engine_equals_torch(demo, llm):
    """The engine on the Triton kernels (the CPU runs them under TRITON_INTERPRET=1): prefill, decode,
    mixed adapters and base requests give the torch backend's greedy tokens."""
    tri = LLM(
        model=str(demo / "model"),
        adapters=str(demo / "adapters"),
        device="cpu",
        dtype="float32",
        kernel_backend="triton",
    )
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15, 16, 17], [18, 19]]
    names = ["demo-r64-all", None, "demo-r8-mlp", "demo-r1-qv"]
    want = [o.token_ids for o in llm.generate(prompts, greedy(4), names)]
    assert [o.token_ids for o in tri.generate(prompts, greedy(4), names)] == want


def _same_batch(llm) -> list[list[int]]:
    """Greedy and unseeded sampled requests, mixed adapters and lengths: the engine's state shows in them
    (page ids do not, random seeds drawn from the runner's seed stream do)."""
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 11] * 3, [12], [13, 14, 15, 16, 17], [18, 19]]
    names = ["demo-r64-all", None, "demo-r8-mlp", None]
    params = [greedy(6), greedy(6), SamplingParams(max_tokens=6, temperature=1.0, ignore_eos=True), greedy(6)]
    return [o.token_ids for o in llm.generate(prompts, params, names)]


def _assert_clean(e) -> None:
    s = e.pool_stats()
    assert not e.requests and not e.detok and not e.has_unfinished() and e.is_idle_clean()
    assert (s.kv, s.adapter, s.free, s.loads, s.evictions, s.hits) == (0, 0, s.total, 0, 0, 0)
    assert e.steps == 0 and e.scheduler.num_preemptions == 0 and e.scheduler.num_prefetches == 0
    assert not any(n.startswith(WARMUP_PREFIX) for n in [*e.adapters, *e.executor.adapters])
    e.pool.check()


def test_warmup_leaves_the_engine_clean_and_outputs_unchanged(demo, llm):
    """warmup="on" on the CPU (auto is CUDA only): the temporary adapter, the prefills and the decode
    batches leave nothing behind, and a following batch gives an engine without warmup's tokens."""
    assert llm.engine.warmup_s is None  # auto: off on the CPU
    warm = LLM(model=str(demo / "model"), device="cpu", dtype="float32", warmup="on")
    e = warm.engine
    assert e.warmup_s is not None and e.warmup_s > 0
    _assert_clean(e)
    cold = LLM(model=str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype="float32", warmup="off")
    for name in DEMO_ADAPTERS:
        warm.add_adapter(name, str(demo / "adapters" / name))
    assert _same_batch(warm) == _same_batch(cold)
    # again on a used engine (adapters cached in the pool): idle again, the next batch unchanged
    before = e.pool_stats()
    e.warmup()
    assert e.is_idle_clean() and not e.requests and not any(n.startswith(WARMUP_PREFIX) for n in e.adapters)
    assert e.pool_stats() == before and e.pool.resident_adapters()
    e.pool.check()
    assert _same_batch(warm) == _same_batch(cold)
    e.add_request([5, 6], greedy(3))
    with pytest.raises(RuntimeError, match="idle"):
        e.warmup()


def test_decode_graph_plan_slot_bounds():
    """A decode graph's LoRA plan is built for the smallest slot bound (EngineConfig.cuda_graph_slot_bounds, then
    max_loras_per_batch) that holds the step's adapters, among those below the batch bucket (app/cuda_graphs.py);
    max_loras_per_batch is always one. The config takes positive counts only."""
    from app.config import EngineConfig
    from app.cuda_graphs import plan_slot_bound, plan_slot_bounds

    b = EngineConfig(model="m").cuda_graph_slot_bounds
    assert b == (16,)
    assert plan_slot_bounds(256, 256, b) == [16, 256] and plan_slot_bounds(32, 64, b) == [16, 64]
    assert plan_slot_bounds(16, 256, b) == [256] and plan_slot_bounds(1, 8, b) == [8]
    assert plan_slot_bounds(64, 8, b) == [8]
    assert [plan_slot_bound(256, n, 256, b) for n in (0, 1, 16, 17, 256)] == [16, 16, 16, 256, 256]
    assert [plan_slot_bound(32, n, 64, b) for n in (1, 16, 17, 32)] == [16, 16, 64, 64]
    assert plan_slot_bounds(256, 256, ()) == [256] and plan_slot_bounds(128, 256, (64, 4, 16)) == [4, 16, 64, 256]
    assert EngineConfig(model="m", cuda_graph_slot_bounds=[64, 4, 64]).cuda_graph_slot_bounds == (4, 64)
    with pytest.raises(ValueError, match="positive"):
        EngineConfig(model="m", cuda_graph_slot_bounds=(0,))


def test_warmup_runs_the_decode_graphs_of_the_adapters_lora_groups(demo):
    """A decode graph runs the LoRA groups of its step's adapters only, and warm-up's own adapters target every
    module: `warmup_adapter_graphs` runs one decode batch of every graph batch size with a temporary adapter
    of each group set that a registered adapter targets (the demo's q/v, q/k/v/o, MLP and q/v/down adapters;
    its all-module ones are warm already), then nothing more; the engine is left clean. With warm-up off
    (the CPU's default) it does nothing."""
    from app.cuda_graphs import decode_buckets
    from app.lora.layer import LORA_GROUPS

    cold = LLM(model=str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype="float32")
    assert cold.engine.warmup_s is None and cold.engine.warmup_adapter_graphs() == 0.0
    e = LLM(model=str(demo / "model"), device="cpu", dtype="float32", warmup="on", scheduler={"max_num_seqs": 6}).engine
    e.add_adapters({name: str(demo / "adapters" / name) for name in DEMO_ADAPTERS})
    sets = {e.adapters[name].groups for name in DEMO_ADAPTERS}
    assert sets == {("qkv",), ("qkv", "o"), ("gate_up", "down"), ("qkv", "down"), tuple(LORA_GROUPS)}
    decodes, step = [], e.step

    def spy():
        running = e.scheduler.running
        if running and all(r.num_computed_tokens >= len(r.prompt_token_ids) for r in running):
            decodes.append(({e.adapters[r.adapter].groups for r in running}, len(running)))
        return step()

    e.step = spy
    assert e.warmup_adapter_graphs() > 0
    seen = {(groups.pop(), n) for groups, n in decodes if len(groups) == 1}
    assert seen == {(g, b) for g in sets - {tuple(LORA_GROUPS)} for b in decode_buckets(6)}
    _assert_clean(e)
    decodes.clear()
    assert e.warmup_adapter_graphs() == 0.0 and not decodes  # every set is warm


def test_warmup_runs_every_request_despite_an_slo(demo):
    """Early abort (early_abort_ttft_slo_s) is off for the warm-up requests, which go through a scheduler of
    their own: every one runs to its length, one wave per prompt length and one per decode batch size; the
    live scheduler, its config and its counters are never touched; its mixed waves run decode beside prefill."""
    e = LLM(
        model=str(demo / "model"),
        device="cpu",
        dtype="float32",
        scheduler={"early_abort_ttft_slo_s": 1e-6, "max_num_seqs": 8},
    ).engine
    finished, batches, mixed, step = [], [], [], e.step
    live = e.scheduler

    def spy():
        assert live.cfg.early_abort_ttft_slo_s == 1e-6 and not live.running  # the live scheduler is not touched
        batches.append(len(e.scheduler.running))
        sch = e.scheduler  # a mixed step: a request decodes while one waits for its prefill
        mixed.append(any(r.num_computed_tokens >= len(r.prompt_token_ids) for r in sch.running) and bool(sch.waiting))
        outs = step()
        finished.extend((o.request_id, o.finish_reason, len(o.token_ids)) for o in outs if o.finished)
        return outs

    e.step = spy
    e.warmup()
    assert finished and all(rid.startswith(WARMUP_PREFIX) and reason == "length" for rid, reason, _ in finished)
    # 6 prompt lengths x 3 adapter ranks x (adapter, base), then the same as mixed waves in both orders (the
    # first part's request decodes 4 tokens while the second part's prefills), then the decode buckets twice
    # (the graphs with LoRA, then those of the base model alone)
    waves = len(e.cfg.warmup_prompt_lens) * len(e.cfg.warmup_ranks)
    assert sorted(n for *_, n in finished) == [2] * (2 * waves + 2 * waves + 2 * (1 + 2 + 4 + 8)) + [4] * 2 * waves
    assert {1, 2, 4, 8} <= set(batches)
    assert sum(mixed) == 2 * waves
    assert e.scheduler is live and live.cfg.early_abort_ttft_slo_s == 1e-6 and live.num_early_aborts == 0


def test_warmup_with_few_seqs_short_context_and_a_tight_pool(demo, caplog):
    """max_num_seqs=3 (graph buckets 1, 2, 3), prompts capped by max_model_len, the warm-up adapter capped
    by max_lora_rank and a pool that holds it and only a few requests; then a pool too small for the
    adapter: warmup runs the base model only."""
    kw = dict(
        device="cpu",
        dtype="float32",
        scheduler={"max_num_seqs": 3, "max_model_len": 40},
        lora={"max_lora_rank": 8},
        pool={"page_size": 8, "num_pages": 20},
    )
    warm = LLM(model=str(demo / "model"), warmup="on", **kw)
    _assert_clean(warm.engine)
    cold = LLM(model=str(demo / "model"), warmup="off", **kw)
    prompts = [[3 + i, 7 + 2 * i, 11 + i] * (1 + i) for i in range(5)]
    want = [o.token_ids for o in cold.generate(prompts, greedy(5))]
    assert [o.token_ids for o in warm.generate(prompts, greedy(5))] == want
    with caplog.at_level("WARNING", logger="app.engine"):
        tiny = LLM(model=str(demo / "model"), warmup="on", **dict(kw, pool={"page_size": 8, "num_pages": 6}))
    assert "warmup without a rank-8 adapter" in caplog.text
    _assert_clean(tiny.engine)
    assert [o.token_ids for o in tiny.generate(prompts, greedy(5))] == want
