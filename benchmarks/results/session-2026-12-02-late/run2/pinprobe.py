"""How fast torch gives pinned host memory on this host (one thread, 16 threads) vs pageable memory touched."""

import time
from concurrent.futures import ThreadPoolExecutor

import torch


def pinned(n, mib):
    return torch.empty(mib << 20, dtype=torch.uint8, pin_memory=True)


for label, threads, n, mib in (
    ("pinned, 1 thread, 32 MiB", 1, 64, 32),
    ("pinned, 16 threads, 16 MiB", 16, 128, 16),
    ("pinned, 1 thread, 24 MiB (rounds to 32)", 1, 64, 24),
):
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        xs = list(ex.map(lambda i: pinned(i, mib), range(n)))
    d = time.perf_counter() - t
    print(f"{label}: {n * mib / 1024 / d:.2f} GiB/s ({n} x {mib} MiB in {d:.2f} s)", flush=True)
    del xs
t = time.perf_counter()
xs = [torch.zeros(32 << 20, dtype=torch.uint8) for _ in range(64)]
d = time.perf_counter() - t
print(f"pageable zero-filled, 1 thread: {64 * 32 / 1024 / d:.2f} GiB/s", flush=True)
