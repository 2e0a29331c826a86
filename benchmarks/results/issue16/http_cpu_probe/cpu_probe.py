"""CPU seconds each Serve process (proxy, ingress, group) spends while `benchmarks.suite http --smoke` replays
its trace over HTTP. Usage, from the repository root: python cpu_probe.py STREAM_INTERVAL_S RATE"""

import json
import subprocess
import sys
import time

import httpx
import psutil

NAMES = {"ingress": "OpenAIIngress", "group": "SLoRAGroup", "proxy": "ProxyActor"}


def cpu_s(procs: dict) -> dict:
    return {k: sum(q.cpu_times()[:2]) for k, q in procs.items()}


def main() -> None:
    iv, rate = sys.argv[1], sys.argv[2]
    out_dir = f"/tmp/probe_out_{iv}"
    cmd = [sys.executable, "-m", "benchmarks.suite", "http", "--smoke", "--rate", rate, "--duration", "10",
           "--stream-interval-s", iv, "--out", out_dir, "--work", "/tmp/httpw"]  # fmt: skip
    with open(f"/tmp/probe_{iv}.log", "w") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        procs: dict = {}
        start = last = None
        t0 = t1 = 0.0
        while p.poll() is None:
            time.sleep(0.3)
            for k, pat in NAMES.items():
                if k not in procs:
                    found = [q for q in psutil.process_iter(["cmdline"]) if pat in " ".join(q.info["cmdline"] or [])]
                    procs.update({k: found[0]} if found else {})
            if start is None and len(procs) == 3:
                try:
                    if httpx.get("http://127.0.0.1:8000/v1/models", timeout=2).status_code == 200:
                        time.sleep(2)  # the replay starts
                        start, t0 = cpu_s(procs), time.time()
                except httpx.HTTPError:
                    pass
            elif start is not None:
                try:
                    last, t1 = cpu_s(procs), time.time()
                except psutil.NoSuchProcess:
                    pass
    assert start is not None and last is not None
    with open(f"{out_dir}/http.json") as f:
        json.load(f)  # the run finished
    print(iv, {k: round(last[k] - start[k], 2) for k in last}, "wall", round(t1 - t0, 1))
    with open(f"{out_dir}/http.md") as f:
        print(f.read().split("| path")[1][:400])


if __name__ == "__main__":
    main()
