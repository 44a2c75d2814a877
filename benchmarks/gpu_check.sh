#!/usr/bin/env bash
# Every GPU number of docs/benchmarks.md in one command, within 8 minutes on one H200: the training step (bf16,
# base-125m, batch 8 × 4 segments × 512, all kinds and the compiled GPT anchor), its profile, sample length scaling
# to 128k tokens, generation (with and without cuDNN's attention), and the step with train.compile=true
# (segment-local and lm2), each writing its JSON (and log) into OUT_DIR.
#
#     source .device-kit/setup.sh && benchmarks/gpu_check.sh OUT_DIR      # on the lent GPU (docs/benchmarks.md)
#     benchmarks/gpu_check.sh OUT_DIR --cpu-smoke                          # the same steps at tiny sizes on CPU
#
# It installs nothing: the device kit (../shared/device/setup.sh) must have run. Each step has its own time limit,
# so one slow part cannot eat the others' time; a step that runs out is reported and the next one starts.
# The exit status is the number of steps that failed or ran out of time.
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--cpu-smoke]}
mode=${2:-gpu}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$out" || exit 1
if [ "$mode" = --cpu-smoke ]; then
  device=(--device cpu)
  tiny=(model=tiny model.n_layers=2 model.d_model=32 model.n_heads=4 model.n_kv_heads=2 model.d_ff=64
        model.segment_len=16 model.memory.slots=4)
  step=("${tiny[@]}" data.segments=2 train.micro_batch=2)
  quick=(--rounds 1 --steps 1 --warmup 1)
  scale=(--min-len 32 --max-len 64 --batch 2 --steps 1 --warmup 1)
  scale_lm2=("${scale[@]}") scale_rest=("${scale[@]}")
  generation=(--min-context 32 --max-context 64 --new-tokens 4)
  profile=(--steps 1 --warmup 1)
  limit=(600 300 300 300 300 300 900)  # seconds per step: the CPU compiles slowly, and it is shared
elif [ "$mode" = gpu ]; then
  python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || { echo "gpu_check: no CUDA device (--cpu-smoke runs on CPU)"; exit 1; }
  device=(--device cuda --peak-tflops 989)
  step=() tiny=()
  quick=(--rounds 3 --steps 5 --warmup 3)
  scale_lm2=(--min-len 4096 --max-len 131072 --batch 8 --steps 1 --warmup 1 --kinds lm2)
  scale_rest=(--min-len 4096 --max-len 32768 --batch 8 --steps 1 --warmup 1 --kinds none-local none-full rmt)
  generation=(--max-context 8192 --new-tokens 32)
  profile=(--steps 1 --warmup 1)
  # Sized from the first run on an H200 (2026-11-30, docs/benchmarks.md): step_time took 70 s; lm2 alone took
  # 23 s to profile; lm2's length scaling reached 64k in 100 s (128k needs ~75 s more); generation ran at
  # 15-23 tokens/s (cuDNN's attention plans each new key length: the second generation step tests that); the
  # compiled step gave no output in 130 s, so it runs last, on two kinds. 500 s in all.
  limit=(90 60 160 50 40 40 60)
else
  echo "gpu_check: unknown option '$mode' (only --cpu-smoke)"; exit 1
fi

failed=0
run() {  # name, seconds, script and arguments: a time-boxed step with its log in OUT_DIR
  local name=$1 seconds=$2 start=$SECONDS; shift 2
  timeout -k 10 "$seconds" python3 "$@" > "$out/$name.log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then echo "gpu_check: $name done in $((SECONDS - start)) s";
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "gpu_check: $name ran out of its $seconds s (log: $out/$name.log)"; failed=$((failed + 1));
  else echo "gpu_check: $name failed with exit code $rc (log: $out/$name.log)"; tail -5 "$out/$name.log"; failed=$((failed + 1)); fi
}

run step_time "${limit[0]}" benchmarks/step_time.py "${device[@]}" "${quick[@]}" --json "$out/step_time.json" "${step[@]}"
run profile_step "${limit[1]}" benchmarks/profile_step.py "${device[@]}" "${profile[@]}" --json "$out/profile_step.json" "${step[@]}"
run length_scaling_lm2 "${limit[2]}" benchmarks/length_scaling.py "${device[@]}" "${scale_lm2[@]}" \
  --json "$out/length_scaling_lm2.json" "${tiny[@]}"
run length_scaling "${limit[3]}" benchmarks/length_scaling.py "${device[@]}" "${scale_rest[@]}" \
  --json "$out/length_scaling.json" "${tiny[@]}"
run generation "${limit[4]}" benchmarks/generation.py "${device[@]}" "${generation[@]}" --json "$out/generation.json" "${tiny[@]}"
run generation_no_cudnn "${limit[5]}" benchmarks/generation.py "${device[@]}" "${generation[@]}" --no-cudnn-sdpa \
  --json "$out/generation_no_cudnn.json" "${tiny[@]}"
run step_time_compiled "${limit[6]}" benchmarks/step_time.py "${device[@]}" "${quick[@]}" --compile --kinds none-local lm2 \
  --json "$out/step_time_compiled.json" "${step[@]}"
echo "gpu_check: $failed of 7 steps failed or ran out of time; JSON and logs in $out"
exit $failed
