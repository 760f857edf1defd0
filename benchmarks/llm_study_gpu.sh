#!/usr/bin/env bash
# The LLM study at paper scale on one lent GPU (issue 14): Qwen/Qwen2.5-1.5B-Instruct in bfloat16 writes stage 1
# itself on the SciFact slice (every test query, every judged document, others up to 400), LoRA tuning with the
# paper's settings (Adafactor 1e-4, global batch 16, at most 30 epochs, patience 5 on val/loss), stage 2 with 5
# samples per task, MiniLM embeds, evaluation with per-query significance.
#
#   benchmarks/llm_study_gpu.sh                         # needs the hub, or MODEL=/local/copy of the model folder
#   benchmarks/llm_study_gpu.sh --dry-run               # parse the composed configuration on any machine
#   MODEL=/models/qwen2.5-1.5b-instruct DATA=/data/scifact benchmarks/llm_study_gpu.sh
#
# Planned from the CPU figures (benchmarks/results/scifact-llm/README.md), not measured here: an H100 writes the
# ~800 stage-1 prompts in minutes; 30 epochs of ~1,300 pairs at batch 16 fit well within an hour.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1} WANDB_MODE=${WANDB_MODE:-offline} TOKENIZERS_PARALLELISM=false
"${PYTHON:-python3}" -m benchmarks.llm_study \
    --profile configs/profiles/llm-qwen2.5-1.5b-gpu.yaml --layer '' \
    --model "${MODEL:-Qwen/Qwen2.5-1.5B-Instruct}" --data "${DATA:-../shared/data/scifact}" --corpus-size 400 \
    --run-dir runs/scifact-llm-gpu --out benchmarks/results/scifact-llm/gpu --label gpu "$@"
