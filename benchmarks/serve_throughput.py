"""Answers per second of `midpo serve` with 1 and 16 concurrent clients, against `midpo generate`'s batched pass, on
the same prompts and model, side by side in one run.

    python benchmarks/serve_throughput.py [--model SPEC] [--prompts 32] [--max-tokens 32] [--batch-size 16]

`midpo generate` is timed in this process (the model loaded once, `generate_answers` with its batch size: the
decoding alone). `midpo serve` runs in a subprocess on the same model and is timed from the client side with the
official `openai` client, after the server is up: 1 client sends the prompts one after another, then 16 clients
send them at once (the server batches them). All three are greedy, so their answers must be equal; the table says
whether they are. Needs the serve and test extras (fastapi, uvicorn, openai). Nothing is asserted; the table is for
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from expert_step import machine  # noqa: E402


def toy_prompts(n: int) -> list[str]:
    from midpo_cli.data.prompt_sets import load_prompt_set

    rows = load_prompt_set("embedded:toy-safety/eval-prompts").prompts
    return [r["prompt"] for r in rows][:n]


def generate_rate(model: str, prompts: list[str], max_tokens: int, batch_size: int) -> tuple[float, list[str]]:
    from midpo_cli.modeling.generation import generate_answers
    from midpo_cli.modeling.policy import open_policy

    policy, template = open_policy(model, template=None, safety_bias=None, gates=None, dtype="fp32",
                                   trust_remote_code=False, device="cpu")
    t0 = time.perf_counter()
    rows = [r for batch in generate_answers(policy.model, policy.tokenizer, prompts, template=template,
                                            max_new_tokens=max_tokens, batch_size=batch_size) for r in batch]
    seconds = time.perf_counter() - t0
    return len(prompts) / seconds, [r["answer"] for r in sorted(rows, key=lambda r: r["index"])]


def start_server(model: str, batch_size: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "midpo_cli.cli", "serve", model, "--port", "0", "--dtype", "fp32",
                             "--device", "cpu", "--batch-size", str(batch_size), "--name", "bench"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "MIDPO_API_KEY": ""})
    for line in proc.stderr:
        if "http://" in line:
            return proc, line[line.index("http://"):].split()[0].rstrip(",")
    raise SystemExit(f"midpo serve exited {proc.wait()}")


def serve_rate(url: str, prompts: list[str], max_tokens: int, clients: int) -> tuple[float, list[str]]:
    import openai

    api = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600)

    def ask(prompt: str) -> str:
        answer = api.chat.completions.create(model="bench", messages=[{"role": "user", "content": prompt}],
                                             max_tokens=max_tokens, temperature=0)
        return answer.choices[0].message.content

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(ask, prompts))
    return len(prompts) / (time.perf_counter() - t0), answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:tiny-llama", help="any model midpo loads")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    prompts = toy_prompts(args.prompts)
    rate, reference = generate_rate(args.model, prompts, args.max_tokens, args.batch_size)
    rows = [(f"`midpo generate` (in process, batch {args.batch_size})", rate, True)]
    proc, url = start_server(args.model, args.batch_size)
    try:
        for clients in (1, 16):
            rate, answers = serve_rate(url, prompts, args.max_tokens, clients)
            rows.append((f"`midpo serve`, {clients} client{'s' if clients > 1 else ''}", rate, answers == reference))
    finally:
        proc.terminate()
        proc.wait()
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end.\n{args.model}, "
          f"{len(prompts)} toy prompts, greedy, max {args.max_tokens} new tokens, fp32 on CPU.\n\n"
          "| how | answers/s | answers equal generate's |\n|---|---|---|")
    for name, rate, same in rows:
        print(f"| {name} | {rate:.2f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
