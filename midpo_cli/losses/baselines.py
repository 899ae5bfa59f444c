"""The baselines' losses, as pure tensor maths beside MidPO's own (docs/design.md §2.11).

Same contract as `losses.preference`: per-pair losses (B,) and detached implicit rewards, no model, no recipe,
no Python branch on a tensor value. Each one is the SPE-DPO form −log σ(β′·Δ − m) with its own β′ and m, so
the training step, the reference cache and the metrics are the experts'; only the objective differs. Tested
in float64 against per-sample loops (tests/test_baseline_losses.py).
"""

from __future__ import annotations

import torch

from midpo_cli.losses.preference import spe_dpo_loss

__all__ = ["dpo_loss", "modpo_loss", "safedpo_loss"]  # SafeDPO's re-ordering lives with the pair filters


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain sigmoid DPO (Rafailov et al., 2023): −log σ(β·Δ), which is SPE-DPO with m = 0."""
    return spe_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, 0.0, beta)


def modpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
               ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
               safety_chosen: torch.Tensor, safety_rejected: torch.Tensor, *, beta: float, w_help: float,
               w_safety: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MODPO (Zhou et al., 2024, its two-objective loss): −log σ((β/w_h)·Δ − (w_s/w_h)·(r_s(y_w) − r_s(y_l))).

    Pairs are ordered by helpfulness (y_w the better answer); r_s = −cost is the frozen cost model's safety
    score of each answer, (B,). The implicit rewards returned are (β/w_h)·(log π − log π_ref), detached.

    Why the margin is *subtracted*: MODPO reads β·log π/π_ref as w_h·r_h + w_s·r_s and fits r_h to the
    helpfulness labels, so at the optimum β·Δ = w_h·Δr_h + w_s·Δr_s — a winner that is also the safer answer
    is preferred by more than its helpfulness alone asks, a safer loser by less.

    Worked example (tests/test_baseline_losses.py): β = 0.1, w_h = w_s = 0.5, Δ = 2 (the policy has moved
    2 nats towards y_w), cost(y_w) = −1 (safe), cost(y_l) = +2 → r_s(y_w) − r_s(y_l) = 1 − (−2) = 3;
    logit = (0.1/0.5)·2 − (0.5/0.5)·3 = 0.4 − 3 = −2.6, loss = log(1 + e^2.6) = 2.672. With w_s = 0 it is
    plain DPO at β/w_h: logit 0.4, loss 0.513. Swap the costs (the winner is the unsafe one): logit
    0.4 + 3 = 3.4, loss 0.033 — that pair already wants little more.
    """
    margin = (w_safety / w_help) * (safety_chosen - safety_rejected)
    return spe_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        margin, beta / w_help)


def safedpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                 ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor,
                 chosen_unsafe: torch.Tensor, rejected_unsafe: torch.Tensor, *, beta: float, delta: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SafeDPO (arXiv 2505.20065, Eq. 12): −log σ(β·Δ − (h_l − h_w)·Δ_s) on pairs re-ordered by
    `data.filters.safedpo_chosen`.

    h_w, h_l (B,): 1 where the answer is labelled unsafe, else 0; Δ_s ≥ 0 (`delta`) is the safety offset: a
    safe winner over an unsafe loser must beat it by Δ_s more. After the re-ordering h_w = 0 always, so the
    offset is Δ_s on safe-vs-unsafe pairs and 0 on safe-vs-safe ones; Δ_s = 0 is DPO on the re-ordered pairs.
    """
    margin = delta * (rejected_unsafe.to(policy_chosen_logps.dtype) - chosen_unsafe.to(policy_chosen_logps.dtype))
    return spe_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                        margin, beta)
