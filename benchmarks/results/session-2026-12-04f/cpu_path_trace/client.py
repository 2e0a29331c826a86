"""25 sequential streamed completions (3 tokens, the base model) against `serve run serve_config.yaml` on port
8000, 0.3 s apart; writes each one's send and first-chunk time (time.monotonic()) to /tmp/trace_client.json."""

import json
import time
from pathlib import Path

import httpx

c = httpx.Client(timeout=60)
model = c.get("http://127.0.0.1:8000/v1/models").json()["data"][0]["id"]
out = []
for _ in range(25):
    t0, first = time.monotonic(), None
    body = {"model": model, "prompt": "hello there " * 5, "max_tokens": 3, "stream": True}
    with c.stream("POST", "http://127.0.0.1:8000/v1/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: {") and first is None:
                first = time.monotonic()
    out.append((t0, first))
    time.sleep(0.3)
Path("/tmp/trace_client.json").write_text(json.dumps(out))
