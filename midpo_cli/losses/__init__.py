"""The training objectives as pure tensor maths, torch only: no model, no recipe (docs/design.md §2).

`preference` holds MidPO's own losses (SPE-DPO, sequence log-probs, the SFT negative log-likelihood, the
score models' and the router's), `baselines` the compared methods' (DPO, MODPO, SafeDPO) written over
SPE-DPO's form, and `logprobs` the answer-only log-probs computed chunk by chunk from hidden states. Import
the module you need; this package re-exports nothing, so each name has one home.
"""
