"""The routed MidPO model (docs/design.md §2 "MidPO model" and "Router training").

Every targeted linear W (default: each layer's `down_proj`, input h) is replaced in place by a
`RoutedLinear` holding the frozen W, both experts' frozen LoRA factors and a small router:

    y = W h + s_s · g_s(h) · B_s A_s h + s_h · g_h(h) · B_h A_h h,     g = sigmoid(router(h)) ∈ (0, 1)²

s_s and s_h are the scalings peft used while training each expert (`lora.read_adapter`: alpha/r, or
the rsLoRA / rank_pattern value); they are equal for the default experts, and each branch keeps its
own if the adapters differ. The same s is used in training and inference: there is one forward.

Design choices:
- Wrap, don't fork (docs/design.md §2.7): the HF model is modified in place, any decoder whose targeted
  layers are `nn.Linear` works; anything else is refused naming the module path and its type.
- One copy of the base: `routing_disabled()` turns the routed additions off, so the same weights are
  the DPO reference π_ref. `fixed_gates(g_s, g_h)` bypasses the routers (gate sweeps, parity tests).
- All routed layers share one small `RoutingState`; this is how a forward passes the prompt mask to
  the layers without changing the HF model's signature.
- Router init: zero weights and logit(0.5) biases, so training starts from the equal mix of both
  experts at every token (the task-arithmetic average, a sensible point between the two trade-offs),
  where the sigmoid's slope is largest and both directions of each gate are equally reachable;
  zero weights make the first step's gradient h-dependent but the starting model token-independent.
- `router.decision: top1`: each layer's router picks one expert, the one with the larger logit — gates (1, 0) or
  (0, 1), never a mix — with the sigmoid's gradient passed straight through in training. Why: mid-way mixes of
  two experts that overshoot write answers that are neither safe nor helpful (Gemma 3 270M, benchmarks/RESULTS.md);
  a router that never mixes cannot land there (LoRA-Switch, MoGU's hard variant).
- `router.decision: vote`: one decision per prompt for every layer. Each layer's router reads its own layer's
  prompt mean h (routing off, one prefill pass, as the probe switch's features are); their logits are averaged
  and the top-1 expert of the mean serves at every layer. Why: per-layer top-1 decisions disagree across layers
  on Gemma 3 270M, and a mix by layers wrote nonsense as a mix by weights does (benchmarks/RESULTS.md).
- `router.granularity: prompt`: each layer's gates come from the mean h over the prompt tokens. In a
  training forward the caller passes `prompt_mask` (B, T); in `generate` the first forward (the
  prefill, or the first full pass without a KV cache) computes the gates from its attention mask and
  they are held for every later step, so cached and uncached decoding see the same gates, and so does
  a teacher-forced training forward with `prompt_mask` = the prompt tokens.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from midpo_cli.errors import InputError
from midpo_cli.io import atomic_dir, atomic_write_json, read_json
from midpo_cli.modeling.lora import AdapterWeights, LoraBranch, check_adapter_base, read_adapter

FORMAT = "midpo-model"
FORMAT_VERSION = 1
CONFIG_FILE = "midpo_config.json"
ROUTER_FILE = "router.safetensors"
EXPERTS = ("safety", "helpfulness")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU}
DECISIONS = ("soft", "top1", "vote")


@dataclass(frozen=True)
class RouterSettings:
    """Router shape (recipe `stages.router`): a linear map h → 2 logits unless `hidden` is set.

    These defaults are the plain per-token router on h (the paper's input, and the layout of a folder saved
    before `input` was recorded), for the library and tests; a run's defaults are the recipe's (`input:
    token+prompt`), which the router stage always passes.
    """

    granularity: Literal["token", "prompt"] = "token"
    input: Literal["token", "token+prompt"] = "token"
    hidden: int | None = None
    activation: Literal["silu", "gelu"] = "silu"
    init_gates: tuple[float, float] = (0.5, 0.5)
    decision: Literal["soft", "top1", "vote"] = "soft"
    threshold: float = 0.5  # decision vote: the safety expert serves where the vote's p(harmful) ≥ threshold

    def __post_init__(self) -> None:
        if self.granularity not in ("token", "prompt"):
            raise InputError(f"router.granularity: must be 'token' or 'prompt', got {self.granularity!r}")
        if self.input not in ("token", "token+prompt"):
            raise InputError(f"router.input: must be 'token' or 'token+prompt', got {self.input!r}")
        if self.hidden is not None and (not isinstance(self.hidden, int) or self.hidden <= 0):
            raise InputError(f"router.hidden: must be a positive integer or null, got {self.hidden!r}")
        if self.activation not in ACTIVATIONS:
            raise InputError(f"router.activation: must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if len(self.init_gates) != 2 or not all(0.0 < g < 1.0 for g in self.init_gates):
            raise InputError(f"router.init_gates: need two values strictly inside (0, 1), got {self.init_gates!r}")
        if self.decision not in DECISIONS:
            raise InputError(f"router.decision: must be one of {list(DECISIONS)}, got {self.decision!r}")
        if not isinstance(self.threshold, int | float) or not 0.0 <= float(self.threshold) <= 1.0:
            raise InputError(f"router.threshold: must be in [0, 1], got {self.threshold!r}")
        object.__setattr__(self, "init_gates", tuple(float(g) for g in self.init_gates))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "init_gates": list(self.init_gates)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "router") -> RouterSettings:
        unknown = set(data) - {"granularity", "input", "hidden", "activation", "init_gates", "decision", "threshold"}
        if unknown:
            raise InputError(f"{where}: unknown router setting(s) {sorted(unknown)}")
        return cls(**{**data, **({"init_gates": tuple(data["init_gates"])} if "init_gates" in data else {})})


class Router(nn.Module):
    """h (…, d_in) → gates (…, 2) = sigmoid(logits + (b, −b)); column 0 is g_safety, column 1 g_helpfulness.

    b is the inference-time safety dial (`RoutingState.safety_bias`): it shifts both logits in opposite
    directions, so one trained router moves along its own safety/helpfulness curve; b = 0 is the
    router as trained, b → ±∞ the fixed gates (1, 0) / (0, 1).
    """

    def __init__(self, d_in: int, settings: RouterSettings, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        if settings.hidden is None:
            self.net: nn.Module = nn.Linear(d_in, 2, **kw)
            last = self.net
        else:
            last = nn.Linear(settings.hidden, 2, **kw)
            self.net = nn.Sequential(nn.Linear(d_in, settings.hidden, **kw), ACTIVATIONS[settings.activation](), last)
        with torch.no_grad():  # see the module docstring: start from the chosen mix at every token
            last.weight.zero_()
            last.bias.copy_(torch.tensor([math.log(g / (1 - g)) for g in settings.init_gates]))

    @property
    def net_dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def logits(self, h: torch.Tensor, safety_bias: float = 0.0) -> torch.Tensor:
        """The gates before the sigmoid (…, 2), dial included: what gate supervision's BCE reads."""
        logits = self.net(h.to(self.net_dtype))  # the router's own dtype: fp32 even inside a bf16 model
        if safety_bias:
            logits = logits + logits.new_tensor([safety_bias, -safety_bias])
        return logits

    def forward(self, h: torch.Tensor, safety_bias: float = 0.0) -> torch.Tensor:
        return torch.sigmoid(self.logits(h, safety_bias))


