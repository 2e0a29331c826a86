"""Summarizes group.raw (py-spy record -p GROUP_PID -d 14 -r 200 -f raw --threads, during two floods of 90
streamed completions on the CPU demo, `serve run serve_config.yaml` on the 2-core dev machine): active samples
per thread, and the functions of our replica's event loop thread (inclusive samples). Another profile: pass its
path (session-2026-12-04e/cpu_ab/profile/group.raw)."""

import collections
import sys
from pathlib import Path

per_thread: collections.Counter = collections.Counter()
loop: collections.Counter = collections.Counter()
for ln in (Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("group.raw")).read_text().splitlines():
    stack, _, n = ln.rpartition(" ")
    frames = stack.split(";")
    per_thread[frames[0]] += int(n)
    if "_run_user_code_event_loop" in frames[0]:
        for f in {f.split(" (")[0] for f in frames[1:]}:
            loop[f] += int(n)
print("active samples per thread (200 Hz, 14 s):")
for th, n in per_thread.most_common():
    print(f"  {n:5d}  {th}")
print("replica event loop, inclusive:")
for f, n in loop.most_common(20):
    print(f"  {n:5d}  {f}")
