#!/bin/bash
# Submits examples/slurm/ships.sbatch as an array of TASKS (default 4) and `sahara merge` as
# a job that runs after all of them succeeded; prints both job IDs.
#
#   bash examples/slurm/submit-ships.sh MODEL DATA OUT [TASKS]
#
# Extra sbatch options (a partition, --gres=gpu:1) go in SBATCH_OPTIONS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=${1:?usage: submit-ships.sh MODEL DATA OUT [TASKS]}
data=${2:?data file}
out=${3:?shared output folder}
tasks=${4:-4}
# shellcheck disable=SC2086
array=$(sbatch --parsable ${SBATCH_OPTIONS:-} --array=0-$((tasks - 1)) "$here/ships.sbatch" "$model" "$data" "$out")
# shellcheck disable=SC2086
merge=$(sbatch --parsable ${SBATCH_OPTIONS:-} --job-name=sahara-merge --dependency=afterok:"${array%%;*}" \
    --output="sahara-merge-%j.log" \
    --wrap "\"${SAHARA:-sahara}\" merge \"$out\" --out \"$out.jsonl\" --plot \"$out.png\"")
echo "array job $array, merge job $merge"
