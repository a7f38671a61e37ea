#!/usr/bin/env bash
# The prepared check of the CUDA build on a GPU machine (no Rust toolchain, no network): run
# from the repository root, it needs only the packed binary (scripts/build-cuda.sh) and the
# committed fixtures. It runs in stages; each appends one JSON object to OUT/results.jsonl and
# keeps its log, so a stage that fails or runs out of time still returns what came before.
#
#   bench/gpu/run.sh [--device cuda|cuda:N|cpu] [--artifact target/cuda/sahara-cuda.xz | --binary PATH]
#                    [--quick] [--no-perf] OUT
#
# Stages:
#   1. smoke (under 90 s): unpack the binary, ldd, `sahara selftest` on one fixture in f32;
#   2. selftest: every fixture in f32 and bf16 (max |Δlogit| ≤ 1e-4 in f32 against
#      transformers, identical greedy tokens, bf16 within 10%, fast = naive engines);
#   3. performance (bench/gpu/perf.py): a random Llama-2-7B-shaped model in bf16, Ships,
#      a Sahara step, generation at batch 64, each against transformers on the same GPU;
#      OUT/summary.json has the figures (bench/gpu/h200.json is one from an H200).
# Try it on the CPU with `--device cpu --quick` (and `--binary target/release/sahara`):
# --quick runs the performance stages on a tiny model, to check the harness.
# The whole check is meant to finish in 5 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/../.."

device=cuda
artifact=target/cuda/sahara-cuda.xz
binary=""
quick=""
perf=1
while [ $# -gt 1 ]; do
    case "$1" in
        --quick) quick=--quick; shift ;;
        --no-perf) perf=0; shift ;;
        --device) device=$2; shift 2 ;;
        --artifact) artifact=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
out=${1:?usage: bench/gpu/run.sh [--device D] [--artifact F.xz | --binary F] OUT}
mkdir -p "$out"
results=$out/results.jsonl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# CUDA's libraries: PyTorch's NVIDIA wheels, the driver's folder, and the stub driver of a
# build machine (where there is no GPU) last.
libs=$(python3 - <<'EOF' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
dirs = []
for r in roots:
    for d in glob.glob(os.path.join(r, "nvidia", "*", "lib")) + glob.glob(os.path.join(r, "nvidia", "*", "*", "lib")):
        if d not in dirs:
            dirs.append(d)
print(":".join(dirs))
EOF
)
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu "$HOME/.cache/sahara/cuda-13.0/toolkit/lib" target/cuda/stub; do
    [ -d "$d" ] && libs=${libs:+$libs:}$(readlink -f "$d")
done
export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# Appends {"stage", "status", "seconds", "checks" (the JSON lines of the log), "tail"}.
record() {
    python3 - "$results" "$@" <<'EOF'
import json, sys
path, stage, status, seconds, log = sys.argv[1:6]
checks, tail = [], []
with open(log, errors="replace") as f:
    for line in f:
        line = line.rstrip("\n")
        try:
            v = json.loads(line)
            if isinstance(v, dict) and "check" in v:
                checks.append(v)
                continue
        except ValueError:
            pass
        tail.append(line)
rec = {"stage": stage, "status": status, "seconds": float(seconds), "checks": checks,
       "failed": [f'{c["fixture"]} {c["dtype"]} {c["check"]}' for c in checks if not c["passed"]],
       "tail": tail[-20:]}
with open(path, "a") as f:
    f.write(json.dumps(rec) + "\n")
print(f'{stage}: {status} in {float(seconds):.1f} s, {len(checks)} checks, {len(rec["failed"])} failed')
EOF
}

# Runs stage $1 with limit $2 seconds: the rest is the command.
stage() {
    local name=$1 limit=$2
    shift 2
    local log=$out/$name.log start end status
    start=$(date +%s.%N)
    timeout "$limit" "$@" >"$log" 2>&1
    case $? in
        0) status=ok ;;
        124) status=timeout ;;
        *) status=failed ;;
    esac
    end=$(date +%s.%N)
    record "$name" "$status" "$(python3 -c "print($end - $start)")" "$log"
    [ "$status" = ok ]
}

# Stage 1's commands, run by `timeout` in a shell of their own.
smoke_script='
binary=$1 device=$2
echo "binary: $binary ($(stat -c %s "$binary") bytes)"
ldd "$binary" || true
if ldd "$binary" | grep -q "not found"; then
    echo "missing libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
    exit 1
fi
"$binary" --version
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>/dev/null || true
"$binary" selftest --device "$device" --only llama_gqa --dtype f32 --json
'

: >"$results"
if [ -z "$binary" ]; then
    binary=$work/sahara
    if ! xz -dc "$artifact" >"$binary"; then
        echo "run.sh: cannot unpack $artifact" >&2
        exit 1
    fi
    chmod +x "$binary"
fi
if stage smoke 90 bash -c "$smoke_script" smoke "$binary" "$device"; then
    if stage selftest 120 "$binary" selftest --device "$device" --dtype f32,bf16 --json && [ "$perf" = 1 ]; then
        timeout 600 "${PYTHON:-python3}" bench/gpu/perf.py --binary "$binary" --device "$device" --out "$out" $quick
    fi
fi
echo "results: $results"
