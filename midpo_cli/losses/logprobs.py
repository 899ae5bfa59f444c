"""Answer-only log-probs from hidden states, chunked over positions (docs/design.md §2.1, "Large vocabularies").

`sequence_logps` needs the full (B, T, V) logits; with a 262k-token vocabulary that tensor, and the
lm_head matmul for prompt positions whose logits are thrown away, dominate a small model's step.
`chunked_answer_logps` projects only the N positions whose next token is an answer token, C at a
time, and its backward recomputes each chunk's logits instead of keeping them: the largest
vocabulary-sized tensor alive, forward or backward, is (C, V). torch only, no model.
"""

from __future__ import annotations

import torch

LOGITS_CHUNK_BYTES = 64 * 2**20  # one chunk's (C, V) logits; see `default_chunk_size`


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (exact tests); everything else, bf16 and fp16 included, runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_size(vocab_size: int, dtype: torch.dtype = torch.float32) -> int:
    """Positions per chunk so one chunk's logits take ≤ 64 MiB (64 positions at V = 262,144 in fp32).

    Why a byte budget and not a fixed count: the cost to bound is C·V, and large enough chunks keep the
    matmul efficient (benchmarks/RESULTS.md, "Large vocabularies").
    """
    itemsize = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    return max(1, LOGITS_CHUNK_BYTES // (vocab_size * itemsize))


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  softcap: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """z = cap·tanh(l/cap) (or l), l = h Wᵀ + b, for one chunk (C, V); also tanh(l/cap) for the backward."""
    logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    if softcap is None:
        return logits, None
    tanh = logits.div_(softcap).tanh_()
    return tanh * softcap, tanh


class _AnswerTokenLogps(torch.autograd.Function):
    """(N, H) hidden states, (V, H) output embedding → (N,) log p(target), in chunks of positions.

    Saves only h, W, b and the targets; backward recomputes each chunk's logits: with p = softmax(z),
    ∂ log p_t / ∂z = onehot(t) − p, ∂z/∂l = 1 − tanh²(l/cap) under softcapping, then grad_h = G W and
    grad_W = Gᵀ h, grad_b = Σ G over the chunk, where G = grad_out · ∂ log p_t / ∂l.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk_size, softcap):
        ctx.save_for_backward(h, weight, bias, targets)
        ctx.chunk_size, ctx.softcap = chunk_size, softcap
        dtype = compute_dtype(h.dtype)
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        out = h.new_empty(h.shape[0], dtype=dtype)
        for start in range(0, h.shape[0], chunk_size):
            z, _ = _chunk_logits(h[start:start + chunk_size].to(dtype), w, b, softcap)
            picked = z.gather(1, targets[start:start + chunk_size, None]).squeeze(1)
            out[start:start + chunk_size] = picked - torch.logsumexp(z, dim=1)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        h, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = compute_dtype(h.dtype)
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        grad_h = torch.empty_like(h, dtype=dtype) if need_h else None
        grad_w = torch.zeros_like(w) if need_w else None
        grad_b = torch.zeros_like(b) if need_b else None
        for start in range(0, h.shape[0], ctx.chunk_size):
            end = min(start + ctx.chunk_size, h.shape[0])
            hc, g = h[start:end].to(dtype), grad_out[start:end].to(dtype)
            z, tanh = _chunk_logits(hc, w, b, ctx.softcap)
            grad_z = z.sub_(z.logsumexp(1, keepdim=True)).exp_().mul_(-g[:, None])  # −g·p, in z's memory
            grad_z[torch.arange(end - start, device=z.device), targets[start:end]] += g  # + g·onehot
            if tanh is not None:
                grad_z.mul_(tanh.square_().neg_().add_(1))  # chain through z = cap·tanh(l/cap)
            if need_h:
                grad_h[start:end] = grad_z @ w
            if need_w:
                grad_w.addmm_(grad_z.T, hc)
            if need_b:
                grad_b += grad_z.sum(0)
        return _cast(grad_h, h), _cast(grad_w, weight), _cast(grad_b, bias), None, None, None


def _cast(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    """A gradient in its input's dtype (bf16 weights get a bf16 gradient, accumulated in float32)."""
    return None if grad is None else grad.to(like.dtype)


def chunked_answer_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """`sequence_logps` of the logits z = softcap(hidden Wᵀ + b), without forming them (docs/design.md §2.1).

    hidden (B, T, H): the backbone's final (normed) hidden states, what the model feeds to lm_head.
    weight (V, H), bias (V,) or None: the output embedding. labels, response_mask (B, T): as in
    `sequence_logps` — position t−1 scores token t, so only the N positions with response_mask[t] = 1
    are projected, `chunk_size` at a time (default: `default_chunk_size`). softcap: the model's
    `final_logit_softcapping` (z = cap·tanh(l/cap)) or None. Returns (B,) in float32 (float64 for
    float64 hidden states); gradients flow to hidden, weight and bias.
    """
    mask = response_mask[:, 1:].bool()
    rows, cols = mask.nonzero(as_tuple=True)  # (N,) each: the scoring positions t−1 of answer tokens t
    chunk = chunk_size or default_chunk_size(weight.shape[0], hidden.dtype)
    token_logps = _AnswerTokenLogps.apply(hidden[rows, cols], weight, bias, labels[rows, cols + 1], chunk, softcap)
    return token_logps.new_zeros(hidden.shape[0]).index_add(0, rows, token_logps)
