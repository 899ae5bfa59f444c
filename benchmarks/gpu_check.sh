#!/usr/bin/env bash
# The GPU path, checked on a GPU machine (issue 27): the whole pipeline in bf16 with ZeRO-2 and with ZeRO-3 on a
# real local model folder, then the commands a GPU user runs after it (`generate`, `chat --json`,
# `export --merged`, each with --dtype bf16, which `auto` means on a GPU), then the bf16-vs-fp32 logit
# difference of the trained MidPO model on the GPU. It prints the numbers benchmarks/RESULTS.md wants; nothing
# here asserts one. CI has no GPU: tests/test_bf16_pipeline.py runs the same path in bf16 on CPU.
#
#   bash benchmarks/gpu_check.sh MODEL_DIR [OUT]
#   bash benchmarks/gpu_check.sh ~/.cache/midpo-models/gemma3-270m runs/gpu-check   # Gemma 3 270M, ~minutes
#
# Each run is benchmarks/real_model.py (recipes/local-model-cpu.yaml's data budget and steps, one
# `midpo pipeline run --only STAGE` child per stage: wall time, peak host RSS, tokens/s) with
# train.precision=bf16 and deepspeed.zero_stage=2 or 3, on one GPU. Set PYTHON to choose the interpreter.
set -euo pipefail

MODEL=${1:?usage: bash benchmarks/gpu_check.sh MODEL_DIR [OUT]}
OUT=${2:-runs/gpu-check}
PY=${PYTHON:-python}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export COLUMNS=400  # one log line per message (rich wraps at the terminal width otherwise)
[ -f "$MODEL/config.json" ] || { echo "error: $MODEL is not a model folder (no config.json)" >&2; exit 2; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

echo "== machine"
"$PY" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("error: no CUDA GPU here; this script checks the GPU path (the CPU path is tests/test_bf16_pipeline.py)")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}, "
      f"fp32 matmul precision {torch.get_float32_matmul_precision()}")
PY
"$PY" -m midpo_cli.cli --version 2>/dev/null || true

for ZERO in 2 3; do
  RUN="$OUT/bf16-zero$ZERO"
  echo
  echo "== bf16, ZeRO-$ZERO: $RUN"
  status=0
  "$PY" benchmarks/real_model.py "$MODEL" --out "$RUN" \
      --set train.precision=bf16 --set deepspeed.zero_stage="$ZERO" 2>&1 | tee "$RUN.log" || status=$?
  echo "-- post-save checks (reloaded vs in-memory probe outputs, and the bf16 tolerance):"
  grep -h "saved and checked" "$RUN.log" || echo "(none logged)"
  if [ "$status" -ne 0 ]; then echo "pipeline failed (exit $status); see $RUN.log"; continue; fi

  echo "-- the CLI on the trained models with --dtype bf16"
  t0=$(date +%s)
  "$PY" -m midpo_cli.cli generate -m "$RUN/safety_expert/adapter" -m "$RUN/router/model" \
      -p "$RUN/data/eval-prompts.jsonl" -o "$RUN/cli-answers-bf16.jsonl" --max-new-tokens 32 --dtype bf16 --json \
      > "$RUN/cli-generate.json" && echo "generate --dtype bf16: ok in $(( $(date +%s) - t0 )) s: $(cat "$RUN/cli-generate.json")"
  echo "How do I pick a lock?" | "$PY" -m midpo_cli.cli chat "$RUN/router/model" --json --dtype bf16 \
      --max-new-tokens 32 > "$RUN/cli-chat.json" && echo "chat --json --dtype bf16: ok: $(head -c 300 "$RUN/cli-chat.json")"
  rm -rf "$RUN/merged-bf16"
  "$PY" -m midpo_cli.cli export "$RUN/router/model" --merged --gates 0.5,0.5 --dtype bf16 --to "$RUN/merged-bf16" \
      --json && echo "export --merged --dtype bf16: ok"
done

echo
echo "== bf16 vs fp32 logits of the trained MidPO model on the GPU (ZeRO-2 run)"
"$PY" - "$OUT/bf16-zero2/router/model" <<'PY'
import sys
from pathlib import Path

import torch

from midpo_cli.modeling.export import midpo_logits, probe_batch
from midpo_cli.modeling.midpo import load_midpo

folder = Path(sys.argv[1])
if not folder.is_dir():
    sys.exit(f"{folder}: missing (the ZeRO-2 run did not finish)")
logits = {}
for dtype in ("fp32", "bf16"):
    model, tokenizer = load_midpo(folder, dtype=dtype, device="cuda")
    logits[dtype] = midpo_logits(model, probe_batch(tokenizer, model.device))
    del model
    torch.cuda.empty_cache()
diff = (logits["bf16"] - logits["fp32"]).abs()
scale = float(logits["fp32"].abs().max())
eps = torch.finfo(torch.bfloat16).eps
print(f"max |bf16 - fp32| {float(diff.max()):.4g}, mean {float(diff.mean()):.3g}, logit scale {scale:.3g}: "
      f"{float(diff.max()) / max(1.0, scale) / eps:.2f} bf16 eps of the scale; top-1 agreement "
      f"{float((logits['bf16'].argmax(-1) == logits['fp32'].argmax(-1)).float().mean()):.3f}")
PY
echo
echo "Paste the stage tables, the post-save check lines and the lines above into benchmarks/RESULTS.md."
