"""The elementwise work of a Llama layer, each op one kernel that reads its inputs once (the torch
references below are what the model computed before: several kernels and float32 copies per op).

    rms_norm(x, w, eps)          -> (x * rsqrt(mean_k x[:, k]^2 + eps)).to(x.dtype) * w      (x: [T, H])
    add_rms_norm(h, y, w, eps)   h += y (in place, rounded to h's dtype), then rms_norm(h, w, eps)
    silu_mul(gu)                 -> silu(gu[:, :I]).to(dtype) * gu[:, I:]                   (gu: [T, 2I])
    gelu_mul(gu)                 -> gelu_tanh(gu[:, :I]).to(dtype) * gu[:, I:]   (Gemma's gelu_pytorch_tanh)
    rope(qkv, cos, sin, n_q, n_k, D)   in place on the first (n_q + n_k) heads of each row of the fused
                                 projection qkv [T, >= (n_q + n_k) D]: with x1, x2 the halves of a head,
                                 (x1, x2) <- (x1 c - x2 s, x2 c + x1 s) in float32 (c, s = cos[t], sin[t]: [T, D/2])
    rope(..., q_norm=wq, k_norm=wk, eps=eps)   Qwen3's per-head norms first: each q head <- rms_norm(head,
                                 wq, eps), each k head <- rms_norm(head, wk, eps) (wq, wk: [D]), then the rotation
    rope(..., rotary_dim=R)      partial rotary (Phi-4-mini's 0.75): only the first R dims of each head rotate,
                                 halves of R (cos, sin: [T, R/2]); the other D - R dims are left as they are

Every op computes in float32 and rounds where the reference rounds, so the Triton and torch backends agree
to the last bit up to the order of a sum (the norm's mean) and fused multiply-adds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, y_ptr, w_ptr, out_ptr, h_out_ptr, H, stride_x, stride_y, stride_o, stride_h, eps,
                     ADD: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """Program t: row t. ADD: x += y first (stored to h_out, rounded to its dtype) and normalised."""
    t = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK)
    m = k < H
    x = tl.load(x_ptr + t * stride_x + k, mask=m, other=0.0)
    if ADD:
        x = (x.to(tl.float32) + tl.load(y_ptr + t * stride_y + k, mask=m, other=0.0).to(tl.float32)).to(
            h_out_ptr.dtype.element_ty
        )
        tl.store(h_out_ptr + t * stride_h + k, x, mask=m)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / H + eps)
    w = tl.load(w_ptr + k, mask=m, other=0.0)
    out = (xf * rstd).to(out_ptr.dtype.element_ty).to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + t * stride_o + k, out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, I, stride_gu, stride_o, BLOCK: tl.constexpr, GELU: tl.constexpr):
    """GELU: gelu_tanh(g) = g / 2 (1 + tanh(c (g + 0.044715 g^3))), tanh(z) = 1 - 2 / (exp(2z) + 1)."""
    t = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = n < I
    g = tl.load(gu_ptr + t * stride_gu + n, mask=m, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + t * stride_gu + I + n, mask=m, other=0.0).to(tl.float32)
    if GELU:
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        s = 0.5 * g * (2.0 - 2.0 / (tl.exp(2.0 * z) + 1.0))
    else:
        s = g / (1.0 + tl.exp(-g))
    s = s.to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + t * stride_o + n, (s * u).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rope_kernel(qkv_ptr, cos_ptr, sin_ptr, wq_ptr, wk_ptr, n_q, stride_t, stride_c, eps,
                 HEAD: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr, NORM: tl.constexpr):  # fmt: skip
    """Program (t, head): rotates the first 2 * HALF dims of one head (HEAD dims) of row t in place; NORM
    (2 * HALF == HEAD): RMS-normalises the head first (the q heads with wq, the k heads with wk), rounded to
    qkv's dtype as rms_norm rounds."""
    t = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    j = tl.arange(0, BLOCK)
    m = j < HALF
    base = qkv_ptr + t * stride_t + head * HEAD
    x1 = tl.load(base + j, mask=m, other=0.0)
    x2 = tl.load(base + HALF + j, mask=m, other=0.0)
    c = tl.load(cos_ptr + t * stride_c + j, mask=m, other=0.0)
    s = tl.load(sin_ptr + t * stride_c + j, mask=m, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    if NORM:
        rstd = 1.0 / tl.sqrt((tl.sum(a * a, axis=0) + tl.sum(b * b, axis=0)) / (2 * HALF) + eps)
        w_ptr = tl.where(head < n_q, wq_ptr, wk_ptr)
        a = (a * rstd).to(x1.dtype).to(tl.float32) * tl.load(w_ptr + j, mask=m, other=0.0).to(tl.float32)
        b = (b * rstd).to(x1.dtype).to(tl.float32) * tl.load(w_ptr + HALF + j, mask=m, other=0.0).to(tl.float32)
        a, b = a.to(x1.dtype).to(tl.float32), b.to(x1.dtype).to(tl.float32)
    tl.store(base + j, (a * c - b * s).to(x1.dtype), mask=m)
    tl.store(base + HALF + j, (b * c + a * s).to(x1.dtype), mask=m)


def _rows(x: torch.Tensor, what: str) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"{what} must be [T, N] with contiguous rows, got {tuple(x.shape)} strides {x.stride()}")


