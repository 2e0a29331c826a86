"""Asynchronous scheduling (EngineConfig.async_scheduling) on the CPU: the engine launches step N+1 before it
reads step N's tokens (the CPU has no overlap, but the code path is the GPU's: placeholders filled from the
tokens left "on the device", handles, one-step-late results). Every request's output equals the synchronous
engine's (tokens, text, finish reason, logprobs, streamed deltas) and, for greedy requests, transformers +
PEFT's, on a workload that mixes prefill and decode, adapters, EOS, stop tokens and strings, max_tokens,
min_tokens, logprobs, prompt logprobs, seeds, a penalized request, aborts and requests added between steps,
with a roomy pool and with a pool so small that requests are preempted; afterwards the pool is clean."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import pytest
import torch

from app import LLM, SamplingParams
from app.engine import EngineDeadError
from app.request import RequestStatus
from app.sampling import FAILED, sample, sample_on_device, token_logprobs, token_logprobs_on_device
from tests.models import ADAPTERS, HFReference, make_model, make_peft_adapters

SMALL = ["a-r1-q", "a-r4-qv", "a-r4-down", "a-r8-attn"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("async")
    model = make_model(root, "gqa")
    adapters = {n: str(p) for n, p in make_peft_adapters(root, model, {n: ADAPTERS[n] for n in SMALL}).items()}
    ref = HFReference(model, adapters)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    return model, adapters, ref, vocab


def make_llm(setup, async_scheduling: bool, **cfg) -> LLM:
    model, adapters, _, _ = setup
    cfg = {"device": "cpu", "dtype": "float32", **cfg}
    return LLM(model=str(model), adapters=adapters, async_scheduling=async_scheduling, **cfg)


@dataclass
class Planned:
    step: int  # added before this step() call
    prompt: list[int]
    params: SamplingParams
    adapter: str | None
    abort_after: int | None = None  # aborted once it has streamed this many tokens
    hf: bool = False  # greedy, ignore_eos, no stop: compared with transformers + PEFT


@dataclass
class Seen:
    ids: list[int] = field(default_factory=list)
    text: str = ""
    lps: list = field(default_factory=list)
    final: object = None
    aborted: bool = False


def drive(llm: LLM, plan: dict[str, Planned], eos: int) -> dict[str, Seen]:
    """Runs the plan step by step: requests are added before their step, aborted after their k-th token."""
    e = llm.engine
    # a token this model produces stands for EOS (random weights rarely produce the real one)
    e.eos_token_ids = e.eos_token_ids | {eos}
    seen = {rid: Seen() for rid in plan}
    todo = sorted(plan.items(), key=lambda kv: kv[1].step)
    step = 0
    while todo or e.has_unfinished():
        while todo and todo[0][1].step <= step:
            rid, p = todo.pop(0)
            e.add_request(p.prompt, p.params, p.adapter, request_id=rid)
        for o in e.step():
            s = seen[o.request_id]
            assert s.final is None and not s.aborted, f"{o.request_id}: an output after its last one"
            s.ids += o.delta_token_ids
            s.text += o.delta_text
            s.lps += o.delta_logprobs or []
            if o.finished:
                s.final = o
        for rid, p in plan.items():
            s = seen[rid]
            if p.abort_after is not None and not s.aborted and s.final is None and len(s.ids) >= p.abort_after:
                e.abort(rid)
                s.aborted = True
        step += 1
    assert e.is_idle_clean() and e.inflight is None
    e.pool.check()
    return seen


def workload(setup, ref_tokens) -> tuple[dict[str, Planned], int]:
    vocab = setup[3]
    rng = random.Random(3)
    names = SMALL + [None]
    plan: dict[str, Planned] = {}

    def prompt(n):
        return [rng.randrange(3, vocab) for _ in range(n)]

    for i in range(10):  # greedy, added over the first steps: prefill chunks next to decodes
        p = SamplingParams(max_tokens=rng.randint(3, 12), temperature=0.0, ignore_eos=True)
        plan[f"greedy{i}"] = Planned(i // 2, prompt(rng.choice([1, 4, 9, 17, 33])), p, names[i % 5], hf=True)
    plan["logprobs"] = Planned(0, prompt(7), SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True,
                                                            logprobs=3), "a-r4-qv", hf=True)  # fmt: skip
    plan["seeded"] = Planned(1, prompt(5), SamplingParams(max_tokens=10, temperature=0.9, top_k=40, top_p=0.9,
                                                          seed=11, ignore_eos=True, logprobs=2), "a-r1-q")  # fmt: skip
    plan["seeded-plain"] = Planned(2, prompt(12), SamplingParams(max_tokens=9, temperature=1.0, seed=5,
                                                                 ignore_eos=True), None)  # fmt: skip
    plan["unseeded-greedy-topk1"] = Planned(0, prompt(3), SamplingParams(max_tokens=5, top_k=1, ignore_eos=True), None)
    eos_prompt = prompt(6)
    eos = ref_tokens(eos_prompt, "a-r8-attn", 8)[3]  # this request stops at its 4th token or before
    plan["eos"] = Planned(1, eos_prompt, SamplingParams(max_tokens=8, temperature=0.0), "a-r8-attn")
    stop_prompt = prompt(9)
    stop_tok = ref_tokens(stop_prompt, None, 6)[2]
    plan["stop-token"] = Planned(3, stop_prompt, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True,
                                                                stop_token_ids=[stop_tok]), None)  # fmt: skip
    min_tokens = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, stop_token_ids=[stop_tok], min_tokens=5)
    plan["min-tokens"] = Planned(2, stop_prompt, min_tokens, None)
    plan["stop-string"] = Planned(4, prompt(11), SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True,
                                                                stop=["e", "a"]), "a-r4-down")  # fmt: skip
    plan["abort"] = Planned(0, prompt(20), SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True),
                            "a-r4-qv", abort_after=3)  # fmt: skip
    plan["prompt-only"] = Planned(2, prompt(8), SamplingParams(max_tokens=0, prompt_logprobs=2), None)
    plan["prompt-lps"] = Planned(1, prompt(10), SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True,
                                                               prompt_logprobs=1), "a-r1-q")  # fmt: skip
    plan["penalized"] = Planned(3, prompt(6), SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True,
                                                             repetition_penalty=1.3), "a-r4-qv")  # fmt: skip
    plan["late"] = Planned(9, prompt(25), SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True), "a-r4-down",
                           hf=True)  # fmt: skip
    return plan, eos


def summary(seen: dict[str, Seen]) -> tuple[dict, dict]:
    """Per request: (streamed ids, streamed text, aborted, final ids, text, reason, error) and the logprobs
    (streamed, final, prompt) as a flat list of values, the top ids and ranks apart."""
    out, lps = {}, {}
    for rid, s in seen.items():
        f = s.final
        final = None if f is None else (f.token_ids, f.text, f.finish_reason, f.error)
        out[rid] = (s.ids, s.text, s.aborted, final)
        every = [*s.lps, *(f.logprobs or [] if f else []), *(f.prompt_logprobs or [] if f else [])]
        every = [lp for lp in every if lp is not None]
        lps[rid] = (
            [lp.logprob for lp in every] + [v for lp in every for _, v in lp.top],
            [(lp.rank, [t for t, _ in lp.top]) for lp in every],
        )
    return out, lps


def compare_sync_async(setup, cfg: dict, tol: float) -> dict[bool, int]:
    """Runs the workload with the synchronous and the asynchronous engine and checks that every request's
    outputs are the same (logprobs within `tol`), the greedy ones transformers + PEFT's, and that every
    case happened. Returns each run's preemptions."""
    ref = setup[2]
    plan, eos = workload(setup, ref.greedy)
    runs = {}
    for mode in (False, True):
        llm = make_llm(setup, mode, **cfg)
        assert llm.engine.async_scheduling is mode
        runs[mode] = (summary(drive(llm, plan, eos)), llm.engine.scheduler.num_preemptions)
    ((sync, sync_lps), sync_pre), ((asyn, async_lps), async_pre) = runs[False], runs[True]
    diff = [rid for rid in plan if sync[rid] != asyn[rid]]
    assert not diff, f"async differs from sync for {diff}: {[(sync[r], asyn[r]) for r in diff[:1]]}"
    for rid in plan:  # a token's logits come from a decode or a recompute's prefill: float32 rounding apart
        assert sync_lps[rid][1] == async_lps[rid][1], rid
        assert sync_lps[rid][0] == pytest.approx(async_lps[rid][0], abs=tol), rid
    for rid, p in plan.items():
        if p.hf:
            assert asyn[rid][3][0] == ref.greedy(p.prompt, p.adapter, p.params.max_tokens), rid
    # the cases were meant to happen: EOS, a stop token after min_tokens, a stop string, an abort
    fin = {rid: v[3] for rid, v in asyn.items()}
    assert fin["eos"][2] == "stop" and fin["eos"][0][-1] == eos and len(fin["eos"][0]) <= 4
    assert fin["stop-token"][2] == "stop" and len(fin["stop-token"][0]) <= 3
    assert fin["min-tokens"][0][:5].count(fin["stop-token"][0][-1]) == 0 and len(fin["min-tokens"][0]) > 5
    assert fin["stop-string"][2] == "stop" and len(fin["stop-string"][0]) < 10
    assert asyn["abort"][2] and fin["abort"] is None and len(asyn["abort"][0]) == 3
    assert fin["prompt-only"][0] == [] and len(async_lps["prompt-only"][1]) == 7
    assert len(async_lps["logprobs"][1]) == 2 * 6 and len(async_lps["seeded"][1]) == 2 * 10
    return {False: sync_pre, True: async_pre}


