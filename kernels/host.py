"""Host-side integer helpers of the launch wrappers. `triton.cdiv` and `triton.next_power_of_2` are
JIT-callable objects that cost ~2-3 us a call on the host; a step launches hundreds of kernels, each
computing a few of these, so the wrappers use these plain functions (same results on positive ints)."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints, b > 0."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << (int(n) - 1).bit_length() if n > 1 else 1
