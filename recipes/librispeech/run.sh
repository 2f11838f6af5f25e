#!/usr/bin/env bash
# asrkd LibriSpeech recipe: the mini recipe's stages on a real corpus, sized for GPUs.
#
#   1 data      download (when online) or use --data-root; `asrkd prepare librispeech`
#   2 cache     the teacher's logits for the training set (top-k, keyed, resumable)
#   3 kd        the streaming student with CTC + λ·KD (torchrun over --gpus GPUs, bf16)
#   4 decode    test-clean / test-other: full and streaming; WER
#
# Usage:
#   recipes/librispeech/run.sh --data-root /data/LibriSpeech [--gpus 8] [--teacher SPEC] [--exp DIR]
#                              [--train-sets "train-clean-100"] [--stage N] [--stop-stage N] [key=value ...]
#   --teacher    any asrkd teacher spec (default torchaudio:WAV2VEC2_ASR_LARGE_LV60K_960H, which must be in
#                the torch hub cache when offline; `asrkd` says which file to put where)
#   key=value    trainer overrides for recipes/librispeech/conf/student_kd.yaml (e.g. train.epochs=30)
# Without --data-root and with internet access, the sets are downloaded from openslr.org into data/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CONF="$ROOT/recipes/librispeech/conf"

stage=0
stop_stage=100
exp=exp/librispeech
data_root=""
gpus=0
teacher="torchaudio:WAV2VEC2_ASR_LARGE_LV60K_960H"
train_sets="train-clean-100"
eval_sets="dev-clean test-clean test-other"
topk=0
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage="$2"; shift ;;
    --stop-stage) stop_stage="$2"; shift ;;
    --exp) exp="$2"; shift ;;
    --data-root) data_root="$2"; shift ;;
    --gpus) gpus="$2"; shift ;;
    --teacher) teacher="$2"; shift ;;
    --train-sets) train_sets="$2"; shift ;;
    --eval-sets) eval_sets="$2"; shift ;;
    --topk) topk="$2"; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *=*) overrides+=("$1") ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$exp"
EXP="$(cd "$exp" && pwd)"
bash scripts/setup.sh
ASRKD="$ROOT/.venv/bin/asrkd"
PY="$ROOT/.venv/bin/python"
dev_set="${eval_sets%% *}"

in_range() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }

if in_range 1; then
  echo "== stage 1 data"
  if [ -z "$data_root" ]; then
    data_root="$ROOT/data/LibriSpeech"
    for s in $train_sets $eval_sets; do
      [ -d "$data_root/$s" ] && continue
      mkdir -p "$ROOT/data"
      echo "downloading $s from openslr.org (needs internet; use --data-root for a local copy)"
      curl -fL --retry 3 "https://www.openslr.org/resources/12/$s.tar.gz" | tar -xz -C "$ROOT/data"
    done
  fi
  mkdir -p "$EXP/data"
  for s in $train_sets $eval_sets; do
    [ -d "$data_root/$s" ] || { echo "missing $data_root/$s" >&2; exit 1; }
    "$ASRKD" prepare librispeech "$data_root/$s" "$EXP/data/$s.jsonl" --report "$EXP/data/$s.rejects.jsonl"
  done
  # one training manifest over the chosen sets
  cat $(for s in $train_sets; do echo "$EXP/data/$s.jsonl"; done) >"$EXP/data/train.jsonl"
fi

if in_range 2; then
  echo "== stage 2 cache ($teacher)"
  "$ASRKD" cache-teacher --teacher "$teacher" --manifest "$EXP/data/train.jsonl" --out "$EXP/cache/train" \
    --topk "$topk"
fi

if in_range 3; then
  echo "== stage 3 student_kd"
  # the student's characters come from the training texts and travel inside its checkpoints
  args=(--config "$CONF/student_kd.yaml" --resume auto exp_dir="$EXP/student_kd"
        data.train="$EXP/data/train.jsonl" data.dev="$EXP/data/$dev_set.jsonl"
        teacher.cache="$EXP/cache/train" teacher.spec="$teacher")
  if [ "$gpus" -gt 0 ]; then
    # one process per GPU (NCCL); rank 0 logs and writes checkpoints
    "$ROOT/.venv/bin/torchrun" --standalone --nproc_per_node "$gpus" -m asrkd.cli train "${args[@]}" \
      train.device=cuda train.amp=bf16 "${overrides[@]}"
  else
    "$ASRKD" train "${args[@]}" "${overrides[@]}"
  fi
fi

if in_range 4; then
  echo "== stage 4 decode"
  device=cpu
  [ "$gpus" -gt 0 ] && device=cuda
  for s in $eval_sets; do
    for mode in full streaming; do
      out="$EXP/decode/${s}_$mode"
      mkdir -p "$out"
      extra=()
      [ "$mode" = streaming ] && extra=(--streaming)
      "$ASRKD" decode --checkpoint "$EXP/student_kd/best.pt" --manifest "$EXP/data/$s.jsonl" --out "$out/hyp.txt" \
        --json "$out/stats.json" --device "$device" "${extra[@]}"
      "$ASRKD" wer --ref "$EXP/data/$s.jsonl" --hyp "$out/hyp.txt" --json "$out/wer.json" --normalize
    done
  done
fi
