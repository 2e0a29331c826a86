"""Where an idle request's TTFT goes on the serving path: the stamps written by trace_patch.py's temporary
points (time.monotonic(), one file per process under /tmp/trace) against the client's send and first-chunk
times (/tmp/trace_client.json: 25 sequential streamed completions, 0.3 s apart). Prints the median time
from the client's send to the first stamp of each point (the first three requests left out)."""

import glob
import json
import statistics
from pathlib import Path

POINTS = {
    "A": "ingress: completions handler entered",
    "B": "ingress: start sent to the group",
    "C": "group: start call entered",
    "E": "group engine thread: request added",
    "F": "group event loop: first output routed",
    "G": "group: subscription batch yielded",
    "H": "ingress: subscription batch received",
    "I": "ingress: first SSE chunk made",
}

client = json.loads(Path("/tmp/trace_client.json").read_text())
events = []
for f in glob.glob("/tmp/trace/*.log"):
    for line in Path(f).read_text().splitlines():
        t, tag, *_ = line.split()
        events.append((float(t), tag))
events.sort()
rows = []
for t0, first in client:
    row = {"client": (first - t0) * 1000}
    for t, tag in events:
        if t0 <= t <= first + 0.002 and tag not in row:
            row[tag] = (t - t0) * 1000
    rows.append(row)
for tag, what in [*POINTS.items(), ("client", "client: first chunk received")]:
    vals = [r[tag] for r in rows[3:] if tag in r]
    print(f"| {tag} | {what} | {statistics.median(vals):.1f} ms |")