def _norm_warps(block: int) -> int:
    return min(16, max(4, block // 512))


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    _rows(x, "x")
    T, H = x.shape
    out = torch.empty(T, H, dtype=x.dtype, device=x.device)
    if T:
        block = triton.next_power_of_2(H)
        _rms_norm_kernel[(T,)](x, x, w, out, out, H, x.stride(0), x.stride(0), out.stride(0), out.stride(0), eps,
                               ADD=False, BLOCK=block, num_warps=_norm_warps(block))  # fmt: skip
    return out


def add_rms_norm(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    _rows(h, "h")
    _rows(y, "y")
    if h.shape != y.shape:
        raise ValueError(f"h {tuple(h.shape)} and y {tuple(y.shape)} differ")
    T, H = h.shape
    out = torch.empty(T, H, dtype=h.dtype, device=h.device)
    if T:
        block = triton.next_power_of_2(H)
        _rms_norm_kernel[(T,)](h, y, w, out, h, H, h.stride(0), y.stride(0), out.stride(0), h.stride(0), eps,
                               ADD=True, BLOCK=block, num_warps=_norm_warps(block))  # fmt: skip
    return out


def _act_mul(gu: torch.Tensor, gelu: bool) -> torch.Tensor:
    _rows(gu, "gu")
    T, I2 = gu.shape
    inter = I2 // 2
    out = torch.empty(T, inter, dtype=gu.dtype, device=gu.device)
    if T:
        block = min(1024, triton.next_power_of_2(inter))
        _silu_mul_kernel[(T, triton.cdiv(inter, block))](gu, out, inter, gu.stride(0), out.stride(0), BLOCK=block,
                                                         GELU=gelu)  # fmt: skip
    return out


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    return _act_mul(gu, False)


def gelu_mul(gu: torch.Tensor) -> torch.Tensor:
    return _act_mul(gu, True)


def _check_rope(qkv, cos, sin, n_q, n_k, head_dim, q_norm, k_norm, rotary_dim) -> int:
    """The rotated dims (rotary_dim, or head_dim for None), after checking the arguments."""
    _rows(qkv, "qkv")
    rot = head_dim if rotary_dim is None else rotary_dim
    if rot % 2 or not 0 < rot <= head_dim:
        raise ValueError(f"rotary_dim must be even and in (0, {head_dim}], got {rot}")
    if cos.shape != sin.shape or cos.shape != (qkv.shape[0], rot // 2) or cos.dtype != torch.float32:
        raise ValueError(f"cos and sin must be float32 [T, {rot // 2}], got {tuple(cos.shape)} {cos.dtype}")
    if q_norm is not None and rot != head_dim:
        raise ValueError("q/k head norms with a partial rotary are not supported")
    if qkv.shape[1] < (n_q + n_k) * head_dim:
        raise ValueError(f"qkv has {qkv.shape[1]} columns, fewer than {(n_q + n_k) * head_dim}")
    if (q_norm is None) != (k_norm is None):
        raise ValueError("q_norm and k_norm come together (both or neither)")
    for what, w in (("q_norm", q_norm), ("k_norm", k_norm)):
        if w is not None and (w.shape != (head_dim,) or w.device != qkv.device):
            raise ValueError(f"{what} must be [{head_dim}] on {qkv.device}, got {tuple(w.shape)} on {w.device}")
    return rot


def rope(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_q: int,
    n_k: int,
    head_dim: int,
    q_norm: torch.Tensor | None = None,
    k_norm: torch.Tensor | None = None,
    eps: float = 1e-6,
    rotary_dim: int | None = None,
) -> None:
    rot = _check_rope(qkv, cos, sin, n_q, n_k, head_dim, q_norm, k_norm, rotary_dim)
    T = qkv.shape[0]
    if T:
        cos, sin = cos.contiguous(), sin.contiguous()
        norm = q_norm is not None
        wq = q_norm.contiguous() if q_norm is not None else cos
        wk = k_norm.contiguous() if k_norm is not None else cos
        _rope_kernel[(T, n_q + n_k)](qkv, cos, sin, wq, wk, n_q, qkv.stride(0), cos.stride(0), eps,
                                     HEAD=head_dim, HALF=rot // 2, BLOCK=triton.next_power_of_2(rot // 2),
                                     NORM=norm, num_warps=1)  # fmt: skip


# ---- torch references -----------------------------------------------------------------------------


def rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def add_rms_norm_ref(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    h += y
    return rms_norm_ref(h, w, eps)


def silu_mul_ref(gu: torch.Tensor) -> torch.Tensor:
    g, u = gu.chunk(2, dim=-1)
    return torch.nn.functional.silu(g) * u


def gelu_mul_ref(gu: torch.Tensor) -> torch.Tensor:
    g, u = gu.chunk(2, dim=-1)
    return torch.nn.functional.gelu(g, approximate="tanh") * u


def rope_ref(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_q: int,
    n_k: int,
    head_dim: int,
    q_norm: torch.Tensor | None = None,
    k_norm: torch.Tensor | None = None,
    eps: float = 1e-6,
    rotary_dim: int | None = None,
) -> None:
    rot = _check_rope(qkv, cos, sin, n_q, n_k, head_dim, q_norm, k_norm, rotary_dim)
    T = qkv.shape[0]
    x = qkv[:, : (n_q + n_k) * head_dim].view(T, n_q + n_k, head_dim)
    if q_norm is not None and k_norm is not None:
        x[:, :n_q] = rms_norm_ref(x[:, :n_q], q_norm, eps)
        x[:, n_q:] = rms_norm_ref(x[:, n_q:], k_norm, eps)
    x1, x2 = x[..., :rot].float().chunk(2, dim=-1)
    c, s = cos[:, None], sin[:, None]
    x[..., :rot] = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1).to(qkv.dtype)
