"""Paths, tolerances and the inputs shared by every fixture."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "fixtures"
EPSILON = 1e-5
MAX_NEW_TOKENS = 8
MIN_TOP2_GAP = 1e-3
NEW_MIN_TOP2_GAP = 1e-2  # gemma, gemma2, phi3, qwen3: ten times the f32 tolerance margin
MAX_FOLDER_BYTES = 1_500_000

# Raw prompts (~5, ~12, ~20+ tokens). The last one contains a newline, digits,
# a double space, a character from the corpus alphabet ("é") and one that is
# not in it ("☃").
PROMPTS = [
    "The little robot",
    "The robot walked to the old café by the river.",
    "Question: 12 + 30?\nAnswer:  42 ☃.",
]

CHAT_CASES = [
    (None, "What is the capital of France?"),
    ("You are a careful assistant.", "What is the capital of France?"),
]
