#!/usr/bin/env bash
# GPU readiness check, one GPU, sized for under 8 minutes (not yet timed on a GPU): the small recipe (configs/fit/small-laion.yaml,
# clipprobe-small at 224 px, bf16-mixed) on a synthetic corpus, 200 steps with compile off and on,
# each with the probe callback (tor and ior on ComCO, zero-shot on comco-objects) at steps 0, 100 and
# 200; then `clipprobe eval` of the last checkpoint export; then scripts/bench_train.py on the GPU
# (bare, default, probe; one round). Every number goes to one JSON file for the README.
#
#   bash scripts/gpu_check.sh [OUT_DIR]         # default /tmp/clipprobe-gpu-check; writes OUT_DIR/gpu_check.json
#
# Needs clipprobe's Python packages importable by $PYTHON (default: .venv/bin/python, else python3)
# and a CUDA GPU; nothing is downloaded. Steps are timed by the wall clock and by StepTimer (perf.json).
# A smoke run of the script itself on a CPU (minutes; what the tests do):
#   ACCELERATOR=cpu PRECISION=32-true STEPS=4 BATCH=8 WORKERS=1 SAMPLES=128 COMPILED=false BENCH_STEPS=2,4 \
#     bash scripts/gpu_check.sh /tmp/gpu-check-smoke
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-/tmp/clipprobe-gpu-check}")
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
STEPS=${STEPS:-200}
BATCH=${BATCH:-256}
WORKERS=${WORKERS:-8}
SAMPLES=${SAMPLES:-8192}
ACCELERATOR=${ACCELERATOR:-gpu}
PRECISION=${PRECISION:-bf16-mixed}
COMPILED=${COMPILED:-true}
BENCH_STEPS=${BENCH_STEPS:-20,120}
EVERY=$(( STEPS / 2 > 0 ? STEPS / 2 : 1 ))
DEVICE=$([ "$ACCELERATOR" = gpu ] && echo cuda || echo cpu)
mkdir -p "$OUT"
export CLIPPROBE_CACHE="$OUT/cache/probesets" WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
if [ "$ACCELERATOR" = gpu ]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU visible to torch')"
  "$PYTHON" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
fi

stamp() { date +%s.%N; }
t0=$(stamp)
# 8,192 samples at 224 px (200 steps of 256 = 6 passes: the stream cycles, and throughput is what is measured)
"$PYTHON" -m clipprobe.cli data corpus --out "$OUT/corpus" --num_samples "$SAMPLES" --image_size 224 --shard_size 512 \
  --order size_first --progress false --overwrite true
t_corpus=$(stamp)

fit() {  # fit NAME COMPILE
  rm -rf "$OUT/$1"
  local start=$(stamp)
  "$PYTHON" -m clipprobe.cli fit --config configs/fit/small-laion.yaml \
    --data.train_data "$OUT/corpus" --data.num_samples "$SAMPLES" --data.batch_size "$BATCH" \
    --data.num_workers "$WORKERS" --model.warmup_steps 20 --model.compile "$2" \
    --trainer.default_root_dir "$OUT/$1" --trainer.max_steps "$STEPS" --trainer.log_every_n_steps 10 \
    --trainer.accelerator "$ACCELERATOR" --trainer.precision "$PRECISION" \
    --trainer.val_check_interval null --trainer.enable_progress_bar false \
    --trainer.callbacks.init_args.every_n_steps "$EVERY" --trainer.callbacks.init_args.probe_sets '[comco]' \
    --trainer.callbacks.init_args.benchmarks '[comco-objects]' \
    --checkpoint.every_n_train_steps "$EVERY" --checkpoint.save_top_k 1 2>&1 | tail -n 4
  echo "$(stamp) $start" > "$OUT/$1.wall"
}
fit eager false
[ "$COMPILED" = true ] && fit compiled true
t_fit=$(stamp)

export_dir=$(ls -d "$OUT"/eager/checkpoints/step=*/ | sort | tail -n 1)
"$PYTHON" -m clipprobe.cli eval --pretrained "$export_dir" --probes tor,ior --probe_set comco \
  --benchmarks '[comco-objects]' --out "$OUT/eval" --device "$DEVICE" 2>&1 | tail -n 3
t_eval=$(stamp)

"$PYTHON" scripts/bench_train.py --out "$OUT/bench" --configs bare,default,probe --accelerator "$ACCELERATOR" \
  --precision "$PRECISION" --arch clipprobe-small --image-size 224 --batch-size "$BATCH" --workers "$WORKERS" \
  --samples "$SAMPLES" --short "${BENCH_STEPS%,*}" --long "${BENCH_STEPS#*,}" --rounds 1 --threads 4 \
  --json "$OUT/bench.json" 2>&1 | tail -n 8
t_end=$(stamp)

"$PYTHON" - "$OUT" "$t0" "$t_corpus" "$t_fit" "$t_eval" "$t_end" <<'EOF'
import json, sys
from pathlib import Path

import torch

out, t0, t_corpus, t_fit, t_eval, t_end = Path(sys.argv[1]), *map(float, sys.argv[2:])
result = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__,
          "minutes": {"corpus": (t_corpus - t0) / 60, "fits": (t_fit - t_corpus) / 60, "eval": (t_eval - t_fit) / 60,
                      "bench": (t_end - t_eval) / 60, "total": (t_end - t0) / 60}}
for name in [n for n in ("eager", "compiled") if (out / f"{n}.wall").is_file()]:
    end, start = map(float, (out / f"{name}.wall").read_text().split())
    perf = json.loads((out / name / "perf.json").read_text())
    probes = [json.loads(line) for line in (out / name / "probes.jsonl").read_text().splitlines() if line.strip()]
    result[name] = {"wall_s": end - start, **perf, "probe_evaluations": len(probes)}
result["eval_records"] = sum(1 for p in (out / "eval").rglob("*.jsonl"))
result["bench"] = json.loads((out / "bench.json").read_text())["summary"]
(out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({k: v for k, v in result.items() if k != "bench"}, indent=2))
EOF
echo "gpu_check: wrote $OUT/gpu_check.json"
