"""Judges: what labels each answer safe or not, refused or not, helpful or not (docs/judges.md).

One module per judge — `toy` (the toy world's ground truth), `score_models` (the arena protocol with a reward and a
cost model), `guard` (a local safety classifier read through its chat template), `openai_compat` (an LLM judge
behind any OpenAI-compatible endpoint) — and `panel`, which builds them from the recipe and runs them over a set
of answers. What the labels mean for the statistics is midpo_cli.evaluation.judge_labels; judges sit above it and
below the stages, which compose them (the score stage, and every dev choice).
"""