@pytest.mark.parametrize("pool", ["roomy", "tiny"])
def test_async_equals_sync_and_peft(setup, pool):
    cfg = {"scheduler": {"max_num_batched_tokens": 48}}
    if pool == "tiny":  # room for a few requests' KV next to the adapters: preemption by recompute
        cfg["pool"] = {"page_size": 4, "num_pages": 48}
        cfg["scheduler"]["admission_headroom_pages"] = 0  # admit whatever fits: the preemption path
    preemptions = compare_sync_async(setup, cfg, 1e-5)
    if pool == "tiny":
        assert preemptions[False] > 0 and preemptions[True] > 0, "the pool was meant to be small enough to preempt"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_async_on_the_gpu_with_cuda_graphs_equals_sync(setup):
    """On the GPU (Triton kernels; decode steps replayed as CUDA graphs, whose token buffer takes the
    placeholders' tokens on the device), float32: the same outputs with and without async scheduling."""
    cfg = {"device": "cuda", "scheduler": {"max_num_batched_tokens": 48, "max_num_seqs": 16}}
    compare_sync_async(setup, cfg, 1e-4)
    greedy = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    outs = {}
    for mode in (False, True):  # decode-only steps: every step after the prefill is a graph replay
        llm = make_llm(setup, mode, **cfg)
        outs[mode] = [o.token_ids for o in llm.generate([[5, 6, 7], [8, 9], [10]], greedy)]
        assert llm.engine.executor.graphs.graphs
    assert outs[False] == outs[True]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_async_launch_does_not_wait_for_the_device(setup, monkeypatch):
    """After warm-up, launching a step (graph-replayed decodes; eager steps with prefill chunks, adapter
    loads, seeded sampling, min_tokens and logprobs) makes no synchronizing CUDA call, so the device's
    queue never drains: torch.cuda.set_sync_debug_mode("error") raises on any."""
    llm = make_llm(setup, True, device="cuda", scheduler={"max_num_batched_tokens": 48, "max_num_seqs": 16})
    e = llm.engine
    rng = random.Random(1)
    names = SMALL + [None]
    prompts = [[rng.randrange(3, 200) for _ in range(rng.choice([1, 5, 17, 40]))] for _ in range(12)]
    params = [
        SamplingParams(max_tokens=12, temperature=0.0 if i % 2 else 0.8, seed=i, ignore_eos=True,
                       logprobs=2 if i % 3 == 0 else None, min_tokens=3 if i % 4 == 0 else 0)
        for i in range(12)
    ]  # fmt: skip
    adapters = [names[i % 5] for i in range(12)]
    want = [o.token_ids for o in llm.generate(prompts, params, adapters)]  # compiles everything once
    for name in list(e.pool.resident_adapters()):
        e.pool.evict(name)  # loaded again in the checked steps
    launch, syncs = e.executor.launch, []

    def strict(out):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return launch(out)
        except RuntimeError as err:
            syncs.append(repr(err))
            raise
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(e.executor, "launch", strict)
    loads = e.pool.loads
    got = [o.token_ids for o in llm.generate(prompts, params, adapters)]
    assert not syncs, syncs[:3]
    assert got == want and e.pool.loads > loads