@dataclass
class RoutingState:
    """Shared by every RoutedLinear of one model; set by MidpoModel around each forward."""

    granularity: str = "token"
    enabled: bool = True
    fixed: tuple[float, float] | None = None
    prompt_mask: torch.Tensor | None = None  # (B, T), 1 on prompt tokens (granularity "prompt", input "token+prompt")
    hold: bool = False  # generation: the prompt's mean h computed by the first forward, reused afterwards
    safety_bias: float = 0.0  # the safety dial (see Router)
    router_input: str = "token"  # "token" or "token+prompt" (RouterSettings.input)
    row_gates: torch.Tensor | None = None  # (B, 1, 2) the probe switch's per-prompt gates (MidpoModel._switched)
    decision: str = "soft"  # RouterSettings.decision; the layers read only "top1" (a vote sets row_gates instead)

    @property
    def needs_prompt(self) -> bool:
        """Whether the gates read the prompt's mean h (granularity "prompt" or input "token+prompt")."""
        return self.granularity == "prompt" or self.router_input == "token+prompt"


def top1_gates(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """(…, 2) one-hot gates for the expert with the larger logit (ties: safety), valued exactly 0 or 1; in training
    their gradient is the soft gates' (straight-through), so the router still learns through its sigmoid."""
    hard = (logits[..., 0:1] >= logits[..., 1:2]).to(soft.dtype)
    hard = torch.cat([hard, 1 - hard], dim=-1)
    return hard + (soft - soft.detach()) if soft.requires_grad else hard


class RoutedLinear(nn.Module):
    """y = W h + s_s·g_s·B_s A_s h + s_h·g_h·B_h A_h h; W and the LoRA factors frozen, router trainable."""

    def __init__(self, base: nn.Linear, safety: LoraBranch, helpfulness: LoraBranch, router: Router,
                 state: RoutingState) -> None:
        super().__init__()
        self.base = base
        w = base.weight
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        for name, branch in zip(EXPERTS, (safety, helpfulness), strict=True):
            a = nn.Linear(base.in_features, branch.r, bias=False, dtype=w.dtype, device=w.device)
            b = nn.Linear(branch.r, base.out_features, bias=False, dtype=w.dtype, device=w.device)
            with torch.no_grad():
                a.weight.copy_(branch.A)
                b.weight.copy_(branch.B)
            a.weight.requires_grad_(False)
            b.weight.requires_grad_(False)
            self.lora_A[name], self.lora_B[name] = a, b
            self.scaling[name] = float(branch.scaling)
        self.router = router
        self.state = state
        self.last_gates: torch.Tensor | None = None  # (…, 2) of the last forward, with grad in training
        self.last_logits: torch.Tensor | None = None  # (…, 2) their logits (routed gates only)
        self.held_mean: torch.Tensor | None = None  # (B, 1, d) the prompt's mean h, held during generation

    def gates_for(self, h: torch.Tensor) -> torch.Tensor:
        """Gates broadcastable to (…, 2): fixed, per token, from the prompt's mean h, or from both.

        Routed gates also leave their logits in `last_logits` (None for fixed gates)."""
        st = self.state
        self.last_logits = None
        if st.fixed is not None:
            return h.new_tensor(st.fixed)
        if st.row_gates is not None:  # the probe switch: one pair of gates per prompt
            return st.row_gates.to(device=h.device, dtype=h.dtype)
        if not st.needs_prompt:
            router_in = h
        elif st.granularity == "prompt":
            router_in = self.prompt_mean(h)  # (B, 1, d)
        else:
            router_in = torch.cat([h, self.prompt_mean(h).expand_as(h)], dim=-1)
        logits = self.router.logits(router_in, st.safety_bias)
        self.last_logits = logits.expand(*h.shape[:-1], 2)
        soft = torch.sigmoid(logits)
        return top1_gates(logits, soft) if st.decision == "top1" else soft

    def prompt_mean(self, h: torch.Tensor) -> torch.Tensor:
        """(B, 1, d): mean h over the prompt tokens; computed once and held while generating."""
        st = self.state
        if self.held_mean is not None:
            return self.held_mean
        if st.prompt_mask is None:
            raise ValueError(
                "router granularity 'prompt' needs the prompt mask: call MidpoModel(..., prompt_mask=...) "
                "or MidpoModel.generate, not the wrapped Hugging Face model directly"
            )
        if h.dim() != 3 or tuple(st.prompt_mask.shape) != tuple(h.shape[:2]):
            raise ValueError(f"prompt_mask {tuple(st.prompt_mask.shape)} does not match hidden states {tuple(h.shape)}")
        mask = st.prompt_mask.to(device=h.device, dtype=h.dtype).unsqueeze(-1)  # (B, T, 1)
        mean = (h * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, 1, d)
        if st.hold:
            self.held_mean = mean
        return mean

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.base(h)
        if not self.state.enabled:
            self.last_gates = self.last_logits = None
            return y
        gates = self.gates_for(h).to(h.dtype)  # fp32 router, model-dtype mix (a no-op in fp32)
        self.last_gates = gates.expand(*h.shape[:-1], 2)
        d_s = self.lora_B["safety"](self.lora_A["safety"](h))
        d_h = self.lora_B["helpfulness"](self.lora_A["helpfulness"](h))
        return (y + d_s * (gates[..., 0:1] * self.scaling["safety"])
                + d_h * (gates[..., 1:2] * self.scaling["helpfulness"]))


class MidpoModel(nn.Module):
    """A Hugging Face causal LM whose targeted linears are routed; built by `wrap` or `load_midpo`.

    `forward` and `generate` delegate to the wrapped model (`.model`); only `router_parameters()`
    require grad. `gates()` / `gate_tensors()` expose the last forward's gates per routed layer.
    """

    def __init__(self, model: nn.Module, state: RoutingState, settings: RouterSettings,
                 sources: dict[str, Path | None]) -> None:
        super().__init__()
        self.model = model
        self.state = state
        self.settings = settings
        self.sources = sources
        self.routed: dict[str, RoutedLinear] = {
            name: mod for name, mod in model.named_modules() if isinstance(mod, RoutedLinear)
        }
        self.switch: Any = None  # a ProbeSwitch (midpo_cli.modeling.switch) replaces the routers when set

    # -- Hugging Face surface ------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def generation_config(self) -> Any:
        return self.model.generation_config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, *,
                prompt_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """The HF forward; `prompt_mask` (B, T) marks prompt tokens (needed for granularity 'prompt')."""
        self.state.prompt_mask = prompt_mask
        try:
            with self._switched(input_ids, attention_mask, prompt_mask):
                return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            self.state.prompt_mask = None

    @contextlib.contextmanager
    def _switched(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                  prompt_mask: torch.Tensor | None) -> Iterator[None]:
        """With a probe switch (and routing on, gates not fixed): the prompt's gates, for this call — and, inside
        `holding_prompt`, for every later call too: a decoding loop's next forwards see one new token, whose
        features are not the prompt's, so the switch decides once per prompt and the decision is held."""
        st = self.state
        if not self.decides_per_prompt or st.fixed is not None or not st.enabled or st.row_gates is not None \
                or input_ids is None:
            yield
            return
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        prompt = prompt_mask if prompt_mask is not None else mask
        features = self.routed_input_means(input_ids, mask, prompt.bool() & mask.bool())
        gates = self.switch.gates(features, st.safety_bias) if self.switch is not None else self.vote(features)
        st.row_gates = gates.float().unsqueeze(1)  # (B, 1, 2)
        try:
            yield
        finally:
            if not st.hold:
                st.row_gates = None

    @property
    def decides_per_prompt(self) -> bool:
        """One pair of gates per prompt for every layer, from a prefill with routing off: the probe switch, or the
        routers' vote (`decision: vote`)."""
        return self.switch is not None or self.settings.decision == "vote"

    @torch.no_grad()
    def vote_probability(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) the vote's p(harmful) from (B, layers·d) routed_input_means: each layer's router on its own slice,
        σ of the mean over layers of (z_s − z_h)/2 — the dial included, which adds to it as to the switch's logit;
        for routers fit per layer (z_h = −z_s) it is σ of the layers' mean probe logit. p ≥ ½ ⇔ the top-1 rule."""
        routers = [mod.router for mod in self.routed.values()]
        width = features.shape[1] // len(routers)
        logits = torch.stack([r.logits(features[:, i * width:(i + 1) * width], self.state.safety_bias)
                              for i, r in enumerate(routers)]).mean(0)
        return torch.sigmoid((logits[:, 0] - logits[:, 1]) / 2)

    def vote(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 2) one-hot gates: the safety expert where the vote's p ≥ the threshold chosen on dev, else the other."""
        safety = (self.vote_probability(features) >= self.settings.threshold).float()
        return torch.stack([safety, 1 - safety], dim=-1)

    @property
    def router_kind(self) -> str:
        """How this model sets its gates, in words (chat's banner, serve's responses, the export cards)."""
        from midpo_cli.evaluation.labels import router_kind

        return router_kind(self.switch.config() if self.switch is not None else None, self.state.fixed,
                           self.settings.to_dict())

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """HF `generate`, KV cache included; prompt gates are computed at the first step and held."""
        if self.decides_per_prompt:
            ids = kwargs.get("input_ids", args[0] if args else None)
            with self.holding_prompt(), self._switched(ids, kwargs.get("attention_mask"), None):
                return self.model.generate(*args, **kwargs)
        if not self.state.needs_prompt:
            return self.model.generate(*args, **kwargs)

        def capture_prompt(module: nn.Module, f_args: tuple, f_kwargs: dict) -> None:
            if self.state.prompt_mask is not None:
                return
            mask = f_kwargs.get("attention_mask")
            if mask is None:
                ref = f_kwargs.get("input_ids")
                ref = ref if ref is not None else (f_args[0] if f_args else f_kwargs["inputs_embeds"])
                mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
            if mask.dim() != 2:
                raise ValueError("granularity 'prompt' needs a 2-D attention mask in generate")
            self.state.prompt_mask = mask

        handle = self.model.register_forward_pre_hook(capture_prompt, with_kwargs=True)
        try:
            with self.holding_prompt():
                return self.model.generate(*args, **kwargs)
        finally:
            handle.remove()

    @contextlib.contextmanager
    def holding_prompt(self) -> Iterator[MidpoModel]:
        """Routers that read the prompt compute its mean h at the first forward and hold it until the end; a probe
        switch holds the gates it chose for the prompt."""
        self.state.hold = True
        try:
            yield self
        finally:
            self.state.hold = False
            self.state.prompt_mask = None
            self.state.row_gates = None  # the switch's decision for the prompt (_switched)
            for mod in self.routed.values():
                mod.held_mean = None

    @torch.no_grad()
    def routed_input_means(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           prompt_mask: torch.Tensor) -> torch.Tensor:
        """(B, layers·d): per routed layer, the mean of its input over the prompt tokens, routing off.

        What a prompt-reading router sees of the base, for the router stage's linear probe (midpo_cli.evaluation.probe)
        and benchmarks/routing_probe.py. The decoder backbone runs alone: no vocabulary-sized logits.
        """
        caught: list[torch.Tensor] = []
        hooks = [m.register_forward_pre_hook(lambda _m, args: caught.append(args[0].float()))
                 for m in self.routed.values()]
        try:
            with self.routing_disabled():  # positions counted from the first real token, as generate does
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
                self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)
        finally:
            for hook in hooks:
                hook.remove()
        prompt = prompt_mask.unsqueeze(-1).float()
        return torch.cat([(h * prompt).sum(1) / prompt.sum(1).clamp(min=1) for h in caught], dim=-1)

    # -- routing controls ----------------------------------------------------------------------
    @contextlib.contextmanager
    def routing_disabled(self) -> Iterator[MidpoModel]:
        """The base model exactly (the DPO reference), without a second copy of its weights."""
        previous, self.state.enabled = self.state.enabled, False
        try:
            yield self
        finally:
            self.state.enabled = previous

    @contextlib.contextmanager
    def fixed_gates(self, g_safety: float, g_help: float) -> Iterator[MidpoModel]:
        """Bypass the routers with constant gates (g_s, g_h) at every token and layer."""
        previous = self.state.fixed
        self.set_fixed_gates((g_safety, g_help))
        try:
            yield self
        finally:
            self.state.fixed = previous

    @contextlib.contextmanager
    def safety_dial(self, bias: float) -> Iterator[MidpoModel]:
        """Add `bias` to every safety-gate logit and subtract it from the helpfulness one (see Router)."""
        previous = self.state.safety_bias
        self.set_safety_bias(bias)
        try:
            yield self
        finally:
            self.state.safety_bias = previous

    def set_safety_bias(self, bias: float) -> None:
        bias = float(bias)
        if not math.isfinite(bias):
            raise InputError(f"safety bias: must be a finite number, got {bias!r}")
        self.state.safety_bias = bias

    def set_fixed_gates(self, gates: Sequence[float] | None) -> None:
        if gates is not None:
            if len(gates) != 2 or not all(0.0 <= float(g) <= 1.0 for g in gates):
                raise InputError(f"fixed_gates: need [g_safety, g_helpfulness] in [0, 1], got {list(gates)}")
            gates = (float(gates[0]), float(gates[1]))
        self.state.fixed = gates

    # -- gates and router parameters -----------------------------------------------------------
    def _last(self) -> list[torch.Tensor]:
        missing = [name for name, mod in self.routed.items() if mod.last_gates is None]
        if missing:
            raise RuntimeError(f"no gates recorded for {missing[0]}: run a forward with routing enabled first")
        return [mod.last_gates for mod in self.routed.values()]  # type: ignore[misc]

    def gates(self) -> list[torch.Tensor]:
        """Last forward's gates, one detached (B, T, 2) tensor per routed layer (inspection)."""
        return [g.detach() for g in self._last()]

    def gate_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(g_safety per layer, g_help per layer), each (B, T) with grad: the router penalty's input."""
        last = self._last()
        return [g[..., 0] for g in last], [g[..., 1] for g in last]

    def gate_logit_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(safety-gate logits per layer, helpfulness-gate logits per layer), each (B, T) with grad: the
        input of gate supervision (midpo_cli.losses.preference.gate_supervision_loss). Fixed gates have none."""
        self._last()
        missing = [name for name, mod in self.routed.items() if mod.last_logits is None]
        if missing:
            raise RuntimeError(f"no gate logits recorded for {missing[0]}: fixed gates have none")
        last = [mod.last_logits for mod in self.routed.values()]
        return [z[..., 0] for z in last], [z[..., 1] for z in last]  # type: ignore[index]

    def router_parameters(self) -> list[nn.Parameter]:
        return [p for mod in self.routed.values() for p in mod.router.parameters()]

    def router_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.router.{key}": t for name, mod in self.routed.items()
                for key, t in mod.router.state_dict().items()}

    def load_router_state_dict(self, state: dict[str, torch.Tensor], where: str = "router weights") -> None:
        expected = self.router_state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise InputError(f"{where}: router weights do not fit this model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}); were they saved with other router settings?")
        for key, tensor in expected.items():
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise InputError(f"{where}: {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}")
        with torch.no_grad():
            for key, tensor in expected.items():
                tensor.copy_(state[key])


def count_router_parameters(model: MidpoModel) -> int:
    """Trainable router parameters: L·(2·d_x + 2) for a linear router, d_x = 2·d with `input: token+prompt` (the
    recipe's default), d with `input: token`; d = the routed layers' input width (docs/design.md §2.7)."""
    return sum(p.numel() for p in model.router_parameters())


def _select_targets(model: nn.Module, adapters: dict[str, AdapterWeights],
                    target_modules: Sequence[str] | None) -> list[str]:
    """Module paths to route: the adapters' modules, or those matching `target_modules` (peft's rule)."""
    modules = dict(model.named_modules())
    if target_modules is None:
        wanted = set().union(*(a.modules for a in adapters.values()))
        absent = sorted(wanted - set(modules))
        if absent:
            raise InputError(f"adapter module {absent[0]!r} does not exist in the base model "
                             "(adapters trained on another base model?)")
        paths = [name for name in modules if name in wanted]
        what = "the adapters' modules"
    else:
        paths = [name for name in modules if any(name == t or name.endswith("." + t) for t in target_modules)]
        what = f"target_modules={list(target_modules)}"
    if not paths:
        raise InputError(f"no module of the base model matches {what}")
    for path in paths:
        mod = modules[path]
        if not isinstance(mod, nn.Linear):
            kind = f"{type(mod).__module__}.{type(mod).__qualname__}"
            raise InputError(f"{path}: unsupported layer type {kind}; the MidPO router wraps torch.nn.Linear "
                             "layers only (LLaMA, Mistral, Qwen2 style models); choose other target_modules")
    for expert, adapter in adapters.items():
        where = adapter.source or f"{expert} adapter"
        lacking = [p for p in paths if p not in adapter.modules]
        extra = sorted(set(adapter.modules) - set(paths))
        if lacking:
            raise InputError(f"{where}: the {expert} adapter has no LoRA weights for {lacking[0]!r}")
        if extra:
            raise InputError(f"{where}: the {expert} adapter also adapts {extra[0]!r}, which is not routed; "
                             "route it too (target_modules) or retrain the expert")
        for path in paths:
            base, branch = modules[path], adapter.modules[path]
            if branch.A.shape[1] != base.in_features or branch.B.shape[0] != base.out_features:
                raise InputError(f"{where}: {path}: LoRA shapes {tuple(branch.B.shape)}·{tuple(branch.A.shape)} do "
                                 f"not fit the base layer ({base.out_features}×{base.in_features})")
    return paths


def wrap(model: nn.Module, safety: AdapterWeights, helpfulness: AdapterWeights,
         router: RouterSettings | None = None, *, target_modules: Sequence[str] | None = None,
         fixed_gates: Sequence[float] | None = None) -> MidpoModel:
    """Route `model` in place: every targeted nn.Linear gets both experts and a router.

    target_modules None routes exactly the modules both adapters adapt (default experts: every
    `down_proj`). Everything but the routers is frozen, lm_head and embeddings included.
    """
    router = router or RouterSettings()
    paths = _select_targets(model, {"safety": safety, "helpfulness": helpfulness}, target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    state = RoutingState(granularity=router.granularity, router_input=router.input, decision=router.decision)
    d_factor = 2 if router.input == "token+prompt" and router.granularity == "token" else 1
    for path in paths:
        base = model.get_submodule(path)
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        # fp32 router in any base dtype: its few parameters are what trains, and bf16 would round its updates
        r = Router(d_factor * base.in_features, router, dtype=torch.float32, device=base.weight.device)
        setattr(parent, child, RoutedLinear(base, safety.modules[path], helpfulness.modules[path], r, state))
    midpo = MidpoModel(model, state, router, {"safety": safety.source, "helpfulness": helpfulness.source})
    midpo.set_fixed_gates(fixed_gates)
    return midpo


# -- the MidPO model folder ------------------------------------------------------------------------

def _base_reference(base_model: str, folder: Path) -> tuple[str, bool]:
    """Local base folders are stored relative to the MidPO folder, so a run dir can move as a whole."""
    if Path(base_model).exists():
        return os.path.relpath(Path(base_model).resolve(), folder.resolve()), True
    return base_model, False


def save_midpo(model: MidpoModel, tokenizer: Any, folder: str | Path, *, base_model: str,
               safety_adapter: str | Path | None = None, helpfulness_adapter: str | Path | None = None,
               router: RouterSettings | None = None, copy_adapters: bool = True,
               template: str | None = None) -> Path:
    """Write the MidPO model folder atomically: config, router weights, adapters, tokenizer.

    The base weights are referenced, not copied. Adapter folders default to those the model was
    built from; `router`, if given, must equal the model's settings (one source of truth).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if router is not None and router != model.settings:
        raise ValueError(f"router settings {router} differ from the model's {model.settings}")
    given = {"safety": safety_adapter, "helpfulness": helpfulness_adapter}
    sources = {k: Path(given[k]) if given[k] is not None else model.sources[k] for k in EXPERTS}
    for name, src in sources.items():
        if src is None or not Path(src).is_dir():
            raise InputError(f"save_midpo: the {name} adapter folder {src} is not available; pass {name}_adapter=")
    scaling = {name: sorted({mod.scaling[name] for mod in model.routed.values()}) for name in EXPERTS}
    base_ref, base_relative = _base_reference(base_model, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:
        adapters: dict[str, str] = {}
        for name, src in sources.items():
            if copy_adapters:
                shutil.copytree(src, tmp / "adapters" / name)
                adapters[name] = f"adapters/{name}"
            else:
                adapters[name] = str(Path(src).resolve())
        weights = {k: v.detach().to("cpu").contiguous() for k, v in model.router_state_dict().items()}
        save_file(weights, str(tmp / ROUTER_FILE), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / CONFIG_FILE, {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "base_model": base_ref,
            "base_model_relative": base_relative,
            "adapters": adapters,
            "adapters_copied": copy_adapters,
            "router": model.settings.to_dict(),
            "scaling": scaling,
            "target_modules": list(model.routed),
            "fixed_gates": list(model.state.fixed) if model.state.fixed is not None else None,
            "template": template,  # the resolved prompt template the router trained with (chat, generate read it)
            **({"switch": model.switch.config()} if model.switch is not None else {}),
        })
        if model.switch is not None:
            model.switch.save(tmp)
    return folder


def read_midpo_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{folder}: not a MidPO model folder ({CONFIG_FILE} missing)")
    cfg = read_json(path)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} config")
    if cfg.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: format_version {cfg.get('format_version')!r} is not supported "
                         f"(this midpo reads {FORMAT_VERSION})")
    for key in ("base_model", "adapters", "router", "scaling", "target_modules"):
        if key not in cfg:
            raise InputError(f"{path}: missing key {key!r}")
    return cfg


