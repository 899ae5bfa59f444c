"""DPO machinery shared by the experts and the router: one forward for chosen and rejected, cached reference
log-probs, and the health monitor.

Reference log-probs are cached per *sequence* (hash of model fingerprint, template, max_length,
prompt and response), so the safety expert, the helpfulness expert and the router — whose pairs
overlap but order chosen/rejected differently — reuse each other's work, and reruns reuse all of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from midpo_cli import console
from midpo_cli.engine.answer_logps import answer_logps
from midpo_cli.engine.host_memory import release_freed_memory
from midpo_cli.engine.shared_prompt import shared_prompt_logps
from midpo_cli.io import atomic_write_text, try_read_json


def concatenated_logps(model, batch: dict[str, torch.Tensor], **forward_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected log-probs from one forward; returns (chosen (B,), rejected (B,)).

    The forward runs the batch's packed rows (each prompt once, `engine.shared_prompt`) when the collate made
    them (`train.share_prompt`) and the model can run them exactly, else the 2B rows. Log-probs come from the
    answer positions only (`answer_logps`, docs/design.md §2.1); forward_kwargs reach the model's forward
    (MidpoModel's prompt_mask, of the 2B rows). What the model records per position (MidpoModel's gates) has the
    rows of whichever forward ran: `shared_prompt.to_rows` gives it the 2B rows.
    """
    logps = shared_prompt_logps(model, batch, **forward_kwargs) if "packed_input_ids" in batch else None
    if logps is None:
        logps = answer_logps(model, batch, **forward_kwargs)
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def sequence_key(prompt: str, response: str) -> str:
    return hashlib.sha1(f"{prompt}\x00{response}".encode()).hexdigest()[:20]


class RefLogpCache:
    """A JSON map sequence-key → reference log-prob, one file per (policy, template, max_length).

    Verified on load: the header must carry the same namespace, and every requested row must be
    present with a finite value, otherwise the missing rows are recomputed.
    """

    def __init__(self, folder: Path, namespace: dict[str, Any]):
        self.namespace = json.dumps(namespace, sort_keys=True)
        digest = hashlib.sha256(self.namespace.encode()).hexdigest()[:16]
        self.path = Path(folder) / f"ref-logps-{digest}.json"
        self.values: dict[str, float] = {}
        if self.path.exists():
            data = try_read_json(self.path)
            try:
                if data.get("namespace") == self.namespace:
                    self.values = {k: float(v) for k, v in data["values"].items() if math.isfinite(float(v))}
            except (AttributeError, ValueError, KeyError):  # AttributeError: not a JSON object, or no JSON
                console.warn(f"ignoring unreadable reference cache {self.path}")

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"namespace": self.namespace, "values": self.values}))


@torch.no_grad()
def fill_ref_logps(
    model,
    features: list[dict],
    pairs: Sequence[Any],
    collate: Callable[[list], dict],
    cache: RefLogpCache,
    *,
    batch_size: int,
    reference: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    label: str = "reference log-probs",
) -> tuple[list[dict], int]:
    """(the features with 'ref_chosen_logps'/'ref_rejected_logps' added, how many pairs needed a forward pass).

    Only uncached sequences are computed; the given features are left as they are. `reference()` is a
    context that turns the model into π_ref (adapter or routing disabled): the same weights, no second copy.
    Pairs are batched longest first, so each batch pads to similar lengths (the values do not depend on the
    batch).
    """
    refs: dict[int, tuple[float, float]] = {}  # id(feature) → (chosen, rejected)
    todo = []
    for f in features:
        pair = pairs[f["pair_index"]]
        kc, kr = sequence_key(pair.prompt, pair.chosen), sequence_key(pair.prompt, pair.rejected)
        if kc in cache.values and kr in cache.values:
            refs[id(f)] = cache.values[kc], cache.values[kr]
        else:
            todo.append((f, kc, kr))
    todo.sort(key=lambda item: -max(len(item[0]["chosen_input_ids"]), len(item[0]["rejected_input_ids"])))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with reference(), console.progress(label, len(todo), unit="pairs") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            batch = {k: v.to(device) if torch.is_tensor(v) else v
                     for k, v in collate([f for f, _, _ in chunk]).items()}
            chosen, rejected = concatenated_logps(model, batch)
            for (f, kc, kr), c, r in zip(chunk, chosen.tolist(), rejected.tolist(), strict=True):
                refs[id(f)] = c, r
                cache.values[kc], cache.values[kr] = c, r
            bar.advance(len(chunk))
    model.train(was_training)
    if device.type == "cpu":  # so training does not start on this pass's freed memory (host_memory)
        release_freed_memory()
    if todo:
        cache.save()
    out = [{**f, "ref_chosen_logps": refs[id(f)][0], "ref_rejected_logps": refs[id(f)][1]} for f in features]
    return out, len(todo)


