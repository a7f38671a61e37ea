#!/usr/bin/env python3
"""Chooses the committed corpus of a target from a long run's finds.

    TARGET=target/x86_64-unknown-linux-gnu/release/NAME
    mkdir -p /tmp/seeds/NAME /tmp/merged/NAME && cp corpus/NAME/seed-* /tmp/seeds/NAME/
    $TARGET -detect_leaks=0 -set_cover_merge=1 -merge_control_file=/tmp/NAME.ctl \\
        /tmp/merged/NAME /tmp/seeds/NAME /tmp/sahara-fuzz-work/NAME
    python3 select_corpus.py NAME /tmp/NAME.ctl

libFuzzer's set-cover merge writes every input's features to the control file; this keeps the
seeds (`seed-*`), then adds, greedily, the input of at most 8 KB that adds the most features,
until the target has 30 files or no input adds any. The inputs are written to `corpus/NAME/`
under the SHA-1 of their bytes; the target's other non-seed files there are removed.
"""

import hashlib
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
LIMIT, MAX_SIZE = 30, 8192


def main(name: str, control: str) -> None:
    lines = Path(control).read_text().splitlines()
    n = int(lines[0])
    files = [Path(p) if p.startswith("/") else FUZZ / p for p in lines[2 : 2 + n]]
    features = {i: set() for i in range(n)}
    for line in lines[2 + n :]:
        parts = line.split()
        if parts[0] == "FT":
            features[int(parts[1])] = set(map(int, parts[2:]))
    size = {i: files[i].stat().st_size for i in range(n)}
    seeds = [i for i in range(n) if files[i].name.startswith("seed-")]
    have = set().union(*(features[i] for i in seeds))
    chosen, left = [], [i for i in range(n) if i not in seeds and size[i] <= MAX_SIZE]
    while len(seeds) + len(chosen) < LIMIT and left:
        best = max(left, key=lambda i: (len(features[i] - have), -size[i]))
        if not features[best] - have:
            break
        chosen.append(best)
        left.remove(best)
        have |= features[best]
    out = FUZZ / "corpus" / name
    for f in out.iterdir():
        if not f.name.startswith("seed-"):
            f.unlink()
    seed_hashes = {hashlib.sha1(files[i].read_bytes()).hexdigest() for i in seeds}
    for i in chosen:
        data = files[i].read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        if digest not in seed_hashes:
            (out / digest).write_bytes(data)
    everything = set().union(*features.values())
    total = sum(f.stat().st_size for f in out.iterdir())
    print(
        f"{name}: {len(list(out.iterdir()))} files ({len(seeds)} seeds), {total} bytes, "
        f"{len(have)} of {len(everything)} features"
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
