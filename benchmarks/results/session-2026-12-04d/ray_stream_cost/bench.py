"""What a Ray Serve stream item costs, on the CPU (the lever of the flood's group profile): a deployment streams
`ITEMS` steps of output for `STREAMS` requests to a caller deployment, either as one stream per request (one item
per request per step, as the group streams today) or as one stream carrying each step's items for every request
(one item per step). Prints the wall time and the CPU seconds of both replica processes per variant, and the CPU
per request-step. Run from the repository root: python benchmarks/results/session-2026-12-04d/ray_stream_cost/bench.py"""

import asyncio
import resource
import time

import ray
from ray import serve

STREAMS, ITEMS = 64, 50


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def item(i: int, k: int) -> dict:  # about the size of a coalesced RequestOutput delta
    return {"request_id": f"req-{i}", "delta_token_ids": [k, k + 1], "delta_text": "ab", "finished": k == ITEMS - 1}


@serve.deployment(max_ongoing_requests=1024)
class Source:
    async def per_request(self, i: int):
        for k in range(ITEMS):
            await asyncio.sleep(0.005)
            yield item(i, k)

    async def multiplexed(self, n: int):
        for k in range(ITEMS):
            await asyncio.sleep(0.005)
            yield [item(i, k) for i in range(n)]

    def cpu(self) -> float:
        return cpu_s()


@serve.deployment(max_ongoing_requests=1024)
class Caller:
    def __init__(self, source):
        self.source = source.options(stream=True)
        self.plain = source

    async def run(self, variant: str) -> dict:
        src0, me0, t0 = await self.plain.cpu.remote(), cpu_s(), time.perf_counter()
        if variant == "per request":

            async def one(i):
                return sum([1 async for _ in self.source.per_request.remote(i)])

            got = sum(await asyncio.gather(*(one(i) for i in range(STREAMS))))
        else:
            got = sum([len(batch) async for batch in self.source.multiplexed.remote(STREAMS)])
        wall = time.perf_counter() - t0
        src1, me1 = await self.plain.cpu.remote(), cpu_s()
        return {"variant": variant, "request_steps": got, "wall_s": wall, "source_cpu_s": src1 - src0,
                "caller_cpu_s": me1 - me0}  # fmt: skip


if __name__ == "__main__":
    ray.init(num_cpus=4, include_dashboard=False)
    handle = serve.run(Caller.bind(Source.bind()), name="streamcost", route_prefix=None)
    for rep in range(3):
        for variant in ("per request", "multiplexed"):
            r = handle.run.remote(variant).result(timeout_s=300)
            per = (r["source_cpu_s"] + r["caller_cpu_s"]) / r["request_steps"] * 1e6
            print(f"rep {rep} {variant:12s}: {r['request_steps']} request-steps in {r['wall_s']:.2f} s, CPU source "
                  f"{r['source_cpu_s']:.2f} s + caller {r['caller_cpu_s']:.2f} s = {per:.0f} us per request-step",
                  flush=True)  # fmt: skip
    serve.shutdown()
    ray.shutdown()
