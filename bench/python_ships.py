#!/usr/bin/env python3
"""`m.ships` from Python against `sahara ships` on the same model and queries.

    python3 bench/python_ships.py MODEL [--sahara target/release/sahara] [--rounds 5]

Alternates the two for ROUNDS rounds (this machine's timings drift; alternating spreads the
drift over both), after one untimed warm-up of each, and prints each side's median wall time
of the Ships sweep and their ratio. The CLI's time is the whole process (load included) minus
its own load time, measured by a run over one query with one head, so both sides time the
sweep of a loaded model. Needs the `sahara` Python package (pip install ./crates/sahara-py)
and numpy. Also checks that both give the same scores (to 1e-12).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import sahara

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--sahara", default=str(HERE.parent / "target" / "release" / "sahara"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--data", default=str(HERE / "queries.txt"))
    a = p.parse_args()
    queries = sahara.load_queries(a.data)
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s.jsonl"

        def cli(extra: list[str], path: Path) -> float:
            path.unlink(missing_ok=True)
            Path(str(path) + ".run.json").unlink(missing_ok=True)
            t = time.perf_counter()
            subprocess.run([a.sahara, "ships", "--model", a.model, "--data", a.data, "--template", "chat",
                            "--quiet", "--out", str(path), *extra], check=True, capture_output=True)
            return time.perf_counter() - t

        def load_only() -> float:
            one = Path(d) / "one.txt"
            one.write_text(queries[0] + "\n")
            path = Path(d) / "one.jsonl"
            path.unlink(missing_ok=True)
            Path(str(path) + ".run.json").unlink(missing_ok=True)
            t = time.perf_counter()
            subprocess.run([a.sahara, "ships", "--model", a.model, "--data", str(one), "--template", "chat",
                            "--layers", "0", "--heads", "0", "--quiet", "--out", str(path)], check=True, capture_output=True)
            return time.perf_counter() - t

        m = sahara.Model(a.model, dtype="f32")
        prompts = m.encode(queries, template="chat")

        def py() -> float:
            t = time.perf_counter()
            m.ships(prompts)
            return time.perf_counter() - t

        py(), cli([], out)
        cli_times, py_times, load_times = [], [], []
        for _ in range(a.rounds):
            cli_times.append(cli([], out))
            load_times.append(load_only())
            py_times.append(py())
        want = np.array([json.loads(l)["scores"] for l in out.read_text().splitlines()], dtype=np.float64)
        got = m.ships(prompts).scores
        np.testing.assert_allclose(got, want, rtol=1e-12)
    c = statistics.median(cli_times) - statistics.median(load_times)
    pmed = statistics.median(py_times)
    print(json.dumps({
        "model": a.model, "queries": len(queries), "heads": m.layers * m.heads, "rounds": a.rounds,
        "cli_seconds_median": statistics.median(cli_times), "cli_load_seconds_median": statistics.median(load_times),
        "cli_sweep_seconds": c, "python_sweep_seconds_median": pmed, "python_over_cli": pmed / c,
        "scores_equal_to_1e-12": True,
    }))


if __name__ == "__main__":
    main()
