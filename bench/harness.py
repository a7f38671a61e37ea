#!/usr/bin/env python3
"""Helper of bench/run.sh: runs one timed command, and prints the comparison table.

    python3 bench/harness.py timed --record FILE [--stdout FILE] -- CMD ARGS...
        runs CMD (under `/usr/bin/time -v` when present), measures its wall time with
        time.perf_counter, and writes FILE = {"wall_seconds", "max_rss_kib", "rc", "cmd",
        "result": the last JSON object line CMD printed on stdout, or null}. CMD's stderr goes
        to FILE with .stderr appended. Exits with CMD's status.

    python3 bench/harness.py table DIR
        reads DIR/<name>.<python|sahara>.json and prints the table (see bench/README.md).

    python3 bench/harness.py crosscheck-ships PY_OUT.json SAHARA_OUT.jsonl
        best-effort comparison of the Ships scores of both sides.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIME_BIN = "/usr/bin/time"


# --------------------------------------------------------------------------- timed
def last_json_line(text: str):
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def parse_time_v(path: str):
    rss = wall = None
    try:
        for line in Path(path).read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("Maximum resident set size (kbytes):"):
                rss = int(line.rsplit(":", 1)[1])
            elif line.startswith("Elapsed (wall clock) time"):
                v = line.rsplit(": ", 1)[1]
                parts = [float(x) for x in v.split(":")]
                wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    except OSError:
        pass
    return rss, wall


def cmd_timed(argv: list[str]) -> int:
    record = stdout_path = None
    while argv and argv[0] != "--":
        opt = argv.pop(0)
        if opt == "--record":
            record = argv.pop(0)
        elif opt == "--stdout":
            stdout_path = argv.pop(0)
        else:
            sys.exit(f"harness timed: unknown option {opt}")
    if not argv or argv[0] != "--" or len(argv) < 2 or not record:
        sys.exit("usage: harness.py timed --record FILE [--stdout FILE] -- CMD ARGS...")
    cmd = argv[1:]
    use_time = os.access(TIME_BIN, os.X_OK)
    tv = tempfile.NamedTemporaryFile(prefix="bench-time-", suffix=".txt", delete=False)
    tv.close()
    full = [TIME_BIN, "-v", "-o", tv.name, *cmd] if use_time else cmd
    with open(record + ".stderr", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.run(full, stdout=subprocess.PIPE, stderr=err)
        wall = time.perf_counter() - t0
    out = proc.stdout.decode(errors="replace")
    if stdout_path:
        Path(stdout_path).write_text(out)
    if use_time:
        rss_kib, _ = parse_time_v(tv.name)
        rss_from = "/usr/bin/time -v"
    else:
        # One child per harness process: the children's maximum is this command's peak.
        rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rss_from = "getrusage(RUSAGE_CHILDREN)"
    os.unlink(tv.name)
    rec = {
        "cmd": cmd,
        "rc": proc.returncode,
        "wall_seconds": wall,
        "max_rss_kib": rss_kib,
        "rss_from": rss_from,
        "result": last_json_line(out),
    }
    Path(record).write_text(json.dumps(rec, indent=1) + "\n")
    if proc.returncode != 0:
        tail = Path(record + ".stderr").read_text(errors="replace").splitlines()[-15:]
        sys.stderr.write(f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail) + "\n")
    return proc.returncode


# --------------------------------------------------------------------------- table
def load(dir_: Path, name: str, side: str):
    p = dir_ / f"{name}.{side}.json"
    if not p.exists():
        return None
    rec = json.loads(p.read_text())
    return rec if rec.get("rc") == 0 else None


def res(rec, key):
    if rec is None or not isinstance(rec.get("result"), dict):
        return None
    v = rec["result"].get(key)
    return float(v) if isinstance(v, (int, float)) else None


def wall(rec):
    return None if rec is None else rec.get("wall_seconds")


def rss_mib(rec):
    if rec is None or rec.get("max_rss_kib") is None:
        return None
    return rec["max_rss_kib"] / 1024.0


def tokens_seconds(rec, tokens):
    tps = res(rec, "tokens_per_second")
    return None if not tps else tokens / tps


# name -> (label, how the compared "seconds" of each side are read, note)
def metric(name: str, side: str, rec):
    if rec is None:
        return None
    if name == "forward":
        return res(rec, "seconds_per_forward")
    if name in ("ships", "attribute"):
        # python: its own timed section (after import, model load and warm-up);
        # sahara: the whole process (load included).
        return res(rec, "seconds") if side == "python" else wall(rec)
    if name.startswith("generate"):
        if side == "python":
            gen = res(rec, "generated_tokens")
            return tokens_seconds(rec, gen) if gen else None
        # sahara bench-generate prints only tokens/s: seconds = N * new tokens / (tokens/s)
        n, new = int(os.environ.get("GEN_N", "20")), int(os.environ.get("GEN_NEW_TOKENS", "64"))
        return tokens_seconds(rec, n * new)
    return None


LABELS = {
    "forward": "forward B=8 T=64 (s/forward)",
    "ships": "ships 5 queries (s)",
    "attribute": "attribute 1 step, 20 q (s)",
    "generate_b1": "generate B=1 20x64 (s)",
    "generate_b20": "generate B=20 20x64 (s)",
}


def fmt(x, spec="{:.3f}"):
    return "-" if x is None else spec.format(x)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def cmd_table(dir_: str, names: list[str]) -> int:
    d = Path(dir_)
    names = names or list(LABELS)
    rows = []
    for name in names:
        py, sa = load(d, name, "python"), load(d, name, "sahara")
        if not (d / f"{name}.python.json").exists() and not (d / f"{name}.sahara.json").exists():
            continue
        p, s = metric(name, "python", py), metric(name, "sahara", sa)
        rows.append(
            [
                LABELS.get(name, name),
                fmt(p),
                fmt(s),
                fmt(ratio(p, s), "{:.2f}x"),
                fmt(wall(py), "{:.2f}"),
                fmt(wall(sa), "{:.2f}"),
                fmt(ratio(wall(py), wall(sa)), "{:.2f}x"),
                fmt(rss_mib(py), "{:.0f}"),
                fmt(rss_mib(sa), "{:.0f}"),
            ]
        )
    head = ["name", "python s", "sahara s", "ratio", "py wall", "sahara wall", "wall ratio", "py RSS MiB", "sahara RSS MiB"]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print("ratio = python s / sahara s (> 1: sahara faster); wall = whole process incl. imports and model load")
    fl = d / "ships.flops.json"
    if "ships" in names and fl.exists():
        f = json.loads(fl.read_text())
        rates = f.get("gflops_per_second", {})
        print(
            "ships FLOP rate (needed work {:.3g} GFLOP; straightforward recompute {:.3g} GFLOP): sahara {} GFLOP/s, python {} GFLOP/s".format(
                f["flops"] / 1e9,
                f["naive_flops"] / 1e9,
                fmt(rates.get("sahara"), "{:.2f}"),
                fmt(rates.get("python"), "{:.2f}"),
            )
        )
    for name in names:
        for side in ("python", "sahara"):
            p = d / f"{name}.{side}.json"
            if p.exists() and json.loads(p.read_text()).get("rc") != 0:
                print(f"{name} ({side}) FAILED: see {p}.stderr")
    return 0


# --------------------------------------------------------------------------- cross-check
def _score_of(obj: dict):
    for k in ("score", "ships", "kl", "mean", "value"):
        if isinstance(obj.get(k), (int, float)):
            return float(obj[k])
    return None


def sahara_ships_scores(path: str):
    """Best effort: returns {"per_query": [[[..]]]} or {"mean": {(l, h): s}} or None."""
    recs = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                return None
    per_query = [r["scores"] for r in recs if isinstance(r, dict) and isinstance(r.get("scores"), list)]
    if per_query and all(isinstance(x, list) and x and isinstance(x[0], list) for x in per_query):
        return {"per_query": per_query}
    mean = {}
    for r in recs:
        if isinstance(r, dict) and "layer" in r and "head" in r and _score_of(r) is not None:
            mean[(int(r["layer"]), int(r["head"]))] = _score_of(r)
    return {"mean": mean} if mean else None


def cmd_crosscheck(py_path: str, sa_path: str) -> int:
    if not (Path(py_path).exists() and Path(sa_path).exists()):
        print("ships cross-check: skipped (missing output)")
        return 0
    py = json.loads(Path(py_path).read_text())["scores"]
    sa = sahara_ships_scores(sa_path)
    if sa is None:
        print(f"ships cross-check: skipped (format of {sa_path} not recognised)")
        return 0
    pairs = []
    if "per_query" in sa and len(sa["per_query"]) == len(py):
        for q in range(len(py)):
            for l, row in enumerate(py[q]):
                for h, v in enumerate(row):
                    pairs.append((v, sa["per_query"][q][l][h]))
        what = "per query"
    else:
        mean_py = {
            (l, h): sum(py[q][l][h] for q in range(len(py))) / len(py)
            for l in range(len(py[0]))
            for h in range(len(py[0][0]))
        }
        m = sa.get("mean") or {}
        if "per_query" in sa:
            pq = sa["per_query"]
            m = {(l, h): sum(x[l][h] for x in pq) / len(pq) for l in range(len(pq[0])) for h in range(len(pq[0][0]))}
        pairs = [(mean_py[k], m[k]) for k in mean_py if k in m]
        what = "mean over queries"
    if not pairs:
        print("ships cross-check: skipped (no common heads)")
        return 0
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs)
    absd = max(abs(a - b) for a, b in pairs)
    top_py = sorted(range(len(pairs)), key=lambda i: -pairs[i][0])[:10]
    top_sa = sorted(range(len(pairs)), key=lambda i: -pairs[i][1])[:10]
    print(
        f"ships cross-check ({what}, {len(pairs)} scores): max |diff| {absd:.3g}, max rel diff {rel:.3g}, "
        f"top-10 overlap {len(set(top_py) & set(top_sa))}/10"
    )
    return 0


def main() -> int:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    what, argv = sys.argv[1], sys.argv[2:]
    if what == "timed":
        return cmd_timed(argv)
    if what == "table" and argv:
        return cmd_table(argv[0], argv[1:])
    if what == "crosscheck-ships" and len(argv) == 2:
        return cmd_crosscheck(*argv)
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
