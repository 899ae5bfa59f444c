"""Loss functions of every training stage, as pure tensor maths (docs/design.md §2).

Each function takes tensors and floats and returns per-example losses (the caller reduces them, so
gradient accumulation and masking stay its choice) plus detached metrics. No model, no recipe, no
`.item()`, no Python branch on a tensor value: these run inside the training step on any device and
are tested in float64 against per-sample loops (tests/test_losses.py).

Shapes: B = batch (pairs or sequences), T = sequence length, V = vocabulary, L = routed layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log π(y|x) = Σ_t mask[t]·log p(labels[t] | labels[<t]) over the response tokens (docs/design.md §2).

    logits (B, T, V): position t-1 scores the token at t, so labels[:, 0] is never scored.
    labels (B, T): token ids (ids at masked positions are ignored, they may be pad or -100).
    response_mask (B, T): 1 at the answer tokens (incl. EOS), 0 at prompt and padding.
    Returns (B,) in the logits' dtype; pass float32 logits for sums over long answers.

    log p = logit[label] − logsumexp(logits): unlike log_softmax, this keeps no second (B, T, V)
    tensor alive for the backward pass (logsumexp saves only its (B, T) output), which is what
    bounds memory for large vocabularies.
    """
    logits = logits[:, :-1]  # (B, T-1, V) — a view, no copy
    mask = response_mask[:, 1:].bool()  # (B, T-1)
    targets = labels[:, 1:].masked_fill(~mask, 0)  # (B, T-1), safe gather index at masked positions
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    token_logps = picked - torch.logsumexp(logits, dim=-1)  # (B, T-1)
    return torch.where(mask, token_logps, 0.0).sum(-1)  # (B,); where, not ×: a NaN at padding stays out


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per response token over the whole batch (scalar).

    Same shapes and shift as `sequence_logps`. Averaging over tokens (not sequences) weights every
    answer token equally, as HF causal-LM training does; an all-prompt batch gives 0, not NaN.
    """
    return answer_nll(sequence_logps(logits, labels, response_mask), response_mask)


def answer_nll(seq_logps: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """SFT's loss from per-sequence log-prob sums (B,): −Σ log π / (number of scored answer tokens) (scalar).

    The count is response_mask[:, 1:] — the tokens `sequence_logps` scores — so full logits and the
    chunked path (`midpo_cli.losses.logprobs`) give the same normalisation (docs/design.md §2.2).
    """
    return -seq_logps.sum() / response_mask[:, 1:].sum().clamp(min=1)


def spe_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    margin: float | torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPE-DPO: L = −log σ(β·Δ − m), Δ = [log π_θ(y_w) − log π_ref(y_w)] − [log π_θ(y_l) − log π_ref(y_l)].

    All log-prob inputs are (B,) sequence sums (`sequence_logps`); margin m is a float or (B,)
    (precomputed by `preference_margin`, docs/design.md §2). m = 0 is plain sigmoid DPO.
    Returns (losses (B,), chosen_rewards (B,), rejected_rewards (B,)); the implicit rewards
    β·(log π_θ − log π_ref) are detached: they are metrics, not part of the objective.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    delta = chosen_logratios - rejected_logratios  # (B,)
    m = torch.as_tensor(margin, dtype=delta.dtype, device=delta.device)
    losses = -F.logsigmoid(beta * delta - m)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def preference_margin(
    score_chosen: torch.Tensor, score_rejected: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """m = max(0, γ·(S(y_w) − S(y_l))) (docs/design.md §2); 0 where the score model disagrees with the label.

    Inputs (B,) scores S (reward r, or safety −c); returns (B,).
    """
    return torch.clamp(scale * (score_chosen - score_rejected), min=0)


def reward_model_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, regularization: float = 0.001
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = −log σ(r_w − r_l) + λ·(r_w² + r_l²)/2 (docs/design.md §2, reward model); inputs (B,) end scores.

    The λ term keeps scores near 0 (Bradley–Terry alone is shift-invariant). Returns (losses (B,),
    metrics: accuracy (r_w > r_l), chosen_mean, rejected_mean, margin (mean r_w − r_l), all detached).
    """
    penalty = regularization * (r_chosen.square() + r_rejected.square()) / 2
    losses = -F.logsigmoid(r_chosen - r_rejected) + penalty
    rw, rl = r_chosen.detach(), r_rejected.detach()
    metrics = {
        "accuracy": (rw > rl).to(rw.dtype).mean(),
        "chosen_mean": rw.mean(),
        "rejected_mean": rl.mean(),
        "margin": (rw - rl).mean(),
    }
    return losses, metrics


