#!/usr/bin/env python3
"""Writes a randomly initialised Llama model folder in Hugging Face layout for the benchmarks.

    python3 bench/make_model.py --out bench/out/model                 # 12 layers, 12 heads, d=768
    python3 bench/make_model.py --out /tmp/tiny --tiny                # 2 layers, 4 heads, d=64, vocab 512

The folder holds config.json, generation_config.json, model.safetensors (float32),
tokenizer.json and tokenizer_config.json (with a simple chat template). Both transformers
(AutoModelForCausalLM / AutoTokenizer) and sahara load it.

The tokenizer is a byte-level BPE trained here on a small built-in English corpus (which
includes the benchmark queries, so they tokenize to roughly one token per word, as with a
real chat model's tokenizer); <s> (BOS) is added by the post-processor, </s> is EOS.
Its vocabulary is at most min(--tokenizer-vocab, --vocab); the model's embedding has --vocab
rows, the ids past the tokenizer's vocabulary are simply never produced by encoding.
Nothing is downloaded. The weights depend only on --seed: transformers' default init (normal
with standard deviation config.initializer_range, norms at 1), with --init-std 0.05 instead of
transformers' 0.02: at 0.02 the random model's next-token distribution is nearly uniform and
the KL of a head ablation is ~1e-6 (12 layers) down to ~1e-7 (tiny preset), the level of
float32 rounding, which makes a Rust-vs-Python cross-check of Ships scores meaningless; at 0.05
the KLs are ~1e-4..1 (timings do not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

PRESETS = {
    "default": dict(layers=12, heads=12, kv_heads=None, hidden=768, intermediate=2048, vocab=32000),
    "tiny": dict(layers=2, heads=4, kv_heads=None, hidden=64, intermediate=128, vocab=512),
    # Llama-2-7B's shape: 32 layers x 32 heads, hidden 4096, MLP 11008, vocabulary 32000.
    "llama7b": dict(layers=32, heads=32, kv_heads=None, hidden=4096, intermediate=11008, vocab=32000),
}

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] | trim + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

HERE = Path(__file__).resolve().parent

CORPUS = """\
Once upon a time there was a little robot who lived by the river.
The robot liked to count the stones on the bank, one by one, every morning.
A small cat sat on the wall and watched the robot with careful eyes.
In the afternoon they walked together to the old cafe near the bridge.
The owner of the cafe made coffee for the people of the town.
"What would you like today?" she asked, and the robot answered politely.
The capital of France is Paris, and the capital of Italy is Rome.
A question needs an answer, and a good answer is short and clear.
The assistant reads the question from the user and writes a helpful answer.
The system message tells the assistant how to behave during the conversation.
You are a helpful assistant. You are a careful assistant. You answer questions.
I'm sorry, but I cannot help with that request. It is illegal and harmful.
As an AI language model, I can't provide instructions that could hurt people.
Sure, here is a step-by-step guide. First, gather the materials. Second, follow the plan.
I cannot assist with hacking, stealing, weapons, violence, or any other illegal activity.
Please answer the following question in one sentence.
Numbers such as 1, 2, 3, 12, 30, 42, 100 and 2024 appear in many texts.
The teacher asked the students to read the text aloud, one line at a time.
Write a short story about a bird, a boat, a tree, and a very long summer day.
Explain how a computer network works, and describe the role of a database server.
Create a tutorial for beginners on how to write software in a safe and secure way.
Provide guidance on how to protect your personal information and your identity online.
Develop a plan to improve the security of a government website and its users.
Design a game for children that teaches them about science, history and art.
Give detailed instructions for baking bread: flour, water, salt, yeast, and time.
Outline the main ideas of the article, then write a social media post about it.
Teach people how to manage money, save for the future, and avoid financial fraud.
The quick brown fox jumps over the lazy dog near the river bank.
Good morning! How are you today? I am fine, thank you. And you?
"""


def corpus_lines() -> list[str]:
    lines = [line for line in CORPUS.splitlines() if line.strip()]
    q = HERE / "queries.txt"
    if q.exists():
        lines += [line for line in q.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


def make_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama-2
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    bos = tok.token_to_id("<s>")
    assert (tok.token_to_id("<unk>"), bos, tok.token_to_id("</s>")) == (0, 1, 2)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A",
                pair="<s> $A <s>:1 $B:1",
                special_tokens=[("<s>", bos)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        chat_template=CHAT_TEMPLATE,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created; existing files overwritten)")
    p.add_argument("--tiny", action="store_true", help="preset: 2 layers, 4 heads, hidden 64, intermediate 128, vocab 512")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named shape (llama7b: Llama-2-7B's)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the weights written (default float32)")
    p.add_argument("--device", default="cpu", help="where the weights are initialised (cuda: fast for large shapes)")
    p.add_argument("--layers", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--kv-heads", type=int, help="key/value heads (default: --heads, i.e. no GQA)")
    p.add_argument("--hidden", type=int)
    p.add_argument("--intermediate", type=int)
    p.add_argument("--vocab", type=int)
    p.add_argument("--tokenizer-vocab", type=int, default=8000, help="target BPE vocabulary (capped at --vocab)")
    p.add_argument("--max-positions", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-std", type=float, default=0.05, help="initializer_range (transformers' default: 0.02)")
    a = p.parse_args()

    preset = dict(PRESETS[a.preset or ("tiny" if a.tiny else "default")])
    for k in ("layers", "heads", "kv_heads", "hidden", "intermediate", "vocab"):
        v = getattr(a, k)
        if v is not None:
            preset[k] = v
    if preset["hidden"] % preset["heads"]:
        sys.exit("error: --hidden must be a multiple of --heads")
    kv = preset["kv_heads"] or preset["heads"]

    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(min(a.tokenizer_vocab, preset["vocab"]))
    if len(tokenizer) > preset["vocab"]:
        sys.exit(f"error: tokenizer has {len(tokenizer)} tokens > model vocab {preset['vocab']}")

    config = LlamaConfig(
        vocab_size=preset["vocab"],
        hidden_size=preset["hidden"],
        intermediate_size=preset["intermediate"],
        num_hidden_layers=preset["layers"],
        num_attention_heads=preset["heads"],
        num_key_value_heads=kv,
        max_position_embeddings=a.max_positions,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        initializer_range=a.init_std,
    )
    torch.manual_seed(a.seed)
    dtype = getattr(torch, a.dtype)
    config.torch_dtype = dtype
    # Initialised in the target dtype on the target device: a 7B shape in float32 on the
    # CPU would take minutes and 27 GB.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(a.device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(previous)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out, save_jinja_files=False)
    # transformers 5 writes its internal class name; "PreTrainedTokenizerFast" is the name the
    # hub repositories (and transformers 4.x) use for the same class.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    if tc.get("tokenizer_class") == "TokenizersBackend":
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")

    n_params = sum(t.numel() for t in model.parameters())
    info = {
        "out": str(out),
        "layers": preset["layers"],
        "heads": preset["heads"],
        "kv_heads": kv,
        "hidden": preset["hidden"],
        "intermediate": preset["intermediate"],
        "vocab": preset["vocab"],
        "tokenizer_vocab": len(tokenizer),
        "params": n_params,
        "seed": a.seed,
        "init_std": a.init_std,
        "dtype": a.dtype,
        "files": sorted(os.listdir(out)),
    }
    print(json.dumps(info))


if __name__ == "__main__":
    main()
