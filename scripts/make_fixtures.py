#!/usr/bin/env python3
"""Generate the small reference fixtures under ``fixtures/``.

Every fixture is a tiny, randomly initialised Hugging Face model folder
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json) plus reference outputs computed with `transformers`
(eager attention, float32, CPU):

* ``reference.json``        prompts, token ids, chat renderings, greedy generations,
                            ablation definitions;
* ``reference.safetensors`` logits / ablated logits / final hidden states.

Usage::

    pip install -r scripts/requirements-fixtures.txt
    python3 scripts/make_fixtures.py            # regenerates fixtures/*
    python3 scripts/make_fixtures.py llama3     # only some fixtures
    python3 scripts/make_fixtures.py organism --sahara target/release/sahara
        # checks the built-in organism (crates/sahara/organism) in transformers

Nothing is downloaded: tokenizers are trained here on a built-in corpus and
weights are drawn from a seeded generator.  The script is deterministic on a
given software stack (see fixtures/README.md for the versions used).
"""

import sys

from fixturegen.cli import main  # importing the package applies the determinism settings

if __name__ == "__main__":
    main(sys.argv[1:])
