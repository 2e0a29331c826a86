"""Tensor-parallel executor: one `ModelRunner` shard per Ray actor, driven step by step from the TP-group
replica over torch.distributed, not over Ray calls.

    TPExecutor (driver = the Serve replica, control rank 0)
        |  every step: broadcast the pickled step as a diff          (CPU gloo "control" group, tp + 1 ranks)
        v     (deployments/tp_messages.py: new requests whole, then new pages, tokens, finished ids)
    RankActor tp-rank 0 .. N-1  (control ranks 1..N)  run ModelRunner.execute(out) in a loop started once
        |  forward-pass collectives                                  (NCCL on GPU, gloo on CPU: ParallelState)
        v
    tp-rank 0 sends [status, execute_ns, tokens..., packed logprobs..., packed prompt logprobs...] back to
    the driver (control send/recv)

Adapters: `add_adapter` packs one S-LoRA-TP shard per rank, `ray.put`s each (the object store holds every
adapter in host memory) and hands each actor only its own shard's ObjectRef; add/remove happen between
steps as ordinary Ray calls. The executor keeps the ObjectRefs until the adapter is removed.

Rendezvous: the driver hosts a TCPStore on a port the OS picks (port 0), so groups sharing a node never
collide; the control group and the TP group use disjoint key prefixes of that store. No fixed ports, no
fixed names, no process-global state in the driver (the control group is a bare ProcessGroupGloo that is
never registered as torch.distributed's default group; only each actor process has a default group: its
TP group).

Per-step control overhead is measured in `ControlStats` (`executor.control`): time the driver spends in
broadcast + waiting for the reply, against the time tp-rank 0 spent in `execute`.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
import torch
import torch.distributed as dist
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from app.config import EngineConfig
from app.engine import EngineDeadError
from app.lora.adapter import LoRAWeights, PackedAdapter, pack_adapter, pinned_copy
from app.request import ModelOutput
from app.sampling import (
    logprob_words,
    pack_logprobs,
    pack_prompt_logprobs,
    prompt_logprob_words,
    unpack_logprobs,
    unpack_prompt_logprobs,
)
from app.scheduler import SchedulerOutput
from deployments.tp_messages import LogitsMessage, RankMessage, StepDecoder, StepEncoder, StepMessage, StopMessage

if TYPE_CHECKING:
    from app.runner import ModelRunner

HEAD_BYTES = 16 << 10  # first broadcast of a step: 8-byte length + the payload if it fits
STATUS_OK, STATUS_ERROR = 0, 1
_LOCALHOST = "127.0.0.1"


def _gloo_group(store: dist.Store, prefix: str, rank: int, size: int, host: str, timeout: timedelta) -> Any:
    """A stand-alone gloo group bound to `host` (not torch.distributed's default group): a
    `ProcessGroupGloo`, typed Any because torch's stubs declare neither it nor its collectives."""
    gloo: Any = dist.ProcessGroupGloo
    opts = gloo._Options()
    opts._devices = [gloo.create_device(hostname=host)]
    opts._timeout = timeout
    return gloo(dist.PrefixStore(prefix, store), rank, size, opts)


class ControlChannel:
    """Messages from control rank 0 to all, and tp-rank 0's replies, over a CPU gloo group.

    A message is one broadcast of `head_bytes` (int64 length, then the pickle) plus, only when the pickle
    does not fit, a second broadcast of the rest. The driver sends RankMessages."""

    def __init__(self, pg: Any, head_bytes: int = HEAD_BYTES):
        self.pg = pg
        self.head_bytes = head_bytes
        self.head = torch.zeros(head_bytes, dtype=torch.uint8)
        self._head_np = self.head.numpy()
        self._bopts = dist.BroadcastOptions()
        self._bopts.rootRank = 0
        self._bopts.rootTensor = 0

    def _bcast(self, t: torch.Tensor) -> None:
        self.pg.broadcast([t], self._bopts).wait()

    def send(self, obj) -> int:
        """Root side: broadcasts `obj`; returns the pickle's size in bytes."""
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        n, cap = len(data), self.head_bytes - 8
        k = min(n, cap)
        self._head_np[:8].view(np.int64)[0] = n
        self._head_np[8 : 8 + k] = np.frombuffer(data, dtype=np.uint8, count=k)
        self._bcast(self.head)
        if n > cap:
            self._bcast(torch.frombuffer(bytearray(data[cap:]), dtype=torch.uint8))
        return n

    def recv(self):
        """Non-root side: the next broadcast message."""
        self._bcast(self.head)
        n, cap = int(self._head_np[:8].view(np.int64)[0]), self.head_bytes - 8
        data = self._head_np[8 : 8 + min(n, cap)].tobytes()
        if n > cap:
            tail = torch.empty(n - cap, dtype=torch.uint8)
            self._bcast(tail)
            data += tail.numpy().tobytes()
        return pickle.loads(data)

    def send_reply(self, status: int, execute_ns: int, tokens: list[int]) -> None:
        self.pg.send([torch.tensor([status, execute_ns, *tokens], dtype=torch.int64)], 0, 0).wait()

    def recv_reply(self, num_tokens: int) -> tuple[int, int, list[int]]:
        t = torch.empty(2 + num_tokens, dtype=torch.int64)
        self.pg.recv([t], 1, 0).wait()
        v = t.tolist()
        return v[0], v[1], v[2:]


def _reply_words(out: SchedulerOutput) -> int:
    """int64 words after [status, execute_ns] in tp-rank 0's reply to a step: its sampled tokens, then
    their packed logprobs, then the packed prompt logprobs (app/sampling.py)."""
    sampled = [s.params for s in out.seqs if s.sample]
    return len(sampled) + logprob_words(sampled) + prompt_logprob_words(_prompt_counts(out))


def _prompt_counts(out: SchedulerOutput) -> list[tuple[int, int]]:
    """(positions, k) of each sequence that asks for prompt logprobs this step, in order."""
    return [(len(s.prompt_lp_targets), s.params.prompt_logprobs or 0) for s in out.seqs if s.prompt_lp_targets]


def _pack_reply(out: SchedulerOutput, result: ModelOutput) -> list[int]:
    prompt = [
        w for s in out.seqs if s.prompt_lp_targets for w in pack_prompt_logprobs(result.prompt_logprobs[s.request_id])
    ]
    return result.tokens + pack_logprobs(result.logprobs) + prompt


def _unpack_reply(out: SchedulerOutput, words: list[int]) -> ModelOutput:
    sampled = [s.params for s in out.seqs if s.sample]
    n, m = len(sampled), len(sampled) + logprob_words(sampled)
    ids = [s.request_id for s in out.seqs if s.prompt_lp_targets]
    prompt = unpack_prompt_logprobs(words[m:], _prompt_counts(out))
    return ModelOutput(words[:n], unpack_logprobs(words[n:m], sampled), dict(zip(ids, prompt)))


@dataclass
class ControlStats:
    """Per-step control cost seen by the driver (seconds, summed over `steps`)."""

    steps: int = 0
    broadcast_s: float = 0.0  # encoding, pickling and broadcasting the step
    reply_s: float = 0.0  # from the end of the broadcast to the tokens' arrival
    execute_s: float = 0.0  # tp-rank 0's ModelRunner.execute (its own clock)
    payload_bytes: int = 0
    split_messages: int = 0  # steps whose message took a second broadcast

    @property
    def overhead_s(self) -> float:
        """Driver-observed step time not spent in tp-rank 0's execute: the control path's cost."""
        return self.broadcast_s + self.reply_s - self.execute_s

    def summary(self) -> dict:
        n = max(1, self.steps)
        return {
            "steps": self.steps,
            "broadcast_us": 1e6 * self.broadcast_s / n,
            "reply_wait_us": 1e6 * self.reply_s / n,
            "execute_us": 1e6 * self.execute_s / n,
            "overhead_us": 1e6 * self.overhead_s / n,
            "payload_bytes": self.payload_bytes / n,
            "split_messages": self.split_messages,
        }


# ---- the rank actor ---------------------------------------------------------------------------------
class RankActor:
    """One tensor-parallel rank: its TP process group (the process's default group), its ModelRunner
    shard and a control-group endpoint. `run_loop` executes steps until the stop message; adapters are
    added and removed by other calls between steps (the actor runs two calls at once)."""

    def __init__(self, cfg: dict, rank: int, world_size: int, device: str):
        self.cfg = EngineConfig(**cfg).model_copy(update={"device": device})
        self.rank, self.world_size, self.device = rank, world_size, device
        self.local_gpu: int | None = None
        if device == "cuda":
            gpu = str(ray.get_gpu_ids()[0])
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            self.local_gpu = visible.split(",").index(gpu) if visible else int(gpu)
            torch.cuda.set_device(self.local_gpu)
        self.runner: ModelRunner | None = None
        self.ctrl: ControlChannel | None = None

    def _set_device(self) -> None:
        if self.local_gpu is not None:  # the current device is per thread; Ray may switch threads
            torch.cuda.set_device(self.local_gpu)

    def node_ip(self) -> str:
        return ray.util.get_node_ip_address()

    def setup(
        self, store_host: str, store_port: int, bind_host: str, timeout_s: float, head_bytes: int = HEAD_BYTES
    ) -> dict:
        """Joins the control group (rank + 1), then the TP group, then loads this rank's shard."""
        from app.model.context import ParallelState
        from app.runner import ModelRunner

        self._set_device()
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(store_host, store_port, None, False, timeout=timeout)
        self.ctrl = ControlChannel(
            _gloo_group(store, "ctrl/", self.rank + 1, self.world_size + 1, bind_host, timeout), head_bytes
        )
        backend = "nccl" if self.device == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            store=dist.PrefixStore("tp/", store),
            rank=self.rank,
            world_size=self.world_size,
            timeout=timeout,
            device_id=torch.device("cuda", self.local_gpu) if self.local_gpu is not None else None,
        )
        tp = ParallelState(rank=self.rank, world_size=self.world_size, group=dist.group.WORLD)
        self.runner = r = ModelRunner(self.cfg, tp=tp, device=self.device)
        return {
            "actor_id": ray.get_runtime_context().get_actor_id(),
            "pid": os.getpid(),
            "num_pages": r.num_pages,
            "page_size": r.page_size,
            "page_elems": r.page_elems,
            "dtype": str(r.dtype).removeprefix("torch."),
        }

    def run_loop(self) -> dict:
        """Receives and executes steps until the stop message. Returns this rank's step count."""
        self._set_device()
        ctrl, runner = self.ctrl, self.runner
        assert ctrl is not None and runner is not None, "setup() first"
        decoder = StepDecoder()  # the requests this rank was sent whole (deployments/tp_messages.py)
        steps = 0
        while True:
            msg: RankMessage = ctrl.recv()
            if isinstance(msg, StopMessage):
                return {"steps": steps}
            out, want_logits = decoder.decode(msg.step), isinstance(msg, LogitsMessage)
            t0 = time.perf_counter_ns()
            try:
                if want_logits:
                    logits = runner.forward_logits(out)
                    tokens = list(logits.shape)
                else:
                    result = runner.execute(out)
                    tokens = _pack_reply(out, result) if self.rank == 0 else []  # tokens, then any logprobs
            except BaseException:
                if self.rank == 0:  # the reply has the size the driver expects
                    n = 2 if want_logits else _reply_words(out)
                    ctrl.send_reply(STATUS_ERROR, 0, [0] * n)
                elif self.device == "cpu":
                    dist.destroy_process_group()  # closes gloo pairs: tp-rank 0 fails instead of hanging
                raise
            steps += 1
            if self.rank == 0:
                ctrl.send_reply(STATUS_OK, time.perf_counter_ns() - t0, tokens)
                if want_logits:
                    ctrl.pg.send([logits.float().cpu().contiguous()], 0, 1).wait()

    def add_adapter(self, name: str, shard_ref: list) -> int:
        """Fetches this rank's shard (and only it) from the object store; returns its page count."""
        self._set_device()
        packed: PackedAdapter = ray.get(shard_ref[0])
        if self.device == "cuda":  # page fills copy from pinned memory (async, side stream)
            packed = pinned_copy(packed)
        assert self.runner is not None, "setup() first"
        self.runner.add_packed(name, packed)
        return packed.layout.num_pages

    def remove_adapter(self, name: str) -> None:
        assert self.runner is not None, "setup() first"
        self.runner.remove_adapter(name)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---- the executor (driver side) ---------------------------------------------------------------------
