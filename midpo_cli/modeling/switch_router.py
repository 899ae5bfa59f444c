#!/usr/bin/env python3
"""Reference router for a MidPO probe switch: choose the expert for each prompt, then ask any OpenAI-compatible
multi-LoRA server (vLLM, SGLang, LoRAX, `midpo serve` …) for the answer with `model=safety|helpfulness`.

    python route.py "How do I patch a hole in drywall?"                               # print the choice
    python route.py --server http://127.0.0.1:8000/v1 "How do I patch a hole …?"      # and ask the server

Needs torch, transformers and safetensors; not midpo. `midpo export --adapters` copies this file into the export's
`router/` folder beside `router.json` (what the switch reads) and `switch.safetensors` (its weights); the export
checks, before it is put in place, that this code gives midpo's gates.

How it decides, exactly as midpo does: the prompt is encoded as training encoded it (`router.json`'s template), the
base alone (no adapter) reads it, and the input of each layer named in `layers` is averaged over the prompt's tokens;
the means, concatenated in that order, are x. Then p(harmful) = sigmoid(((x − mean) / std) · weight + bias + dial);
a hard switch sends the prompt to the safety expert when p ≥ threshold, else to the helpfulness expert. A soft
switch's gates are (p, 1 − p): a server that applies one adapter per request gets the expert with the larger gate.

Cost: one extra prefill of the base per request. The probe reads the base's hidden states with no adapter, and the
server then prefills the prompt again with the chosen adapter (its prefix cache is kept per adapter).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
EXPERTS = ("safety", "helpfulness")


def load_switch(folder: str | Path = HERE) -> tuple[dict, dict[str, torch.Tensor]]:
    """(router.json, the switch's tensors: mean, std, weight, bias; float64)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / "router.json").read_text(encoding="utf-8"))
    return config, {k: v.double() for k, v in load_file(str(folder / config["weights"])).items()}


def encode(tokenizer, prompt: str, config: dict) -> list[int]:
    """The prompt's ids as training encoded them: its template's text, the tokenizer's own special tokens for the
    safe-rlhf format (its BOS, if it adds one), none for a chat template (the template writes them), no EOS."""
    if config["template"] == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt.strip()}], tokenize=False,
                                             add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids = list(tokenizer(config["prompt_format"].format(prompt=prompt.strip()))["input_ids"])
    return ids[:-1] if ids and ids[-1] == tokenizer.eos_token_id else ids


@torch.no_grad()
def features(model, ids: list[int], layers: list[str]) -> torch.Tensor:
    """x: each named layer's input averaged over the prompt's tokens, concatenated (the base alone)."""
    caught: list[torch.Tensor] = []
    hooks = [model.get_submodule(name).register_forward_pre_hook(lambda _m, args: caught.append(args[0].float()))
             for name in layers]
    try:
        model.get_decoder()(input_ids=torch.tensor([ids], device=model.device))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat([h[0].mean(0) for h in caught]).cpu()


def choose(x: torch.Tensor, config: dict, weights: dict[str, torch.Tensor], safety_bias: float = 0.0) -> dict:
    """{p_harmful, gates: [g_safety, g_helpfulness], expert} for the features x of one prompt."""
    z = ((x.double() - weights["mean"]) / weights["std"]) @ weights["weight"] + weights["bias"].reshape(-1)[0]
    p = float(torch.sigmoid(z + safety_bias))
    if config["mode"] == "hard":
        gates = [1.0, 0.0] if p >= config["threshold"] else [0.0, 1.0]
    else:
        gates = [p, 1.0 - p]
    return {"p_harmful": p, "gates": gates, "expert": EXPERTS[0] if gates[0] >= gates[1] else EXPERTS[1]}


def ask(server: str, expert: str, ids: list[int], max_tokens: int, api_key: str | None) -> str:
    """One completion from the chosen adapter; the prompt goes as token ids, so the server encodes nothing."""
    body = json.dumps({"model": expert, "prompt": ids, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(server.rstrip("/") + "/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["choices"][0]["text"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Choose the expert per prompt (one JSON line each) and optionally "
                                     "ask an OpenAI-compatible multi-LoRA server for the answer.")
    parser.add_argument("prompts", nargs="*", help="prompts (default: one per stdin line)")
    parser.add_argument("--base", help="the base model: a folder or hub name (default: router.json's `base`, "
                        "relative to this folder)")
    parser.add_argument("--server", help="an OpenAI-compatible /v1 URL serving the adapters as `safety` and "
                        "`helpfulness`")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--safety-bias", type=float, default=0.0, help="the safety dial: > 0 leans safe")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, weights = load_switch()
    base = args.base or str((HERE / config["base"]).resolve() if config.get("base_relative") else config["base"])
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    prompts = args.prompts or [line.strip() for line in sys.stdin if line.strip()]
    for prompt in prompts:
        ids = encode(tokenizer, prompt, config)
        out = {"prompt": prompt, **choose(features(model, ids, config["layers"]), config, weights, args.safety_bias)}
        if args.server:
            out["answer"] = ask(args.server, out["expert"], ids, args.max_tokens, os.environ.get(args.api_key_env))
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
