"""The ingress's multiplexed stream of a group (deployments/subscription.py over SLoRAGroup.subscribe/start) in
one event loop, without a Ray cluster: a handle that calls an in-process group's methods the way a Serve
handle does (`method.remote(...)`; a stream driven by its own task, which `cancel()` cancels). What it shows:
many requests over one stream get exactly what one stream per request gets; a lost stream fails every open
request at once and the next subscription serves; a cancelled request and an idle subscription free
everything in the group. tests/test_serve.py and tests/test_faults.py run the same code through real Serve."""

from __future__ import annotations

import asyncio

import pytest

from app import SamplingParams
from app.request import RequestOutput
from deployments.group import SLoRAGroup
from deployments.subscription import Subscription, SubscriptionLost
from tests.test_group import ADAPTER, group


class _Stream:
    """A Serve response generator's shape over an in-process async generator: a task drives it (as Serve's
    replica does), `cancel()` cancels that task (the generator's `finally` runs), `fail(e)` makes the
    consumer raise `e` as if the replica had died."""

    def __init__(self, agen):
        self.items: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.ensure_future(self._drive(agen))

    async def _drive(self, agen):
        async for item in agen:
            await self.items.put(item)

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self.items.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.task.cancel()

    def fail(self, e: BaseException):
        self.task.cancel()
        self.items.put_nowait(e)


class LocalHandle:
    """`handle.method.remote(...)` and `handle.options(stream=True).method.remote(...)` over `group`."""

    def __init__(
        self,
        group: SLoRAGroup,
        stream: bool = False,
        stream_group: SLoRAGroup | None = None,
        start_delay_s: float = 0.0,
    ):
        self.group, self.stream = group, stream
        self.stream_group = stream_group or group  # streams go to another replica: one that was replaced
        self.start_delay_s = start_delay_s  # a start call slower to arrive than a later abort call
        self.streams: list[_Stream] = []  # every stream opened, for the test to fail one
        self.calls: list[str] = []

    def options(self, stream: bool = False) -> LocalHandle:
        h = LocalHandle(self.stream_group if stream else self.group, stream, start_delay_s=self.start_delay_s)
        h.streams, h.calls = self.streams, self.calls
        return h

    def __getattr__(self, name: str):
        method = getattr(self.group, name)
        handle = self

        class _Method:
            @staticmethod
            def remote(*args):
                handle.calls.append(name)
                if handle.stream:
                    s = _Stream(method(*args))
                    handle.streams.append(s)
                    return s
                if name == "start" and handle.start_delay_s:

                    async def late():
                        await asyncio.sleep(handle.start_delay_s)
                        return await method(*args)

                    return asyncio.ensure_future(late())
                return asyncio.ensure_future(method(*args))

        return _Method


async def items(stream) -> list:
    return [item async for item in stream]


def joined(outs: list) -> tuple[list[int], str, str | None]:
    assert all(isinstance(o, RequestOutput) for o in outs), outs
    return sum((o.delta_token_ids for o in outs), []), "".join(o.delta_text for o in outs), outs[-1].finish_reason


def test_many_requests_over_one_subscription_equal_their_own_streams(demo):
    """Eight requests of different lengths and adapters over one subscription: each gets the tokens, text and
    finish reason of its own `generate` stream; the group sent one Serve stream (not eight)."""
    g = group(demo, 0.0)
    prompts = [[5, 9, 14, 3 + i] for i in range(8)]
    params = [SamplingParams(max_tokens=4 + 3 * i, temperature=0.0, ignore_eos=True) for i in range(8)]
    adapters = [ADAPTER if i % 2 else None for i in range(8)]

    async def run():
        h = LocalHandle(g)
        alone = [await items(g.generate(f"alone-{i}", prompts[i], params[i], adapters[i])) for i in range(8)]
        sub = Subscription(h)
        await sub.wait_open(5)
        streams = []
        for adapter in (None, ADAPTER):
            reqs = [(f"m-{i}", prompts[i], params[i]) for i in range(8) if adapters[i] == adapter]
            streams += [(int(rid[2:]), sub.stream(rid)) for rid, _, _ in reqs]
            sub.start(reqs, adapter)
        got = dict(zip([i for i, _ in streams], await asyncio.gather(*(items(s) for _, s in streams))))
        return alone, [got[i] for i in range(8)], h.calls

    alone, muxed, calls = asyncio.run(run())
    for a, m in zip(alone, muxed):
        assert joined(m) == joined(a) and joined(m)[2] == "length"
        assert m[-1].token_ids == a[-1].token_ids and m[-1].text == a[-1].text
    assert calls.count("subscribe") == 1 and calls.count("start") == 2
    assert g.engine.is_idle_clean()


