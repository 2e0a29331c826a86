"""An ingress replica's side of a group's multiplexed stream (`SLoRAGroup.subscribe` / `start`).

In:  a group's handle; per request `stream(request_id)` then `start([(request_id, prompt_token_ids, params)],
     adapter)`.
Out: per request a `RequestStream`: an async iterator over that request's items (the group's contract:
     `RequestOutput`s, the last one finished, or an error dict that ends it), with `cancel()`.

One `Subscription` is one `subscribe` call: a single Serve stream over which the group sends batches
{request_id: item} for every request this replica started there (a Serve stream item costs ~0.3 ms of CPU
on each side: one per request per step was most of the group's CPU under load; session-2026-12-04d
ray_stream_cost). A background task reads the batches and hands each item to its request's stream.

The subscription's stream, the starts and the aborts are called outside any request's context: Serve
cancels the calls an HTTP request made when that request is cancelled, and one client's disconnect must not
end the stream that every request of this replica on that group shares (nor cut a start short: a request's
abort is sent once its start has returned, so that it cannot overtake it).

Failure: when the subscription's stream ends (the group's replica died or was replaced, or it could not be
reached), every open request stream raises that error: the caller treats it as the group failing under the
request (before its first item: nothing ran, it may go elsewhere). The subscription is then `closed`; the
caller opens a new one for later requests. A `start` answered with an error item ends that request's stream
with it; one whose call itself fails raises that failure in its streams. An idle subscription (no open
request for `idle_close_s`) closes itself, so that a group's replica can shut down without waiting for it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

from ray.serve.handle import DeploymentHandle

from app.request import RequestOutput, SamplingParams
from deployments.protocol import random_id

logger = logging.getLogger("ray.serve")

IDLE_CLOSE_S = 2.0


class SubscriptionLost(ConnectionError):
    """A group's multiplexed stream ended: the requests on it get no more items."""


def is_last(item: RequestOutput | dict) -> bool:
    """A request's last item (the group's contract, deployments/group.py): a finished output or an error dict."""
    return not isinstance(item, RequestOutput) or item.finished


