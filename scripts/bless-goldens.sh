#!/usr/bin/env bash
# Rewrites the golden outputs of crates/sahara-cli/tests/golden.rs from the current build,
# then shows what changed. Run it only when an output changes on purpose, and put the diff
# in the change's description.
set -euo pipefail
cd "$(dirname "$0")/.."
SAHARA_BLESS_GOLDEN=1 cargo test --release -p sahara-cli --test golden -- every_command_writes_its_recorded_outputs
git status --short crates/sahara-cli/tests/golden
git diff --stat -- crates/sahara-cli/tests/golden
