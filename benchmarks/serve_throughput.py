"""Answers per second of `midpo serve` with 1 and 16 concurrent clients, against `midpo generate`'s batched pass, on
the same prompts and model, side by side in one run.

    python benchmarks/serve_throughput.py [--model SPEC] [--prompts 32] [--max-tokens 32] [--batch-size 16]

`midpo generate` is timed in this process (the model loaded once, `generate_answers` with its batch size: the
decoding alone). `midpo serve` runs in a subprocess on the same model and is timed from the client side with the
official `openai` client, after the server is up: 1 client sends the prompts one after another, then 16 clients
send them at once (the server batches them). The three are measured in turn, `--rounds` times, and each keeps its
best round: on a shared machine the slowest rounds measure the neighbours. All three are greedy, so their answers
must be equal; the table says whether they are. Needs the serve and test extras (fastapi, uvicorn, openai). Nothing
is asserted; the table is for benchmarks/RESULTS.md.
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


def generate_rate(policy, template: str, prompts: list[str], max_tokens: int, batch_size: int
                  ) -> tuple[float, list[str]]:
    from midpo_cli.modeling.generation import generate_answers

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
    parser.add_argument("--rounds", type=int, default=2, help="each measured this often, interleaved; the best kept")
    args = parser.parse_args()
    from midpo_cli.modeling.policy import open_policy

    prompts = toy_prompts(args.prompts)
    policy, template = open_policy(args.model, template=None, safety_bias=None, gates=None, dtype="fp32",
                                   trust_remote_code=False, device="cpu")
    names = [f"`midpo generate` (in process, batch {args.batch_size})", "`midpo serve`, 1 client",
             "`midpo serve`, 16 clients"]
    best, same = dict.fromkeys(names, 0.0), dict.fromkeys(names, True)
    proc, url = start_server(args.model, args.batch_size)
    try:
        for _ in range(args.rounds):
            rate, reference = generate_rate(policy, template, prompts, args.max_tokens, args.batch_size)
            best[names[0]] = max(best[names[0]], rate)
            for name, clients in zip(names[1:], (1, 16), strict=True):
                rate, answers = serve_rate(url, prompts, args.max_tokens, clients)
                best[name], same[name] = max(best[name], rate), same[name] and answers == reference
    finally:
        proc.terminate()
        proc.wait()
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end.\n{args.model}, "
          f"{len(prompts)} toy prompts, greedy, max {args.max_tokens} new tokens, fp32 on CPU; best of "
          f"{args.rounds} interleaved rounds.\n\n| how | answers/s | answers equal generate's |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {best[name]:.2f} | {'yes' if same[name] else 'NO'} |")


if __name__ == "__main__":
    main()