def load_midpo(folder: str | Path, *, dtype: str = "fp32", device: str | torch.device | None = None,
               fixed_gates: Sequence[float] | None = None, trust_remote_code: bool = False) -> tuple[MidpoModel, Any]:
    """(MidPO model in eval mode, tokenizer), ready for `generate`."""
    from midpo_cli.modeling.loading import load_causal_lm, load_safetensors, load_tokenizer

    folder = Path(folder)
    cfg = read_midpo_config(folder)
    where = folder / CONFIG_FILE
    if dtype not in DTYPES:
        raise InputError(f"dtype: must be one of {sorted(DTYPES)}, got {dtype!r}")
    settings = RouterSettings.from_dict(cfg["router"], where=f"{where}: router")
    base = str(folder / cfg["base_model"]) if cfg.get("base_model_relative") else cfg["base_model"]
    adapters = {}
    for name in EXPERTS:
        ref = cfg["adapters"].get(name)
        if ref is None:
            raise InputError(f"{where}: adapters.{name} is missing")
        adapters[name] = read_adapter(folder / ref if not Path(ref).is_absolute() else Path(ref))
    model = load_causal_lm(base, dtype=dtype, trust_remote_code=trust_remote_code)
    for name in EXPERTS:  # the same base the experts were trained on (shape and weights fingerprint)
        ref = cfg["adapters"][name]
        check_adapter_base(folder / ref if not Path(ref).is_absolute() else Path(ref), model, base_name=base,
                           source=base, trust_remote_code=trust_remote_code)
    midpo = wrap(model, adapters["safety"], adapters["helpfulness"], settings, target_modules=None)
    if list(midpo.routed) != list(cfg["target_modules"]):
        raise InputError(f"{where}: target_modules {cfg['target_modules'][:2]}… differ from the routed modules "
                         f"{list(midpo.routed)[:2]}… of base {base}")
    scaling = {name: sorted({mod.scaling[name] for mod in midpo.routed.values()}) for name in EXPERTS}
    if scaling != cfg["scaling"]:
        raise InputError(f"{where}: scaling {cfg['scaling']} was recorded at training, but the adapters now "
                         f"give {scaling}; the adapter folders changed since the router was trained")
    midpo.load_router_state_dict(load_safetensors(folder / ROUTER_FILE), where=str(folder / ROUTER_FILE))
    if cfg.get("switch"):
        from midpo_cli.modeling.switch import ProbeSwitch

        midpo.switch = ProbeSwitch.load(folder, cfg["switch"])
    midpo.set_fixed_gates(fixed_gates if fixed_gates is not None else cfg.get("fixed_gates"))
    has_tokenizer = (folder / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(str(folder) if has_tokenizer else base, trust_remote_code=trust_remote_code)
    if device is not None:
        midpo.to(device)
    return midpo.eval(), tokenizer
