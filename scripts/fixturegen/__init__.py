"""The fixture generator behind ``scripts/make_fixtures.py`` (see its docstring and
fixtures/README.md).

Importing the package first makes torch deterministic, so every module (and every fixture
step) runs with the same settings as the single script it was split from:

* ``common``     paths, tolerances, the prompts and chat cases shared by all fixtures;
* ``templates``  the chat templates, copied verbatim from the hub repositories;
* ``toks``       the built-in corpus and the tokenizer builders of each family;
* ``modelling``  seeded weights, forward pass and greedy decoding (with a cache-free check);
* ``ablation``   the head-ablation sets and the hooks that apply them;
* ``specs``      one spec per family (tokenizer, config, generation config, seed) and the
                 rewrite of config.json to the hub layout;
* ``checks``     the per-family structural checks (sliding windows, RoPE, Gemma, Phi-3, Qwen3,
                 mixtures of experts, GPT-OSS);
* ``mxfp4``      MXFP4 quantization in the layout of the GPT-OSS checkpoints;
* ``build``      building one fixture folder and verifying it from disk;
* ``surgery``    fixtures/surgery.json (ablations folded into the weights);
* ``smollm2``    fixtures/smollm2 (a real chat model from its GGUF file);
* ``gguf_tiny``  fixtures/gguf_tiny (a tiny random Llama written as GGUF);
* ``gguf_moe``   fixtures/gguf_qwen3moe and fixtures/gguf_mixtral (tiny mixtures of experts
                 written as llama.cpp's converter writes them);
* ``cli``        ``main(argv)``, the command line of ``scripts/make_fixtures.py``.
"""

import torch

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)  # bit-for-bit reproducible CPU reductions