def test_a_lost_subscription_fails_its_open_requests_and_a_new_one_serves(demo):
    """The subscription's stream raises (the group's replica died): every request open on it raises at once,
    the subscription is closed; a new subscription serves the next request."""
    g = group(demo, 0.0)
    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

    async def run():
        h = LocalHandle(g)
        sub = Subscription(h)
        await sub.wait_open(5)
        reqs = [(f"r{i}", [5, 9, 14], long) for i in range(3)]
        streams = [sub.stream(rid) for rid, _, _ in reqs]
        sub.start(reqs, None)
        for s in streams:  # every request has started
            assert isinstance(await s.__anext__(), RequestOutput)
        h.streams[0].fail(ConnectionError("the replica died"))
        outcomes = await asyncio.wait_for(asyncio.gather(*(items(s) for s in streams), return_exceptions=True), 5)
        assert sub.closed
        with pytest.raises(SubscriptionLost):
            sub.stream("late")
        await asyncio.sleep(0.1)  # the group saw its stream cancelled: it aborted the requests
        again = Subscription(h)
        await again.wait_open(5)
        s = again.stream("after")
        again.start([("after", [5, 9, 14], SamplingParams(max_tokens=5, temperature=0.0))], None)
        return outcomes, await items(s)

    outcomes, after = asyncio.run(run())
    assert all(isinstance(o, ConnectionError) for o in outcomes), outcomes
    assert after[-1].finished and len(after[-1].token_ids) == 5
    assert g.engine.is_idle_clean()
    assert g.metrics.counters["requests_aborted"] == 3


def test_cancel_refusals_and_idle_close_leave_nothing_in_the_group(demo):
    """A cancelled request is aborted in the group (its pages freed) while the others go on; a refused start
    (unknown adapter: 404, an invalid prompt: 400) ends only its own stream; a start for a subscription the
    group does not know is a 503 that closes the subscription; an idle subscription closes itself and the
    group forgets it."""
    g = group(demo, 0.0)
    params = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)

    async def run():
        h = LocalHandle(g)
        sub = Subscription(h, idle_close_s=0.2)
        await sub.wait_open(5)
        reqs = [("keep", [5, 9, 14], params), ("drop", [5, 9, 14], params)]
        keep, drop = sub.stream("keep"), sub.stream("drop")
        sub.start(reqs, None)
        bad, empty = sub.stream("bad"), sub.stream("too-long")
        sub.start([("bad", [5, 9], params)], "no-such-adapter")
        sub.start([("too-long", [5] * 100_000, params)], None)
        assert isinstance(await drop.__anext__(), RequestOutput)
        drop.cancel()
        kept, refused, invalid = await asyncio.gather(items(keep), items(bad), items(empty))
        await asyncio.sleep(0.5)  # idle for longer than idle_close_s
        idle_closed, subscriptions = sub.closed, (await g.stats())["subscriptions"]
        # a subscription opened on a replica that was replaced since: the new one does not know it
        stale = Subscription(LocalHandle(g, stream_group=group(demo, 0.0)))
        await stale.wait_open(5)
        s = stale.stream("x")
        stale.start([("x", [5, 9, 14], params)], None)
        unsubscribed = await items(s)
        return kept, refused, invalid, idle_closed, subscriptions, unsubscribed, stale.closed

    kept, refused, invalid, idle_closed, subscriptions, unsubscribed, stale_closed = asyncio.run(run())
    assert kept[-1].finished and len(kept[-1].token_ids) == 30
    assert refused == [refused[0]] and refused[0]["status"] == 404
    assert invalid == [invalid[0]] and invalid[0]["status"] == 400
    assert idle_closed and subscriptions == 0
    assert unsubscribed[0]["status"] == 503 and unsubscribed[0]["unsubscribed"] and stale_closed
    assert g.metrics.counters["requests_aborted"] == 1
    assert g.engine.is_idle_clean()


def test_an_abort_never_overtakes_its_start(demo):
    """A request cancelled before its start call reached the group (a client gone at once): the abort is sent
    after the start returned, so the group aborts the request instead of running it to its end unread."""
    g = group(demo, 0.0)

    async def run():
        sub = Subscription(LocalHandle(g, start_delay_s=0.3))
        await sub.wait_open(5)
        st = sub.stream("gone")
        sub.start([("gone", [5, 9, 14], SamplingParams(max_tokens=500, ignore_eos=True))], None)
        st.cancel()
        await asyncio.sleep(0.6)
        return await g.stats()

    s = asyncio.run(run())
    assert g.metrics.counters["requests_aborted"] == 1
    assert s["queue"]["running"] == 0 and s["queue"]["waiting"] == 0


def test_an_open_idle_subscription_is_used_before_its_idle_timer_can_close_it(demo):
    """A subscription whose last request just ended has its idle close due at once (idle_close_s 0): the next
    request's `wait_open` returns without yielding to the event loop, so the subscription is still open when the
    request's stream is made on it, and the request is served."""
    g = group(demo, 0.0)

    async def run():
        sub = Subscription(LocalHandle(g), idle_close_s=0.0)
        await sub.wait_open(5)
        first = sub.stream("first")
        sub.start([("first", [5, 9, 14], SamplingParams(max_tokens=3, temperature=0.0))], None)
        await items(first)  # its last item read: the idle close is scheduled, due now
        await sub.wait_open(5)
        second = sub.stream("second")
        sub.start([("second", [5, 9, 14], SamplingParams(max_tokens=3, temperature=0.0))], None)
        return await items(second)

    second = asyncio.run(run())
    assert second[-1].finished and len(second[-1].token_ids) == 3
