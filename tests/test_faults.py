"""A rank actor killed under load (issue 11, finding 2), with real Ray Serve on the CPU: two groups of
tensor_parallel_size=2 behind one ingress; while clients keep sending requests, one rank process is killed
(SIGKILL), of the group that is prefilling a long prompt (accepted, no first token yet). At most the requests
running on that group fail, each with a 503 OpenAI error object and Retry-After within 5 s; every other request
is served (by the other group, or retried there), the long prompt included; the group reports itself unhealthy
at once, Serve replaces it, and it takes traffic again; a request routed to it after it died is retried on the
other group, so every request sent after the kill is served. Before that, both groups' greedy answers equal the
offline engine's (TP=2 behind Serve against TP=1)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from app import LLM, SamplingParams
from app.demo import build_demo
from tests.models import DEMO_PROMPTS

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray  # every test here runs on a Ray session (tests/conftest.py)
serve = pytest.importorskip("ray.serve")

PORT = 8433
BASE = f"http://127.0.0.1:{PORT}"
CLIENTS = 6
GROUPS = ("SLoRAGroup-0", "SLoRAGroup-1")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def service(demo):
    from deployments.builder import build_app

    repo = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = repo + os.pathsep + os.environ.get("PYTHONPATH", "")
    ray.init(num_cpus=8, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    app = build_app(
        {
            "model": str(demo / "model"),
            "served_model_name": "sloray-demo",
            "adapter_dir": str(demo / "adapters"),
            "device": "cpu",
            "dtype": "float32",
            "num_groups": 2,
            "tensor_parallel_size": 2,
            "stats_poll_interval_s": 0.1,
            # small prefill chunks: a long prompt takes many steps before its first token (the retry test)
            "engine": {"warmup": "off", "scheduler": {"max_num_batched_tokens": 32}},
        }
    )
    serve.run(app, name="faults", route_prefix="/")
    yield
    serve.shutdown()
    ray.shutdown()


def stats(group: str) -> dict:
    return serve.get_deployment_handle(group, app_name="faults").stats.remote().result(timeout_s=30)


def test_tensor_parallel_groups_equal_offline(service, demo):
    """Each TP=2 group (two rank actors over gloo) answers the offline TP=1 engine's greedy text, for the
    base model and adapters of several targets and ranks."""
    llm = LLM(str(demo / "model"), adapters=str(demo / "adapters"), device="cpu", dtype="float32")
    for group in GROUPS:
        assert stats(group)["tensor_parallel_size"] == 2
    want = {
        (p, a): llm.generate([p], SamplingParams(max_tokens=12, temperature=0.0), adapters=[a])[0].text
        for p, a in DEMO_PROMPTS
    }
    with httpx.Client(base_url=BASE, timeout=60) as c:
        for _ in range(2):  # the ingress spreads the requests over both groups
            for prompt, adapter in DEMO_PROMPTS:
                body = {"model": adapter or "sloray-demo", "prompt": prompt, "max_tokens": 12, "temperature": 0}
                r = c.post("/v1/completions", json=body)
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["text"] == want[prompt, adapter], (prompt, adapter)
    assert all(stats(g)["steps"] > 0 for g in GROUPS)


def test_killed_rank_fails_only_its_requests_and_the_group_comes_back(service):
    log: list[tuple[float, float, int, dict, dict]] = []  # (start, end, status, json, headers)
    stop = threading.Event()

    def client(i: int):
        with httpx.Client(base_url=BASE, timeout=120) as c:
            k = 0
            while not stop.is_set():
                body = {"model": "sloray-demo", "prompt": f"request {i} {k}", "max_tokens": 24, "temperature": 0}
                t0 = time.monotonic()
                r = c.post("/v1/completions", json=body)
                log.append((t0, time.monotonic(), r.status_code, r.json(), dict(r.headers)))
                k += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        time.sleep(4)
        # a request that a group has accepted but is still prefilling when its rank dies (no first token yet)
        # must be sent to the other group and answered, not failed: a long prompt; the ingress may route it to
        # either group (rendezvous order, bounded load), so the rank killed is one of the group prefilling it
        long_result: dict = {}

        def long_request():
            body = {"model": "demo-r16-all", "prompt": [3 + i % 400 for i in range(1000)], "max_tokens": 4,
                    "temperature": 0}  # fmt: skip
            with httpx.Client(base_url=BASE, timeout=120) as c:
                r = c.post("/v1/completions", json=body)
            long_result.update(status=r.status_code, body=r.json())

        long_thread = threading.Thread(target=long_request, daemon=True)
        long_thread.start()
        t_sent = time.monotonic()
        victim = before = None
        while victim is None:
            assert time.monotonic() - t_sent < 30, "no group was prefilling the long prompt"
            for g in GROUPS:
                if (s := stats(g))["queue"]["queued_prefill_tokens"] >= 300:
                    victim, before = g, s
                    break
            else:
                time.sleep(0.02)
        other = next(g for g in GROUPS if g != victim)
        assert before["healthy"] and len(before["ranks"]) == 2
        kill_at = time.monotonic()
        os.kill(before["ranks"][1]["pid"], signal.SIGKILL)

        # the group says it is unhealthy at once (its rank loop ended: the executor noticed)
        seen_down = None
        while time.monotonic() - kill_at < 10:
            try:
                if not stats(victim)["healthy"]:
                    seen_down = time.monotonic() - kill_at
                    break
            except Exception:  # noqa: BLE001 - being replaced already: also down
                seen_down = time.monotonic() - kill_at
                break
            time.sleep(0.1)
        assert seen_down is not None and seen_down < 5
        h = httpx.get(f"{BASE}/health", timeout=30)  # the service still serves: 200, naming the dead group
        assert h.status_code == 200 and h.json()["groups"] == {victim: False, other: True}

        # Serve replaces it; the new replica (new rank actors) is healthy and takes traffic again
        back = None
        while time.monotonic() - kill_at < 180:
            try:
                s = stats(victim)
                if s["healthy"] and s["ranks"][1]["pid"] != before["ranks"][1]["pid"] and s["steps"] > 0:
                    back = time.monotonic() - kill_at
                    break
            except Exception:  # noqa: BLE001 - not yet replaced
                pass
            time.sleep(0.5)
        assert back is not None, f"{victim} did not come back within 180 s"
        time.sleep(3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=130)

    long_thread.join(timeout=130)
    assert long_result.get("status") == 200, long_result  # retried on the other group after its died mid-prefill
    assert long_result["body"]["usage"]["completion_tokens"] == 4
    failed = [e for e in log if e[2] != 200]
    ok_after = [e for e in log if e[2] == 200 and e[0] > kill_at]
    waits = [e[1] - max(e[0], kill_at) for e in failed]
    print(f"kill -> unhealthy {seen_down:.2f} s, -> back {back:.1f} s; {len(log)} requests, {len(failed)} failed, "
          f"longest wait for an error {max(waits, default=0):.2f} s")  # fmt: skip
    # at most the requests running on the killed group when it died fail (each client has one request in flight)
    assert len(failed) <= CLIENTS
    for start, end, status, body, headers in failed:
        assert status == 503 and body["error"]["code"] == 503 and "retry-after" in headers
        assert end - max(start, kill_at) < 5, f"a failed request waited {end - max(start, kill_at):.1f} s"
    # every request sent after the kill is served, also those routed to the dead group before the ingress saw it
    # down (it refuses them before any token with a 503 item, and the ingress sends them to the other group);
    # the failures are requests that were running there
    assert all(e[2] == 200 for e in log if e[0] > kill_at), [e[:3] for e in failed]
    assert all(e[0] < kill_at for e in failed)
    assert len(ok_after) > 2 * CLIENTS