def test_a_preempted_request_whose_pending_token_ends_it_leaves_the_queue(setup, monkeypatch):
    """A pool of 4 pages and 40 short requests: requests are preempted while their last token is pending
    and finish from the queue when it is read (Scheduler.finish of a waiting request); the tokens equal
    the synchronous engine's and the pool ends clean."""
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 400) for _ in range(rng.randrange(2, 7))] for _ in range(40)]
    params = [SamplingParams(max_tokens=rng.randrange(1, 5), temperature=0.0, ignore_eos=True) for _ in range(40)]
    outs, from_queue = {}, []
    for mode in (False, True):
        llm = make_llm((setup[0], {}, None, None), mode, scheduler={"max_num_batched_tokens": 64,
                       "admission_headroom_pages": 0}, pool={"page_size": 4, "num_pages": 4})  # fmt: skip
        sch, finish = llm.engine.scheduler, llm.engine.scheduler.finish

        def recording(req, reason, finish=finish, mode=mode):
            if mode and req.status == RequestStatus.WAITING:
                from_queue.append(req.request_id)
            finish(req, reason)

        monkeypatch.setattr(sch, "finish", recording)
        outs[mode] = [o.token_ids for o in llm.generate(prompts, params)]
        assert llm.engine.is_idle_clean() and not sch.waiting and sch.num_preemptions > 0
        llm.engine.pool.check()
    assert outs[True] == outs[False]
    assert from_queue, "no request was meant to finish from the queue"


