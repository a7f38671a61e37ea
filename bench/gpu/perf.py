#!/usr/bin/env python3
"""The performance stages of bench/gpu/run.sh: sahara against the straightforward
transformers computation on the same GPU, in the same run.

    python3 bench/gpu/perf.py --binary SAHARA --out OUT [--device cuda] [--quick]

Stages (each appends one JSON object to OUT/results.jsonl: stage, status, seconds, result =
the last JSON line the command printed, tail = the rest of its log):

  model          a random Llama-2-7B-shaped model (32 layers x 32 heads, hidden 4096, MLP
                 11008, vocabulary 32000) in bfloat16, created on the GPU by transformers
                 (bench/make_model.py --preset llama7b) and saved as safetensors;
  ships_sahara   `sahara bench-ships`: Ships of all 1024 heads for the first 5 queries of
                 bench/queries.txt, timed after the model is loaded, one warm-up query;
  ships_hf       bench/ships_hf.py: the paper's computation done straightforwardly (a hook
                 scaling one head's query, one full forward per head at batch 1), on the heads
                 of the first 2 layers only, extrapolated to every layer (said so in the
                 record: every head's forward costs the same);
  sahara_step    `sahara bench-sahara-step`: one Sahara step over every head on 100 queries;
  generate_sahara, generate_hf_eager, generate_hf_sdpa
                 64 prompts x 128 new tokens at batch 64, greedy: `sahara bench-generate`
                 against `model.generate` with eager and with SDPA attention (the faster one
                 is the baseline);
  quantized      the same Ships sweep with the projections quantized to Q8_0 by candle's own
                 quantizer (float32 activations, as its quantized product takes them), with
                 the first query's max |Δlogit| and top-10 heads against the dense model.

Then OUT/summary.json holds ships_seconds_per_query, ships_ratio, sahara_step_seconds,
generate_tokens_per_second, generate_ratio, ships_tflops (the needed work as bench/flops.py
counts it, over sahara's time), peak_gpu_memory_gb (the most nvidia-smi saw used during
sahara's stages), the GPU's name and the date. bench/gpu/h200.json is that file from a real
run on an H200.

--quick runs every stage on a tiny model in float32 (on the CPU with --device cpu), with
fewer queries and tokens: it checks the harness, not the speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from harness import last_json_line as last_json  # noqa: E402  (the one reader of result lines)


class GpuMemory:
    """Polls nvidia-smi for the memory used on the GPU while a stage runs; the peak in GiB."""

    def __init__(self) -> None:
        self.peak_mib = None
        self._stop = threading.Event()
        self._thread = None

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True, text=True, timeout=5,
                ).stdout
                used = max(float(x) for x in out.split())
                self.peak_mib = used if self.peak_mib is None else max(self.peak_mib, used)
            except Exception:
                return
            self._stop.wait(0.2)

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()

    def gb(self):
        return None if self.peak_mib is None else self.peak_mib / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--work", help="folder for the model (default: a temporary one, removed)")
    a = p.parse_args()

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="sahara-perf-"))
    work.mkdir(parents=True, exist_ok=True)
    gpu = a.device.startswith("cuda")
    py_device = "cuda" if gpu else "cpu"
    if a.quick:
        shape = ["--tiny", "--dtype", "float32"]
        dtype_sahara, dtype_py = "f32", "float32"
        n_ships, ships_layers, n_step, n_gen, new_tokens, batch = 2, 1, 4, 8, 8, 8
    else:
        shape = ["--preset", "llama7b", "--dtype", "bfloat16"]
        dtype_sahara, dtype_py = "bf16", "bfloat16"
        n_ships, ships_layers, n_step, n_gen, new_tokens, batch = 5, 2, 100, 64, 128, 64
    model = work / "model"
    queries = ROOT / "bench" / "queries.txt"
    q5 = work / "queries5.txt"
    q5.write_text("".join(queries.read_text(encoding="utf-8").splitlines(keepends=True)[:n_ships]), encoding="utf-8")
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(ROOT / "bench") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    stages: dict[str, dict] = {}

    def stage(name: str, limit: float, cmd: list[str], measure_gpu: bool = False) -> dict | None:
        start = time.perf_counter()
        mem = GpuMemory()
        status = "ok"
        with mem if measure_gpu else _null():
            try:
                r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=limit, env=env, cwd=ROOT)
                text = r.stdout + r.stderr
                if r.returncode != 0:
                    status = "failed"
            except subprocess.TimeoutExpired as e:
                text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
                status = "timeout"
        seconds = time.perf_counter() - start
        (out / f"{name}.log").write_text(text)
        rec = {"stage": name, "status": status, "seconds": seconds, "checks": [], "failed": [],
               "result": last_json(text) if status == "ok" else None,
               "peak_gpu_memory_gb": mem.gb() if measure_gpu else None,
               "tail": [line for line in text.splitlines() if not line.startswith("{")][-20:]}
        with open(results, "a") as f:
            f.write(json.dumps(rec) + "\n")
        stages[name] = rec
        print(f"{name}: {status} in {seconds:.1f} s", flush=True)
        return rec["result"]

    common = ["--model", model, "--device", a.device, "--dtype", dtype_sahara]
    py_common = ["--model", model, "--device", py_device, "--dtype", dtype_py, "--threads", str(os.cpu_count() or 1)]
    made = stage("model", 150, [a.python, ROOT / "bench/make_model.py", "--out", model, "--device", py_device, *shape])
    if made is None:
        sys.exit("the model stage failed: nothing to measure")
    ships = stage("ships_sahara", 90, [a.binary, "bench-ships", *common, "--data", q5, "--n", n_ships], True)
    ships_hf = stage("ships_hf", 90, [a.python, ROOT / "bench/ships_hf.py", *py_common, "--data", q5,
                                      "--n", n_ships, "--layers", ships_layers])
    step = stage("sahara_step", 120, [a.binary, "bench-sahara-step", *common, "--data", queries, "--n", n_step], True)
    gen = stage("generate_sahara", 90, [a.binary, "bench-generate", *common, "--data", queries, "--n", n_gen,
                                        "--new-tokens", new_tokens, "--batch", batch], True)
    gen_hf = {}
    for attn in ("eager", "sdpa"):
        gen_hf[attn] = stage(f"generate_hf_{attn}", 90, [a.python, ROOT / "bench/generate_hf.py", *py_common,
                                                         "--attn", attn, "--data", queries, "--n", n_gen,
                                                         "--new-tokens", new_tokens, "--batch", batch])
    quant = stage("quantized", 120, [a.binary, "bench-ships", "--model", model, "--device", a.device, "--dtype", "f32", "--data", q5, "--n", n_ships,
                                     "--quantize", "q8_0"], True)

    flops = None
    if ships:
        r = subprocess.run([a.python, ROOT / "bench/flops.py", "ships", "--model", model, "--data", q5],
                           capture_output=True, text=True, env=env, cwd=ROOT)
        flops = last_json(r.stdout)

    def get(d, k):
        return None if not d else d.get(k)

    ships_s = get(ships, "seconds_per_query")
    hf_s = get(ships_hf, "seconds_per_query_all_heads")
    gen_tps = get(gen, "tokens_per_second")
    hf_tps = [get(gen_hf[k], "tokens_per_second") for k in gen_hf]
    hf_best = max((t for t in hf_tps if t), default=None)
    peaks = [stages[s]["peak_gpu_memory_gb"] for s in ("ships_sahara", "sahara_step", "generate_sahara")
             if s in stages and stages[s]["peak_gpu_memory_gb"] is not None]
    gpu_name = None
    if shutil.which("nvidia-smi"):
        gpu_name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                  capture_output=True, text=True).stdout.strip().splitlines()[0:1]
        gpu_name = gpu_name[0] if gpu_name else None
    summary = {
        "date": datetime.date.today().isoformat(),
        "gpu": gpu_name,
        "device": a.device,
        "quick": a.quick,
        "model": {k: made.get(k) for k in ("layers", "heads", "hidden", "intermediate", "vocab", "params", "dtype")},
        "ships_seconds_per_query": ships_s,
        "ships_hf_seconds_per_query": hf_s,
        "ships_hf_extrapolated_from_layers": get(ships_hf, "scored_layers"),
        "ships_ratio": hf_s / ships_s if hf_s and ships_s else None,
        "ships_tflops": (flops["flops"] / len(get(ships, "prompt_tokens") or [1]) / ships_s / 1e12
                         if flops and ships_s else None),
        "ships_host_reads": get(ships, "host_reads"),
        "sahara_step_seconds": get(step, "seconds"),
        "sahara_step_queries": get(step, "queries"),
        "sahara_step_candidates": get(step, "candidates"),
        "generate_tokens_per_second": gen_tps,
        "generate_hf_tokens_per_second": dict(zip(gen_hf, hf_tps)),
        "generate_ratio": gen_tps / hf_best if gen_tps and hf_best else None,
        "generate_batch": batch,
        "generate_new_tokens": new_tokens,
        "peak_gpu_memory_gb": max(peaks) if peaks else None,
        "quantized_ships_seconds_per_query": get(quant, "seconds_per_query"),
        "quantized": get(quant, "quantized"),
        "stages": {k: v["status"] for k, v in stages.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
