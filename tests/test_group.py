"""The TP-group replica's streams (deployments/group.py) in an event loop, without a Ray cluster: how a
stream coalesces its outputs (`stream_interval_s`) and that coalescing changes nothing in what arrives.
tests/test_serve.py streams through a real Serve deployment."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from app import SamplingParams
from app.demo import build_demo
from app.request import RequestOutput
from deployments.group import SLoRAGroup, _Outbox

ADAPTER = "demo-r16-all"


@pytest.fixture(scope="module")
def demo():
    return build_demo()


def group(demo, interval: float) -> SLoRAGroup:
    cfg = {"model": str(demo / "model"), "device": "cpu", "dtype": "float32"}
    return SLoRAGroup(
        "g",
        cfg,
        adapters={ADAPTER: str(demo / "adapters" / ADAPTER)},
        settings={"stream_interval_s": interval},
        ray_metrics=False,
    )


def stream(g: SLoRAGroup, rid: str, ids: list[int], params: SamplingParams) -> list[tuple[float, object]]:
    """(seconds since the call, item) of every item `generate` yields."""

    async def run():
        t0 = time.monotonic()
        return [(time.monotonic() - t0, item) async for item in g.generate(rid, ids, params, ADAPTER)]

    return asyncio.run(run())


def joined(items) -> tuple[list[int], str, str | None, list[int], str]:
    outs = [o for _, o in items]
    return (
        sum((o.delta_token_ids for o in outs), []),
        "".join(o.delta_text for o in outs),
        outs[-1].finish_reason,
        outs[-1].token_ids,
        outs[-1].text,
    )


@pytest.mark.parametrize("stop", [False, True])
def test_coalesced_stream_equals_every_step_stream(demo, stop):
    """Intervals 0, 0.05 and 30 s: the same tokens, text and finish reason (also with a stop string,
    whose text is held back while it could still match); fewer items with an interval; with 30 s (longer
    than the whole generation) just the first token and the end, neither waiting for the interval."""
    ids = [5, 9, 14, 3, 7, 22, 8]
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    runs = {}
    for interval in (0.0, 0.05, 30.0):
        if stop and not runs:  # a stop string from the middle of the greedy text: "stop", text cut
            text = joined(stream(group(demo, 0.0), "probe", ids, params))[1]
            params = dataclasses.replace(params, stop=[text[len(text) // 2 : len(text) // 2 + 3]])
        runs[interval] = stream(group(demo, interval), f"r-{interval}", ids, params)  # a group per loop
    every, short, long = runs[0.0], runs[0.05], runs[30.0]
    for items in runs.values():
        assert all(isinstance(o, RequestOutput) and o.delta_token_ids for _, o in items)  # tokens from the first
        assert items[-1][1].finished and not any(o.finished for _, o in items[:-1])
        tokens, text, reason, all_tokens, all_text = joined(items)
        assert tokens == all_tokens and text == all_text
        assert joined(items) == joined(every)
    assert joined(every)[2] == ("stop" if stop else "length")
    n_tokens = len(joined(every)[0])
    # interval 0: an item per step, unless the consumer falls behind the engine thread (then steps merge)
    assert 2 <= len(every) <= n_tokens
    assert 2 <= len(short) < n_tokens
    # 30 s: the first token (one per step until there is text to show), the end; none waited. The steps
    # whose text was held: at most the tokens before the first that shows text (counted in tokens, since the
    # interval-0 stream merges steps when its consumer falls behind, e.g. on a loaded machine)
    first = next(i for i, (_, o) in enumerate(every) if o.delta_text)
    held = sum(len(o.delta_token_ids) for _, o in every[: first + 1]) - 1
    assert 2 <= len(long) <= 2 + held and long[-1][0] < 15
    assert long[-2][1].delta_text or len(long) == 2


def test_outbox_unit_semantics_for_one_request():
    """An _Outbox of one request (what `generate` streams): the first tokens at once; later ones merged and
    held until the interval since the last item has passed; a finished output at once; an error replaces
    pending tokens; nothing follows a finished output or an error."""

    def out(i: int, finished: bool = False) -> RequestOutput:
        return RequestOutput("r", None, None, [1], [], "", [i], f"<{i}>", finished, "length" if finished else None)

    class _Stream:  # the outbox seen through one request's items
        def __init__(self, interval: float, text: bool = True):
            self.box = _Outbox(interval)
            self.box.open("r", text)

        def put(self, item):
            self.box.put("r", item)

        async def get(self):
            batch = await self.box.get()
            assert list(batch) == ["r"]
            return batch["r"]

    async def run():
        s = _Stream(0.3)
        s.put(out(1))
        t0 = time.monotonic()
        first = await s.get()
        assert first.delta_token_ids == [1] and time.monotonic() - t0 < 0.1
        s.put(out(2))
        s.put(out(3))
        second = await s.get()
        waited = time.monotonic() - t0
        assert second.delta_token_ids == [2, 3] and second.delta_text == "<2><3>" and 0.25 < waited < 2
        s.put(out(4))
        t1 = time.monotonic()
        getter = asyncio.ensure_future(s.get())
        await asyncio.sleep(0.05)
        assert not getter.done()  # held: 0.3 s have not passed
        s.put(out(5, finished=True))
        last = await getter
        assert last.finished and last.delta_token_ids == [4, 5] and time.monotonic() - t1 < 0.25

        f = _Stream(0.3)
        f.put(out(1, finished=True))
        f.put({"error": "engine failure", "status": 500})  # nothing follows the end
        assert (await f.get()).finished

        e = _Stream(0.3)
        e.put(out(1))
        await e.get()
        e.put(out(2))
        e.put({"error": "engine failure", "status": 500})
        e.put(out(3))
        t2 = time.monotonic()
        assert await e.get() == {"error": "engine failure", "status": 500}
        assert time.monotonic() - t2 < 0.1

        h = _Stream(0.3)  # tokens whose text is held back (stop string): not started yet
        h.put(dataclasses.replace(out(1), delta_text=""))
        assert (await h.get()).delta_text == ""
        h.put(out(2))
        t3 = time.monotonic()
        assert (await h.get()).delta_text == "<2>" and time.monotonic() - t3 < 0.1  # the first text at once
        h.put(out(3))
        assert (await h.get()).delta_token_ids == [3] and time.monotonic() - t3 > 0.25
        n = _Stream(0.3, text=False)  # a request without detokenization: its first tokens start it
        n.put(dataclasses.replace(out(1), delta_text=""))
        await n.get()
        n.put(dataclasses.replace(out(2), delta_text=""))
        t4 = time.monotonic()
        await n.get()
        assert time.monotonic() - t4 > 0.25

        z = _Stream(0.0)  # interval 0: whatever is queued, at once
        z.put(out(1))
        z.put(out(2))
        assert (await z.get()).delta_token_ids == [1, 2]
        z.put(out(3))
        assert (await z.get()).delta_token_ids == [3]

    asyncio.run(run())


def test_outbox_batches_a_subscribers_requests():
    """Several requests in one outbox (an ingress replica's subscription): one batch carries every pending
    output; a request's first tokens or its end send the batch at once, the others' tokens ride along;
    otherwise a batch waits for the interval; a closed (aborted) request and unknown ids send nothing."""

    def out(rid: str, i: int, finished: bool = False) -> RequestOutput:
        return RequestOutput(rid, None, None, [1], [], "", [i], f"<{i}>", finished, "length" if finished else None)

    async def run():
        box = _Outbox(0.3)
        for rid in ("a", "b", "c"):
            box.open(rid)
        box.put("a", out("a", 1))
        box.put("b", out("b", 1))
        t0 = time.monotonic()
        first = await box.get()
        assert set(first) == {"a", "b"} and time.monotonic() - t0 < 0.1
        box.put("a", out("a", 2))
        box.put("a", out("a", 3))
        box.put("nobody", out("nobody", 1))  # not opened here: dropped
        box.put("c", out("c", 1))  # c's first tokens: urgent, a's merged tokens go with them
        batch = await box.get()
        assert set(batch) == {"a", "c"} and batch["a"].delta_token_ids == [2, 3] and time.monotonic() - t0 < 0.1
        box.put("a", out("a", 4))
        box.put("b", out("b", 2))
        t1 = time.monotonic()
        batch = await box.get()  # nothing urgent: the interval since the last batch
        assert set(batch) == {"a", "b"} and 0.25 < time.monotonic() - t1 < 2
        box.put("b", out("b", 3, finished=True))
        box.close("a")  # aborted: its pending output and later ones are dropped
        box.put("a", out("a", 5))
        batch = await box.get()
        assert list(batch) == ["b"] and batch["b"].finished
        assert box.requests == {"c": True}  # b ended, a closed
        box.put("c", {"error": "engine failure", "status": 500})
        assert await box.get() == {"c": {"error": "engine failure", "status": 500}}
        assert box.requests == {} and not box.pending

    asyncio.run(run())


def test_adapter_load_does_not_stall_running_streams(tmp_path):
    """A large adapter is read, validated and packed beside the step loop: a stream running meanwhile keeps
    getting tokens (its longest gap stays far below the load's duration; before, the whole load ran in the
    step loop's thread between two steps, so the gap was at least the load). The adapter then serves."""
    from app.demo import write_model, write_peft_adapter, write_tokenizer

    model = tmp_path / "model"
    model.mkdir()
    write_model(
        model,
        write_tokenizer(model),
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    write_peft_adapter(
        tmp_path / "big",
        model,
        512,
        512.0,
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )  # 285 MB (the load must take long enough to see the stream go on beside it)
    cfg = {
        "model": str(model),
        "device": "cpu",
        "dtype": "float32",
        "lora": {"max_lora_rank": 512},
        "pool": {"cpu_pool_bytes": 512 << 20},
    }
    g = SLoRAGroup("g", cfg, settings={"stream_interval_s": 0.0}, ray_metrics=False)
    params = SamplingParams(max_tokens=900, temperature=0.0, ignore_eos=True)

    async def run():
        times: list[float] = []
        gen = g.generate("long", [5, 9, 14], params)

        async def consume():
            async for _ in gen:
                times.append(time.monotonic())

        consumer = asyncio.ensure_future(consume())
        while len(times) < 10:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        info = await g.add_adapter("big", str(tmp_path / "big"), confined=False)
        t1 = time.monotonic()
        await asyncio.sleep(0.1)
        consumer.cancel()  # the stream's generator ends with it: the request is aborted
        await asyncio.gather(consumer, return_exceptions=True)
        during = [b - a for a, b in zip(times, times[1:]) if b > t0 and a < t1]
        after = [o async for o in g.generate("after", [5, 9, 14], SamplingParams(max_tokens=4), "big")]
        return info, t1 - t0, during, after

    info, load_s, gaps, after = asyncio.run(run())
    assert info["rank"] == 512 and after[-1].finished and len(after[-1].token_ids) == 4
    assert load_s > 0.3 and len(gaps) >= 3, (load_s, gaps)
    # before, one gap held the whole load; now the step loop only shares the 2 cores with the packing thread
    assert max(gaps) < load_s / 2, (load_s, max(gaps))


def test_adapter_refusals_are_answers_not_exceptions(demo, tmp_path):
    """An unknown unload and a refused load come back as {"error", "status"} (Serve logs a traceback for
    every exception a replica method raises; these are the user's mistakes, not failures)."""
    g = group(demo, 0.0)

    async def run():
        gone = await g.remove_adapter("no-such-adapter")
        (tmp_path / "empty").mkdir()
        bad = await g.add_adapter("bad-one", str(tmp_path / "empty"), confined=False)
        outside = await g.add_adapter("outside-one", str(demo / "adapters" / ADAPTER))  # no allowed roots
        ok = await g.remove_adapter(ADAPTER)
        return gone, bad, outside, ok

    gone, bad, outside, ok = asyncio.run(run())
    assert gone["status"] == 404 and "no-such-adapter" in gone["error"]
    assert bad["status"] == 400 and "adapter_config.json is missing" in bad["error"]
    assert outside["status"] == 400 and "allowed_adapter_roots" in outside["error"]
    assert ok == {"path": str(demo / "adapters" / ADAPTER)}


def test_stats_leave_out_an_unchanged_adapter_table(demo):
    """stats(adapters_version=v) leaves the adapter table out while it is still version v (the ingress polls
    with its last answer's version and keeps that table); a removal gives a new version and the table."""
    g = group(demo, 0.0)

    async def run():
        full = await g.stats()
        same = await g.stats(adapters_version=full["adapters_version"])
        other = await g.stats(adapters_version="another-replica-1")
        await g.remove_adapter(ADAPTER)
        after = await g.stats(adapters_version=full["adapters_version"])
        return full, same, other, after

    full, same, other, after = asyncio.run(run())
    assert ADAPTER in full["adapters"] and "adapters" not in same and same["queue"] == full["queue"]
    assert other["adapters"] == full["adapters"]
    assert after["adapters_version"] != full["adapters_version"]
    assert set(after["adapters"]) == set(full["adapters"]) - {ADAPTER}


def test_early_abort_before_start_is_a_429_item_and_no_stream_hangs(demo):
    """A request the scheduler's early abort drops before it runs gets one item, a 429 error with
    `retry_after_s` (the ingress answers 429 + Retry-After, streamed or not); the other streams in the group go
    on and end."""
    cfg = {
        "model": str(demo / "model"),
        "device": "cpu",
        "dtype": "float32",
        "scheduler": {"max_num_seqs": 1, "early_abort_ttft_slo_s": 0.05},
    }
    g = SLoRAGroup("g", cfg, adapters={ADAPTER: str(demo / "adapters" / ADAPTER)}, ray_metrics=False)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)

    async def run():
        async def one(rid):
            return [item async for item in g.generate(rid, [1, 5, 9, 13], params, ADAPTER)]

        # one seat: the first request holds it for 40 steps, longer than the others' 0.05 s deadline
        return await asyncio.wait_for(asyncio.gather(*(one(f"r{i}") for i in range(4))), timeout=60)

    streams = asyncio.run(run())
    first = streams[0]
    assert first[-1].finish_reason == "length" and len(first[-1].token_ids) == 40
    dropped = [s for s in streams[1:] if isinstance(s[-1], dict)]
    assert dropped, [s[-1] for s in streams[1:]]
    for s in dropped:
        assert len(s) == 1  # nothing before the error: the caller learns it from the first item
        assert s[-1]["status"] == 429 and s[-1]["retry_after_s"] == 1 and "early abort" in s[-1]["error"]
    assert g.engine.is_idle_clean()


def test_token_counters_add_up_per_adapter(demo):
    """The group counts generated tokens once per step (per adapter), not per output: the totals still equal
    the tokens its streams delivered, overall and per adapter label."""
    g = group(demo, 0.0)
    params = SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True)

    async def run():
        async def one(rid, adapter):
            return [o async for o in g.generate(rid, [5, 9, 14], params, adapter)]

        return await asyncio.gather(one("x", ADAPTER), one("y", None), one("z", ADAPTER))

    streams = asyncio.run(run())
    got = [sum(len(o.delta_token_ids) for o in s) for s in streams]
    assert got == [7, 7, 7]
    assert g.metrics.counters["generation_tokens"] == 21
    assert g.metrics.adapters[ADAPTER]["adapter_generation_tokens"] == 14
    assert g.metrics.adapters[g.metrics.model]["adapter_generation_tokens"] == 7  # the base model's label