class TPExecutor:
    """The `Engine` executor of a tensor-parallel group: `num_pages`, `page_size`, `execute`,
    `add_adapter`, `remove_adapter`, `shutdown` (see app/engine.py)."""

    def __init__(
        self,
        cfg: EngineConfig,
        tensor_parallel_size: int,
        placement_group: PlacementGroup | None = None,
        timeout_s: float = 600.0,
        control_head_bytes: int = HEAD_BYTES,
    ):
        """`control_head_bytes`: size of each step's first broadcast; larger SchedulerOutputs take a second
        one. `timeout_s`: how long to wait for the placement group, the actors and every rendezvous."""
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        self.cfg = cfg
        self.tp_size = n = tensor_parallel_size
        self.control = ControlStats()
        self.head_bytes = control_head_bytes
        self._adapter_refs: dict[str, list[ray.ObjectRef]] = {}
        self.ranks: list[dict] = []
        self._actors: list = []
        self._loops: list[ray.ObjectRef] = []
        self._ch: ControlChannel | None = None
        self._store: dist.TCPStore | None = None
        self._encoder = StepEncoder()  # what the ranks know of each request: steps are sent as diffs
        self._failed: BaseException | None = None
        self._closed = False

        if placement_group is None:
            gpu = self._wants_gpu(cfg, None)
            bundle = {"GPU": 1, "CPU": 1} if gpu else {"CPU": 1}
            self.pg, self._own_pg = placement_group_for(n, bundle), True
        else:
            gpu = self._wants_gpu(cfg, placement_group)
            self.pg, self._own_pg = placement_group, False
        self.device = "cuda" if gpu else "cpu"
        try:
            if not self.pg.wait(timeout_s):
                raise RuntimeError(
                    f"placement group of {n} bundles ({self.pg.bundle_specs[0]}) was not "
                    f"ready after {timeout_s:.0f} s: not enough resources in the cluster"
                )
            self._start(timeout_s)
        except BaseException:
            self.shutdown()
            raise

    @staticmethod
    def _wants_gpu(cfg: EngineConfig, pg: PlacementGroup | None) -> bool:
        if cfg.device != "auto":
            return cfg.device == "cuda"
        if pg is not None:
            return all(b.get("GPU", 0) >= 1 for b in pg.bundle_specs)
        return ray.cluster_resources().get("GPU", 0) >= 1

    def _start(self, timeout_s: float) -> None:
        n = self.tp_size
        actor_cls = ray.remote(RankActor)
        cfg = self.cfg.model_dump()
        self._actors = [
            actor_cls.options(
                num_cpus=1,
                num_gpus=1 if self.device == "cuda" else 0,
                max_concurrency=2,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            ).remote(cfg, i, n, self.device)
            for i in range(n)
        ]
        # The actors are alive (their __init__ ran) before anyone blocks in a rendezvous.
        ips = ray.get([a.node_ip.remote() for a in self._actors], timeout=timeout_s)
        my_ip = ray.util.get_node_ip_address()
        local = all(ip == my_ip for ip in ips)
        host = _LOCALHOST if local else my_ip
        timeout = timedelta(seconds=timeout_s)
        self._store = store = dist.TCPStore(host, 0, None, True, timeout=timeout, wait_for_workers=False)
        setups = [
            a.setup.remote(host, store.port, _LOCALHOST if local else ip, timeout_s, self.head_bytes)
            for a, ip in zip(self._actors, ips)
        ]
        self._ch = ControlChannel(_gloo_group(store, "ctrl/", 0, n + 1, host, timeout), self.head_bytes)
        infos = ray.get(setups, timeout=timeout_s)
        # ModelRunner already agrees on min(num_pages) over the TP group; check it did.
        if len({(i["num_pages"], i["page_elems"], i["dtype"]) for i in infos}) != 1:
            raise RuntimeError(f"ranks disagree on the pool: {infos}")
        self.num_pages = infos[0]["num_pages"]
        self.page_size = infos[0]["page_size"]
        self.page_elems = infos[0]["page_elems"]
        self.dtype = getattr(torch, infos[0]["dtype"])
        # who serves each tp-rank (for operators: `stats()["ranks"]` of the group)
        self.ranks = [{"rank": i, "actor_id": info["actor_id"], "pid": info["pid"], "node_ip": ip}
                      for i, (info, ip) in enumerate(zip(infos, ips))]  # fmt: skip
        self._loops = [a.run_loop.remote() for a in self._actors]
        threading.Thread(target=self._watch, args=(list(self._loops),), name="tp-watch", daemon=True).start()

    # ---- the step --------------------------------------------------------------------------------
    def execute(self, out: SchedulerOutput) -> ModelOutput:
        """Runs one step on every rank; raises EngineDeadError when the group can run no more steps (a rank
        died or raised: the rank loops have ended)."""
        ch = self._ch
        if ch is None or not self.alive():
            raise EngineDeadError("the tensor-parallel group is not running") from self._failed
        if not (out.seqs or out.adapter_loads or out.finished_ids or out.preempted_ids):
            return ModelOutput()
        t0 = time.perf_counter()
        try:
            size = ch.send(StepMessage(self._encoder.encode(out)))
            t1 = time.perf_counter()
            status, execute_ns, tokens = ch.recv_reply(_reply_words(out))
        except Exception as e:  # a rank's process is gone (or was killed by `_watch`): its pair closed
            self._failed = self._failed or e
            raise EngineDeadError(f"a tensor-parallel rank is gone: {self._failed!r}") from e
        t2 = time.perf_counter()
        if status != STATUS_OK:
            self._fail()
        c = self.control
        c.steps += 1
        c.broadcast_s += t1 - t0
        c.reply_s += t2 - t1
        c.execute_s += execute_ns * 1e-9
        c.payload_bytes += size
        c.split_messages += size > self.head_bytes - 8
        return _unpack_reply(out, tokens)

    def alive(self) -> bool:
        """False once a rank's loop has ended (it raised, or its actor died: see `_watch`) or after shutdown."""
        return self._failed is None and not self._closed and self._ch is not None

    def _watch(self, loops: list[ray.ObjectRef]) -> None:
        """Monitor thread: waits until any rank's step loop ends. Unless the executor is shutting down, that
        rank raised or its actor died: the executor is marked dead and every rank actor is killed, so that a
        driver blocked in the control channel fails at once (its gloo pair to tp-rank 0 closes) instead of
        waiting for a collective that never completes (NCCL does not notice a dead peer before its timeout)."""
        ready, _ = ray.wait(loops, num_returns=1)
        if self._closed:
            return
        try:
            ray.get(ready[0])
            err: BaseException = RuntimeError("a tensor-parallel rank's step loop ended")
        except Exception as e:  # noqa: BLE001 - the rank's failure, kept as the reason
            err = e
        self._failed = self._failed or err
        for a in list(self._actors):
            ray.kill(a)

    def logits(self, out: SchedulerOutput) -> torch.Tensor:
        """float32 logits [sequences with sample=True, vocab] of one step, from tp-rank 0, without sampling
        (for tests and debugging; the step's KV and adapter loads happen as in `execute`)."""
        if self._failed is not None or self._ch is None:
            raise RuntimeError("the tensor-parallel group is not running") from self._failed
        self._ch.send(LogitsMessage(self._encoder.encode(out)))
        status, _, shape = self._ch.recv_reply(2)
        if status != STATUS_OK:
            self._fail()
        logits = torch.empty(shape, dtype=torch.float32)
        self._ch.pg.recv([logits], 1, 1).wait()
        return logits

    def _fail(self) -> None:
        """tp-rank 0 reported an exception: its loop call ended with it, and the group with it."""
        try:
            ray.get(self._loops[0], timeout=60)
            err: BaseException = RuntimeError("tensor-parallel rank 0 failed")
        except Exception as e:  # noqa: BLE001 - the rank's exception, re-raised below
            err = e
        self._failed = err
        raise EngineDeadError(f"tensor-parallel step failed on rank 0: {err}") from err

    # ---- adapters --------------------------------------------------------------------------------
    def add_adapter(self, name: str, weights: LoRAWeights) -> int:
        """Packs one shard per rank into the object store; each actor fetches its own. Returns the
        adapter's page count (the same on every rank)."""
        return self.add_packed(name, self.pack_adapter(weights))

    def pack_adapter(self, weights: LoRAWeights, pin: bool = True) -> list:
        """One packed shard per rank, put in the object store (any thread): their ObjectRefs. `pin` changes
        nothing here: each rank actor copies its shard into pinned memory when it fetches it."""
        return [
            ray.put(pack_adapter(weights, self.page_elems, self.dtype, r, self.tp_size)) for r in range(self.tp_size)
        ]

    def pin_adapters(self) -> int:
        """Nothing to pin later: the rank actors pin each shard as they fetch it (`add_packed`). Returns 0."""
        return 0

    def add_packed(self, name: str, refs: list) -> int:
        """Each actor fetches its own shard (`pack_adapter`'s refs); returns the page count."""
        pages = ray.get([a.add_adapter.remote(name, [ref]) for a, ref in zip(self._actors, refs)])
        if len(set(pages)) != 1:
            raise RuntimeError(f"adapter {name!r}: ranks disagree on its page count {pages}")
        self._adapter_refs[name] = refs
        return pages[0]

    def remove_adapter(self, name: str) -> None:
        ray.get([a.remove_adapter.remote(name) for a in self._actors])
        self._adapter_refs.pop(name, None)  # the last ObjectRefs: the object store frees the shards

    # ---- teardown --------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stops the rank loops, kills the actors and (if it made it) removes the placement group."""
        if self._closed:
            return
        self._closed = True
        if self._ch is not None and self._failed is None and self._loops:
            try:
                self._ch.send(StopMessage())
                ray.get(self._loops, timeout=30)
                ray.get([a.close.remote() for a in self._actors], timeout=30)
            except Exception:  # noqa: BLE001 - best effort: the actors are killed below anyway
                pass
        for a in self._actors:
            ray.kill(a)
        self._actors, self._loops, self._ch, self._store = [], [], None, None
        self._adapter_refs.clear()
        if self._own_pg:
            remove_placement_group(self.pg)


def placement_group_for(tensor_parallel_size: int, bundle: dict) -> PlacementGroup:
    """`tensor_parallel_size` bundles on one node (STRICT_PACK): NVLink/PCIe between the ranks."""
    return placement_group([dict(bundle) for _ in range(tensor_parallel_size)], strategy="STRICT_PACK")
