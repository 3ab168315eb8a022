#!/usr/bin/env bash
# GPU smoke test and GPU timing, for the minutes a lent device is there (nothing is downloaded: the committed toy
# model and the SD-1.5 architecture at random init).
#
#   bash bench/gpu_smoke.sh               # smoke (train, edit, apply, eval on CUDA), then the SD-1.5 timing
#   SMOKE_ONLY=1 bash bench/gpu_smoke.sh  # the smoke part alone (about a minute)
#   BUDGET=420 bash bench/gpu_smoke.sh    # the timing parts stop starting once 420 s (default 570) have passed
#   DEVICE=cpu SMOKE_ONLY=1 bash bench/gpu_smoke.sh   # the same commands on a CPU (a dry run of the script)
#
# 1. Smoke, on the toy model: `fmnpatch train` (default config, float16 weights: the factors train in float32),
#    `fmnpatch edit`, `fmnpatch apply` (render grid) and `fmnpatch eval` (judge) of both patches, every one on CUDA;
#    each step must exit 0 and write its file.
# 2. Timing: bench/train_timing.py --device cuda --full: the default `fmnpatch train` and default `--robust` of one
#    concept on the SD-1.5 architecture at 512 px, end to end, next to FMN's recipe, in float16 (and float32 when
#    there is time left). Results: bench/results/train_timing_gpu_<dtype>.json (command and machine included).
#
# The whole script is sized to stay under 10 minutes on one H200; each part has its own `timeout`. The device has no
# network: carry the CLIP tokenizer folder that bench/edit_timing.py builds here (~/.cache/fmn-patch/open_clip/
# tokenizer, copied into an ignored folder of the repo, e.g. tmp/gpu/open_clip/tokenizer) and any missing wheels
# (diffusers and the versions of transformers, peft, huggingface_hub this checkout uses), and set
# FMN_OPEN_CLIP_CACHE=tmp/gpu/open_clip. Patches, renders and caches go to WORK (a temporary folder); with OUT set,
# the timing results and the eval report are copied there at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d)}
FMN=("$PY" -c "from fmn_patch.cli.app import main; main()")
export FMNPATCH_CACHE="$WORK/cache"

DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-float16}
if [[ $DEVICE == cuda* ]]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv || true
fi
started=$SECONDS

step() {  # name, then the command; prints its wall time
  local name=$1
  shift
  local t0=$SECONDS
  timeout 300 "$@"
  echo "smoke: $name ok in $((SECONDS - t0)) s"
}

step train "${FMN[@]}" train circle --device "$DEVICE" --dtype "$DTYPE" -o "$WORK/circle.safetensors" --json
step train-robust "${FMN[@]}" train bob --robust 3 --device "$DEVICE" --dtype "$DTYPE" -o "$WORK/bob.safetensors" --json
step edit "${FMN[@]}" edit striped --device "$DEVICE" -o "$WORK/striped.safetensors"
step apply "${FMN[@]}" apply toy "$WORK/circle.safetensors" "$WORK/striped.safetensors" --device "$DEVICE" \
  --prompt "a red circle" --grid "$WORK/grid.png" --json
step eval "${FMN[@]}" eval toy "$WORK/circle.safetensors" "$WORK/bob.safetensors" --device "$DEVICE" --seeds 2 \
  -o "$WORK/eval" --json
test -s "$WORK/grid.png" && test -s "$WORK/eval/report.json"
echo "smoke: all ok in $((SECONDS - started)) s; files in $WORK"
if [[ -n "${OUT:-}" ]]; then
  cp "$WORK/eval/report.json" "$OUT/smoke_eval_report.json"
fi

if [[ -n "${SMOKE_ONLY:-}" ]]; then
  exit 0
fi
# SD-1.5 architecture, 512 px: default train and --robust end to end, FMN's recipe beside them.
for dtype in float16 float32; do
  left=$((${BUDGET:-570} - (SECONDS - started)))
  if ((left < 120)); then
    echo "timing: $dtype skipped, ${left} s left"
    continue
  fi
  timeout "$left" "$PY" bench/train_timing.py --device cuda --dtype "$dtype" --full --threads 8 \
    --out "train_timing_gpu_$dtype" --note "GPU smoke ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
done
if [[ -n "${OUT:-}" ]]; then
  cp bench/results/train_timing_gpu_*.json "$OUT/" 2>/dev/null || true
fi
echo "done in $((SECONDS - started)) s"