class RequestStream:
    """One request's items, in order, read from its subscription: iterate it (the first item tells whether the
    request started; see the module docstring); `cancel()` when the consumer goes away (the group aborts
    the request unless it ended)."""

    def __init__(self, sub: Subscription, request_id: str):
        self.sub = sub
        self.request_id = request_id
        self.items: asyncio.Queue[RequestOutput | dict | BaseException] = asyncio.Queue()
        self.done = False  # its last item (or an error) was read, or it was cancelled

    def put(self, item: RequestOutput | dict | BaseException) -> None:
        self.items.put_nowait(item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput | dict:
        if self.done:
            raise StopAsyncIteration
        item = await self.items.get()
        if isinstance(item, BaseException) or is_last(item):
            self.done = True
            self.sub.forget(self.request_id)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self.sub.forget(self.request_id)
            self.sub.abort(self.request_id)


class Subscription:
    """One open `subscribe` stream of one group (see the module docstring). Made inside an event loop."""

    def __init__(self, handle: DeploymentHandle, idle_close_s: float = IDLE_CLOSE_S):
        self.handle = handle
        self.id = random_id("sub")
        self.idle_close_s = idle_close_s
        self.streams: dict[str, RequestStream] = {}
        self.closed = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self._starting: dict[str, asyncio.Task] = {}  # request id -> its start call in flight
        self._idle: asyncio.TimerHandle | None = None
        self._gen: Any = None  # the DeploymentResponseGenerator
        # The stream is this replica's, not the request's that happens to open it: Serve cancels the calls an
        # HTTP request made when that request is cancelled (a client disconnect), so it is made, like every
        # abort, from an empty context (no Serve request context: no parent request).
        self._task = loop.create_task(self._read(), context=contextvars.Context())

    async def wait_open(self, timeout_s: float) -> None:
        """Returns once the group has opened the stream; raises (and closes this subscription) when it does
        not within `timeout_s` or the stream failed. An open subscription returns without yielding to the
        event loop (so nothing, such as its idle timer, closes it before the caller uses it)."""
        if self.opened.done() and not self.closed:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.opened), timeout_s)
        except TimeoutError:
            self.close(SubscriptionLost(f"the group did not open subscription {self.id} in {timeout_s} s"))
            raise

    def stream(self, request_id: str) -> RequestStream:
        """The stream of a request about to be `start`ed here."""
        if self.closed:
            raise SubscriptionLost(f"subscription {self.id} is closed")
        st = self.streams[request_id] = RequestStream(self, request_id)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        return st

    def start(self, requests: list[tuple[str, list[int], SamplingParams]], adapter: str | None) -> None:
        """Asks the group to run `requests` (each with its `stream` made before); their items, or the
        refusals `start` answers, arrive in their streams."""
        task = asyncio.get_running_loop().create_task(self._start(requests, adapter), context=contextvars.Context())
        for rid, _, _ in requests:  # also keeps the task referenced until its call returned
            self._starting[rid] = task

    async def _start(self, requests: list[tuple[str, list[int], SamplingParams]], adapter: str | None) -> None:
        try:
            refusals = await self.handle.start.remote(self.id, requests, adapter)
        except Exception as e:  # noqa: BLE001 - the group is unreachable: the requests' streams raise it
            refusals = [e] * len(requests)
        finally:
            for rid, _, _ in requests:
                self._starting.pop(rid, None)
        for (rid, _, _), err in zip(requests, refusals):
            st = self.streams.get(rid)
            if err is not None and st is not None:
                st.put(err)
            if isinstance(err, dict) and err.get("unsubscribed"):
                # a replica that does not know this subscription (it replaced the one we opened it on)
                self.close()

    def forget(self, request_id: str) -> None:
        self.streams.pop(request_id, None)
        if not self.streams and not self.closed and self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self.idle_close_s, self._close_if_idle)

    def abort(self, request_id: str) -> None:
        """Asks the group to abort the request, once its start call has returned (an abort that overtook its
        start would find nothing to abort, and the request would run to its end unread)."""
        task = self._starting.get(request_id)
        if task is not None:
            task.add_done_callback(lambda _: self.abort(request_id))
        elif not self.closed:
            contextvars.Context().run(self.handle.abort.remote, [request_id])

    def _close_if_idle(self) -> None:
        self._idle = None
        if not self.streams and not self._starting:
            self.close()

    def close(self, error: BaseException | None = None) -> None:
        """Ends the subscription (the group aborts what still runs on it); its open streams raise `error`."""
        if self.closed:
            return
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
        err = error or SubscriptionLost(f"subscription {self.id} was closed")
        if not self.opened.done():
            self.opened.set_exception(err)
            self.opened.exception()  # seen: nobody may be waiting
        for st in list(self.streams.values()):
            st.put(err)
        self.streams.clear()
        if self._gen is not None:
            self._gen.cancel()
        try:
            current = asyncio.current_task()
        except RuntimeError:  # no running loop: a replica's destructor
            current = None
        if self._task is not current:
            self._task.cancel()

    async def _read(self) -> None:
        error: BaseException | None = None
        try:
            self._gen = self.handle.options(stream=True).subscribe.remote(self.id)
            async for batch in self._gen:
                if not self.opened.done():
                    self.opened.set_result(None)
                for rid, item in batch.items():
                    st = self.streams.get(rid)
                    if st is not None:
                        st.put(item)
            error = SubscriptionLost(f"the group ended subscription {self.id}")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the group's replica died or cannot be reached
            error = e
            if not self.closed:  # not closed on purpose (idle, or a replaced replica)
                logger.warning("subscription %s to a group ended: %r", self.id, e)
        finally:
            self.close(error)