def cost_model_loss(
    c_safer: torch.Tensor,
    c_unsafer: torch.Tensor,
    safer_is_safe: torch.Tensor,
    unsafer_is_safe: torch.Tensor,
    regularization: float = 0.001,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = −log σ(c_u − c_s) − log σ(s_u·c_u) − log σ(s_s·c_s) + λ·(c_u² + c_s²)/2 (docs/design.md §2, cost model).

    c_safer, c_unsafer (B,): end scores of the safer / other answer; *_is_safe (B,) bool or 0/1
    labels; sign s = +1 for an answer labelled unsafe, −1 for safe, so the two sign terms push safe
    answers to c < 0 and unsafe ones to c > 0. Returns (losses (B,), metrics: accuracy (c_u > c_s),
    sign_accuracy ((c < 0) == safe over both answers), safer_mean, unsafer_mean, margin; detached).
    """
    safe_s = safer_is_safe.to(c_safer.dtype)
    safe_u = unsafer_is_safe.to(c_unsafer.dtype)
    sign_s, sign_u = 1 - 2 * safe_s, 1 - 2 * safe_u  # (B,) +1 unsafe / −1 safe
    losses = (
        -F.logsigmoid(c_unsafer - c_safer)
        - F.logsigmoid(sign_u * c_unsafer)
        - F.logsigmoid(sign_s * c_safer)
        + regularization * (c_unsafer.square() + c_safer.square()) / 2
    )
    cs, cu = c_safer.detach(), c_unsafer.detach()
    sign_ok = torch.cat([(cs < 0) == safe_s.bool(), (cu < 0) == safe_u.bool()])
    metrics = {
        "accuracy": (cu > cs).to(cs.dtype).mean(),
        "sign_accuracy": sign_ok.to(cs.dtype).mean(),
        "safer_mean": cs.mean(),
        "unsafer_mean": cu.mean(),
        "margin": (cu - cs).mean(),
    }
    return losses, metrics


def _stack_layers(gates: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """(L, B, T) tensor, or a list of L (B, T) tensors → (L, B, T)."""
    return gates if isinstance(gates, torch.Tensor) else torch.stack(list(gates))


def router_penalty(
    g_safety: torch.Tensor | Sequence[torch.Tensor],
    g_help: torch.Tensor | Sequence[torch.Tensor],
    token_mask: torch.Tensor,
    lam_safety: float = 1.0,
    lam_help: float = 1.0,
) -> torch.Tensor:
    """λ_s·mean|g_s| + λ_h·mean|g_h − 1| over real tokens of every routed layer (docs/design.md §2, router).

    g_safety, g_help: (L, B, T) or a list of L (B, T) gate tensors; token_mask (B, T), 1 = real token.
    The mean runs over all (layer, real token) cells, i.e. the per-layer means averaged over
    layers — summing over layers would act as λ·L (docs/design.md §7). Padding never contributes; an
    all-padding batch gives 0. Returns a scalar. λ = 1 is the paper's equation; a run's λ is the recipe's
    `stages.router.penalty` (default 0), which the router stage always passes.
    """
    gs, gh = _stack_layers(g_safety), _stack_layers(g_help)  # (L, B, T)
    mask = token_mask.bool().unsqueeze(0)  # (1, B, T)
    count = (mask.sum() * gs.shape[0]).clamp(min=1)
    safety = torch.where(mask, gs.abs(), 0.0).sum() / count
    helpfulness = torch.where(mask, (gh - 1).abs(), 0.0).sum() / count
    return lam_safety * safety + lam_help * helpfulness


def gate_supervision_loss(
    logit_safety: torch.Tensor | Sequence[torch.Tensor],
    logit_help: torch.Tensor | Sequence[torch.Tensor] | None,
    token_mask: torch.Tensor,
    harmful: torch.Tensor,
) -> torch.Tensor:
    """mean_G BCE(z_s, y) [+ mean_G BCE(z_h, 1 − y)]: the gates told which prompts are harmful (docs/design.md §2.8).

    logit_safety, logit_help: (L, B, T) or lists of L (B, T) gate **logits** (pre-sigmoid; BCE with logits keeps
    the gradient where a saturated sigmoid would lose it). logit_help None leaves g_h free. token_mask (B, T):
    1 on the cells in scope; harmful (B,): 1 harmful, 0 benign, NaN unknown (its row is left out). y = 1 pulls
    g_s → 1 on harmful prompts and, through 1 − y, g_h → 0 there (MoGU's targets, on logits). The means run over
    all (layer, token-in-scope) cells, as `router_penalty`'s; an empty scope gives 0. Returns a scalar.
    """
    zs = _stack_layers(logit_safety)  # (L, B, T)
    known = ~torch.isnan(harmful)  # (B,)
    y = torch.where(known, harmful, 0.0).to(zs.dtype)[None, :, None].expand_as(zs)  # (L, B, T)
    mask = (token_mask.bool() & known[:, None]).unsqueeze(0).expand_as(zs)  # (L, B, T)
    count = mask.sum().clamp(min=1)
    loss = torch.where(mask, F.binary_cross_entropy_with_logits(zs, y, reduction="none"), 0.0).sum() / count
    if logit_help is not None:
        zh = _stack_layers(logit_help)
        loss = loss + torch.where(mask, F.binary_cross_entropy_with_logits(zh, 1 - y, reduction="none"),
                                  0.0).sum() / count
    return loss
