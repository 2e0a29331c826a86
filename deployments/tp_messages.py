"""The messages the tensor-parallel driver (`TPExecutor`) broadcasts to its rank actors, and the step diff.

A step reaches the ranks as a `StepDiff`, not as the scheduler's `SchedulerOutput`: a request is sent whole
(a `ScheduledSeq`: its page list, sampling parameters, adapter) the first time it is scheduled, and from then
on as a `SeqDelta` (the tokens fed this step, the KV pages added since its last step, the per-step flags)
until it finishes or is preempted (`finished_ids` / `preempted_ids`), when both sides forget it. The
driver's `StepEncoder` and each rank's `StepDecoder` keep the same table of known requests; the decoder
gives back exactly the SchedulerOutput the encoder was given (checked by the page count each delta carries).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from app.request import SamplingParams
from app.scheduler import ScheduledSeq, SchedulerOutput


class SeqDelta(NamedTuple):
    """A request the ranks know, this step: what a ScheduledSeq carries that changes from step to step (a
    NamedTuple: it pickles as its values alone, without field names)."""

    request_id: str
    token_ids: list[int]  # the new tokens fed this step
    start_pos: int
    new_pages: list[int]  # KV pages appended since the request's last step
    num_pages: int  # its KV pages after them (a check)
    sample: bool
    prompt_lp_start: int
    prompt_lp_targets: list[int]
    banned_ids: list[int]


@dataclass
class StepDiff:
    """One step as the ranks receive it: its sequences in order, whole or as deltas, and the rest of the
    SchedulerOutput (adapter loads, finished and preempted ids, ...: `rest.seqs` is empty)."""

    seqs: list[ScheduledSeq | SeqDelta]
    rest: SchedulerOutput


@dataclass
class _Known:
    """What the ranks hold of a request (the driver's copy)."""

    pages: list[int]
    params: SamplingParams
    adapter: str | None
    prompt_len: int


class StepEncoder:
    """Driver side: SchedulerOutput -> StepDiff, remembering what the ranks were sent."""

    def __init__(self) -> None:
        self.known: dict[str, _Known] = {}

    def encode(self, out: SchedulerOutput) -> StepDiff:
        for rid in out.finished_ids + out.preempted_ids:
            self.known.pop(rid, None)
        seqs: list[ScheduledSeq | SeqDelta] = []
        for s in out.seqs:
            k = self.known.get(s.request_id)
            n = 0 if k is None else len(k.pages)
            if (
                k is not None
                and k.params is s.params
                and k.adapter == s.adapter
                and k.prompt_len == s.prompt_len
                and s.kv_pages[:n] == k.pages
            ):
                new = s.kv_pages[n:]
                k.pages += new
                seqs.append(
                    SeqDelta(
                        s.request_id,
                        s.token_ids,
                        s.start_pos,
                        new,
                        len(k.pages),
                        s.sample,
                        s.prompt_lp_start,
                        s.prompt_lp_targets,
                        s.banned_ids,
                    )  # fmt: skip
                )
            else:
                self.known[s.request_id] = _Known(list(s.kv_pages), s.params, s.adapter, s.prompt_len)
                seqs.append(s)
        return StepDiff(seqs, dataclasses.replace(out, seqs=[]))


class StepDecoder:
    """Rank side: StepDiff -> the SchedulerOutput the driver encoded."""

    def __init__(self) -> None:
        self.known: dict[str, ScheduledSeq] = {}

    def decode(self, d: StepDiff) -> SchedulerOutput:
        for rid in d.rest.finished_ids + d.rest.preempted_ids:
            self.known.pop(rid, None)
        seqs = []
        for s in d.seqs:
            if isinstance(s, ScheduledSeq):
                self.known[s.request_id] = s
                seqs.append(s)
                continue
            base = self.known[s.request_id]
            pages = base.kv_pages + s.new_pages
            if len(pages) != s.num_pages:
                raise RuntimeError(f"step diff out of step for {s.request_id}: {len(pages)} != {s.num_pages} pages")
            seq = dataclasses.replace(
                base,
                kv_pages=pages,
                token_ids=s.token_ids,
                start_pos=s.start_pos,
                sample=s.sample,
                prompt_lp_start=s.prompt_lp_start,
                prompt_lp_targets=s.prompt_lp_targets,
                banned_ids=s.banned_ids,
                history_ids=[],  # sent in a request's first step only
            )
            self.known[s.request_id] = seq
            seqs.append(seq)
        return dataclasses.replace(d.rest, seqs=seqs)


# ---- what the driver broadcasts -------------------------------------------------------------------
@dataclass(frozen=True)
class StepMessage:
    """Run this step (`ModelRunner.execute`); tp-rank 0 replies with the sampled tokens."""

    step: StepDiff


@dataclass(frozen=True)
class LogitsMessage:
    """Run this step's forward pass without sampling (`ModelRunner.forward_logits`); tp-rank 0 replies
    with the logits' shape, then sends the logits (tests and debugging)."""

    step: StepDiff


@dataclass(frozen=True)
class StopMessage:
    """End the rank's step loop."""


RankMessage = StepMessage | LogitsMessage | StopMessage
