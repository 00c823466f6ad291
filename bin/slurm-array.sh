#!/usr/bin/env bash
# Run one per-record rsyn stage as a Slurm job array: task K of N processes `--shard K/N`.
#
#   sbatch --array=0-15 bin/slurm-array.sh embed 'data/dedup/*.jsonl.zst' out/embedded \
#          --model EVA02-E-14-plus --pretrained laion2b_s9b_b144k --images data/images
#
# Each task writes OUT_PREFIX-KKKKK-of-NNNNN.jsonl.zst and its .stats.json (written last: the done
# marker; a task that died leaves neither). Later stages read the shards with a quoted glob,
# or merge them:  rsyn cat 'out/embedded-*-of-00016.jsonl.zst' -o embedded.jsonl.zst
#
# For the whole pipeline (every stage chained, retries, resume), use a pipeline file instead:
#   rsyn plan pipeline.toml --emit slurm -o plan/ && plan/submit.sh        (docs/running.md)
#
# Per-record stages shard freely: extract, embed, retrieve, caption, pack (pack writes its own
# shards). Whole-stream stages -- dedup, index, balance -- compare records with each other: run
# them as their passes (rsyn dedup-scan ... dedup-filter, rsyn balance scan ... filter; docs/dedup.md,
# docs/balance_pack.md), which a pipeline file chains for you (docs/running.md), or once over all shards.
#SBATCH --job-name=rsyn
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --output=logs/rsyn-%A_%a.log
set -euo pipefail
stage=$1 inputs=$2 prefix=$3
shift 3
k=${SLURM_ARRAY_TASK_ID:?run me with sbatch --array=0-(N-1)}
n=${SLURM_ARRAY_TASK_COUNT:?}
tag=$(printf '%05d-of-%05d' "$k" "$n")
if [ -f "$prefix-$tag.stats.json" ]; then
  echo "rsyn $stage shard $k/$n already done" >&2
  exit 0
fi
mkdir -p "$(dirname "$prefix")"
rsyn "$stage" "$inputs" --shard "$k/$n" -o "$prefix-$tag.jsonl.zst" \
  --on-error skip --rejects "$prefix-$tag.rejects.jsonl.zst" --stats "$prefix-$tag.stats.json" "$@"
