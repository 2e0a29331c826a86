import subprocess, sys, time, psutil, httpx, json
iv, rate = sys.argv[1], sys.argv[2]
log = open(f"/tmp/probe_{iv}.log", "w")
p = subprocess.Popen([sys.executable, "-m", "benchmarks.suite", "http", "--smoke", "--rate", rate, "--duration", "10",
                      "--stream-interval-s", iv, "--out", f"/tmp/probe_out_{iv}", "--work", "/tmp/httpw"],
                     stdout=log, stderr=subprocess.STDOUT, cwd="/work/main")
names = {"ingress": "OpenAIIngress", "group": "SLoRAGroup", "proxy": "ProxyActor"}
procs, start, last = {}, None, {}
while p.poll() is None:
    time.sleep(0.3)
    for k, pat in names.items():
        if k not in procs:
            for q in psutil.process_iter(["cmdline"]):
                if any(pat in c for c in (q.info["cmdline"] or [])):
                    procs[k] = q
    if start is None and len(procs) == 3:
        try:
            if httpx.get("http://127.0.0.1:8000/v1/models", timeout=2).status_code == 200:
                time.sleep(2)  # warm
                start = {k: sum(q.cpu_times()[:2]) for k, q in procs.items()}
                t0 = time.time()
        except Exception:
            pass
    if start is not None:
        try:
            last = {k: sum(q.cpu_times()[:2]) for k, q in procs.items()}; t1 = time.time()
        except psutil.NoSuchProcess:
            pass
out = json.load(open(f"/tmp/probe_out_{iv}/http.json"))
h = out.get("http", out)
print(iv, {k: round(last[k] - start[k], 2) for k in last}, "wall", round(t1 - t0, 1))
print(open(f"/tmp/probe_out_{iv}/http.md").read().split("| path")[1][:400])