def reference_logps(model, features: list[dict], selection: Any, collate: Callable[[list], dict],
                    cache: RefLogpCache, *, batch_size: int, reference: Callable[[], contextlib.AbstractContextManager],
                    stage: str) -> list[dict]:
    """`fill_ref_logps` for a stage's split (`selection` holds its pairs): the new features, the counts logged."""
    if not features:
        return features
    features, computed = fill_ref_logps(model, features, selection.pairs, collate, cache, batch_size=batch_size,
                                        reference=reference, label=f"{stage}: reference log-probs")
    console.log(f"{stage}: reference log-probs: {len(features) - computed} cached, {computed} computed")
    return features


class DpoHealth:
    """Warn (once each) about the classic DPO failure signs after warm-up.

    - loss stuck at ln 2: the policy is not moving away from the reference;
    - implicit-reward accuracy ≤ 0.5: it learns the wrong direction or nothing;
    - chosen and rejected log-probs both falling steeply: likelihood displacement, text degrades.
    """

    def __init__(self, warmup_steps: int, window: int = 20):
        self.warmup = max(warmup_steps, window)
        self.window = window
        self.history: list[dict[str, float]] = []
        self.warned: set[str] = set()
        self.start_logps: tuple[float, float] | None = None

    def update(self, step: int, metrics: dict[str, float]) -> list[str]:
        self.history.append(metrics)
        if self.start_logps is None and "logps/chosen" in metrics:
            self.start_logps = (metrics["logps/chosen"], metrics["logps/rejected"])
        if step < self.warmup or len(self.history) < self.window:
            return []
        recent = self.history[-self.window:]
        mean = {k: sum(m.get(k, 0.0) for m in recent) / len(recent) for k in recent[-1]}
        found = []
        if abs(mean.get("loss", 0.0) - math.log(2)) < 0.01 and mean.get("spe_margin_mean", 0.0) == 0.0:
            found.append(("loss_at_ln2", f"DPO loss has stayed at ln 2 ≈ 0.693 after step {step}: "
                          "the policy is not moving; raise the learning rate or check the data"))
        if mean.get("rewards/accuracies", 1.0) <= 0.5:
            found.append(("accuracy", f"implicit-reward accuracy {mean['rewards/accuracies']:.2f} ≤ 0.5 after "
                          f"step {step}: the expert is not learning the preference"))
        if self.start_logps is not None:
            drop_c = self.start_logps[0] - mean.get("logps/chosen", self.start_logps[0])
            drop_r = self.start_logps[1] - mean.get("logps/rejected", self.start_logps[1])
            if drop_c > 20 and drop_r > 20:
                found.append(("both_fall", f"chosen and rejected log-probs both fell by >20 nats by step "
                              f"{step} (chosen −{drop_c:.0f}, rejected −{drop_r:.0f}): text may degrade; "
                              "lower the learning rate or raise beta"))
        messages = []
        for key, message in found:
            if key not in self.warned:
                self.warned.add(key)
                console.warn(message)
                messages.append(key)
        return messages
