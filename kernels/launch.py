"""Host-side integer arithmetic of the kernels' launch grids and block sizes.

`triton.cdiv` and `triton.next_power_of_2` are constexpr functions (Triton >= 3.4): called from Python each
unwraps its arguments and imports a module, ~1.7 µs a call on a 2-core CI CPU against ~0.01 µs for the plain
arithmetic here. A step launches a few hundred kernels whose wrappers size their grids this way, so the
wrappers use these instead (the same values for positive integers; tests/test_kernels.py checks them
against Triton's)."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers, b > 0."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def pow2_clamp(n: int, lo: int, hi: int) -> int:
    """next_pow2(n) clamped to [lo, hi]."""
    return max(lo, min(hi, next_pow2(n)))