def test_steps_overlap_and_placeholders_come_from_the_last_step(setup):
    """With async scheduling a step's tokens are read one step() later, the next step was scheduled with
    placeholders, and a request that finished has one extra token computed and dropped."""
    llm = make_llm(setup, True)
    e = llm.engine
    rid = e.add_request([5, 6, 7], SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    assert e.step() == []  # the prefill is launched, not read
    assert e.inflight is not None and e.requests[rid].num_pending == 1
    outs = e.step()  # launches the first decode (a placeholder), reads the prefill's token
    assert [len(o.delta_token_ids) for o in outs] == [1]
    seqs = e.inflight.out.seqs
    assert [(s.request_id, s.from_last_step, s.start_pos) for s in seqs] == [(rid, True, 3)]
    e.step()
    assert e.requests[rid].num_pending == 1 and len(e.requests[rid].output_token_ids) == 2
    outs = e.step()  # its 3rd token is pending: nothing to launch; reads it and finishes
    assert outs[0].finished and len(outs[0].token_ids) == 3 and not e.has_unfinished() and e.is_idle_clean()
    sync = make_llm(setup, False).generate([[5, 6, 7]], SamplingParams(max_tokens=3, temperature=0.0))
    assert sync[0].token_ids == outs[0].token_ids


def test_a_failed_launch_fails_its_requests_and_the_engine_goes_on(setup, monkeypatch):
    llm = make_llm(setup, True)
    e = llm.engine
    greedy = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    a = e.add_request([3, 4, 5], greedy)
    e.step()
    launch = e.executor.launch

    def broken(out):
        raise RuntimeError("boom")

    monkeypatch.setattr(e.executor, "launch", broken)
    first, last = e.step()  # the prefill's token (read after the failed launch), then the failure
    assert first.request_id == last.request_id == a and not first.finished and len(first.delta_token_ids) == 1
    assert last.finished and last.finish_reason == "error" and "boom" in last.error
    assert last.token_ids == first.delta_token_ids
    monkeypatch.setattr(e.executor, "launch", launch)
    assert e.is_idle_clean() and not e.has_unfinished()
    assert llm.generate([[3, 4, 5]], greedy)[0].token_ids[:1] == last.token_ids
    monkeypatch.setattr(e.executor, "launch", broken)
    with pytest.raises(EngineDeadError):  # MAX_STEP_FAILURES in a row
        for _ in range(5):
            e.add_request([3, 4, 5], greedy)
            e.step()


def test_tensor_parallel_like_executors_stay_synchronous(setup):
    """An executor without launch() (the TP group) runs synchronously even when asked for async."""
    model = setup[0]
    from app.config import EngineConfig
    from app.engine import Engine
    from app.runner import ModelRunner

    cfg = EngineConfig(model=str(model), device="cpu", dtype="float32", async_scheduling=True)

    class SyncOnly:
        def __init__(self, runner):
            self.r = runner

        def __getattr__(self, name):
            if name == "launch":
                raise AttributeError(name)
            return getattr(self.r, name)

    e = Engine(cfg, SyncOnly(ModelRunner(cfg)))
    assert not e.async_scheduling
    e.add_request([3, 4], SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
    assert len(e.step()) == 1 and e.inflight is None


def test_config_default_is_on_for_cuda_only():
    from app.config import EngineConfig

    cfg = EngineConfig(model="m")
    assert cfg.resolved_async_scheduling("cuda") and not cfg.resolved_async_scheduling("cpu")
    assert not EngineConfig(model="m", async_scheduling=False).resolved_async_scheduling("cuda")
    assert EngineConfig(model="m", async_scheduling=True).resolved_async_scheduling("cpu")


def test_sample_on_device_equals_sample():
    """The device sampler gives the host sampler's tokens and logprobs (same generator states), banned
    tokens included, and flags a non-finite row where the host sampler gives FAILED."""
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    logits[5, 7] = float("nan")
    params = [
        SamplingParams(temperature=0.0, logprobs=3),
        SamplingParams(temperature=0.7, seed=1, logprobs=0),
        SamplingParams(temperature=1.3, top_k=5, seed=2),
        SamplingParams(temperature=0.9, top_p=0.5, seed=3, logprobs=2),
        SamplingParams(temperature=0.0, min_tokens=2, max_tokens=4),
        SamplingParams(temperature=1.0, seed=4),
    ]
    banned = [[], [int(logits[1].argmax())], [], [], [int(logits[4].argmax())], []]

    def gens():
        return [None if p.temperature == 0 else torch.Generator().manual_seed(p.seed) for p in params]

    want, want_lps = sample(logits, params, gens(), None, banned)
    tokens, ok = sample_on_device(logits, params, gens(), banned)
    assert want[5] == FAILED and ok.tolist() == [True] * 5 + [False]
    assert tokens.tolist()[:5] == want[:5]
    assert want[1] != int(logits[1].argmax()) and want[4] != int(logits[4].argmax())
    ks = [p.logprobs for p in params[:5]]
    vals, ids, tv = token_logprobs_on_device(logits[:5], tokens[:5], ks)
    assert vals.tolist() == [lp.logprob for lp in want_lps[:5] if lp is not None]
    assert list(zip(ids.tolist(), tv.tolist())) == [t for lp in want_lps[:5] if lp is not None for t in lp.top]
    assert want_lps[0] == token_logprobs(logits[0], want[0], 3)
    draws = []  # the sampler's draws are torch.multinomial's (seeded outputs as before)
    for i in range(10):
        p, row = SamplingParams(temperature=2.0 + i / 10, seed=i), logits[i % 5 : i % 5 + 1]
        probs = torch.softmax((row[0] - row[0].max()) / p.temperature, -1)
        want = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(i)).item()
        got = sample(row, [p], [torch.Generator().manual_seed(i)])[0][0]
        got_device = sample_on_device(row, [p], [torch.Generator().manual_seed(i)])[0].item()
        draws.append((want, got, got_device))
    assert all(a == b == c for a, b, c in draws) and len({a for a, _, _ in draws}) > 3, draws
    with pytest.raises(ValueError):
        sample_on_device(logits, [SamplingParams(repetition_penalty=1.2)], [None])
