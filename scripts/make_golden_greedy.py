"""Golden greedy decoding of the default model by an independent implementation (HF transformers, float32).

Record of how tests/golden/smollm2_greedy.json and tests/golden/smollm2_first_logits.npz were made; CI does not
run it. transformers loads the same GGUF and dequantizes every tensor to float32 (Q4_1/Q8_0 dequantize
exactly), then runs its own Llama implementation (PyTorch, rotate-half RoPE on un-permuted Q/K weights).
Prompt ids come from our tokenizer, which tests/test_tokenizer.py holds equal to llama.cpp's ids
(transformers' own GGUF tokenizer conversion misses SmolLM2's digit split, so it is not used). One prompt is
rendered through the model's chat template.

    python3 -m venv /tmp/hf && /tmp/hf/bin/pip install torch==2.13.0 transformers accelerate gguf tokenizers jinja2
    PYTHONPATH=. /tmp/hf/bin/python scripts/make_golden_greedy.py [MODEL.gguf]

Second, optional reference: llama.cpp itself (its CPU kernels quantize activations to 8 bits, so its logits
are further from float32 than ours). `--llama-cpp`, run in the llama-cpp-python venv (see
make_golden_tokens.py), adds `llama_cpp_generated_ids` / `llama_cpp_top2_margins` to the existing JSON and
checks that llama.cpp tokenizes every prompt text to the recorded prompt ids:

    PYTHONPATH=. /tmp/llamacpp/bin/python scripts/make_golden_greedy.py --llama-cpp

Greedy: argmax of the last position's logits, 32 new tokens, no stopping at end-of-turn tokens (both sides do
the same). Per step the script records the chosen id and the top-1 minus top-2 logit margin (a divergence at
a step with a tiny margin is explainable by float rounding). The first step's full logits go to the .npz.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib.metadata import version

import numpy as np

N_NEW = 32
TEXT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "In 1969, Neil Armstrong became the first person to",
]
CHAT_PROMPT = [{"role": "user", "content": "Give me three tips for staying healthy."}]


def prompts(model_path: str) -> list[dict]:
    from service.model.chat_template import ChatTemplate
    from service.model.gguf_file import open_gguf
    from service.model.tokenizer import Tokenizer

    gm = open_gguf(model_path)
    tok = Tokenizer.from_gguf(gm)
    out = [{"name": f"text{i}", "text": t, "prompt_ids": tok.encode(t)} for i, t in enumerate(TEXT_PROMPTS)]
    template = ChatTemplate.from_gguf(gm, tok)
    out.append({"name": "chat", "messages": CHAT_PROMPT, "text": template.render(CHAT_PROMPT),
                "prompt_ids": template.encode(CHAT_PROMPT)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=os.path.expanduser(
        "~/.cache/llm-grpc-server/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("-o", "--out", default="tests/golden/smollm2_greedy.json")
    ap.add_argument("--logits-out", default="tests/golden/smollm2_first_logits.npz")
    ap.add_argument("--llama-cpp", action="store_true", help="add llama.cpp's greedy tokens to the JSON")
    args = ap.parse_args()
    if args.llama_cpp:
        return add_llama_cpp(args.model, args.out)

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cases = prompts(args.model)
    with tempfile.TemporaryDirectory() as folder:  # transformers wants (folder, file name)
        link = os.path.join(folder, os.path.basename(args.model))
        os.symlink(os.path.abspath(args.model), link)
        t0 = time.time()
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=os.path.basename(args.model),
                                                     dtype=torch.float32)
        print(f"loaded in {time.time() - t0:.1f}s", file=sys.stderr)
    model.eval()

    first_logits = {}
    for case in cases:
        ids = torch.tensor([case["prompt_ids"]], dtype=torch.long)  # (1, n_prompt)
        generated, margins = [], []
        past = None
        with torch.no_grad():
            for step in range(N_NEW):
                out = model(input_ids=ids, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[0, -1].float()  # (vocab,)
                if step == 0:
                    first_logits[case["name"]] = logits.numpy().astype(np.float32)  # (vocab,)
                top2 = torch.topk(logits, 2)
                nxt = int(top2.indices[0])
                generated.append(nxt)
                margins.append(float(top2.values[0] - top2.values[1]))
                ids = torch.tensor([[nxt]], dtype=torch.long)  # (1, 1)
        case["generated_ids"] = generated
        case["top2_margins"] = margins
        print(f"{case['name']}: min margin {min(margins):.4g} ids {generated}", file=sys.stderr)

    out = {
        "model": os.path.basename(args.model),
        "reference": f"transformers {version('transformers')} + torch {version('torch')}, float32 "
                     "(GGUF dequantized by transformers), greedy argmax, KV cache, no stop tokens",
        "n_new": N_NEW,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    np.savez_compressed(args.logits_out, **first_logits)
    print(f"wrote {args.out} and {args.logits_out}", file=sys.stderr)
    return 0


def add_llama_cpp(model_path: str, out_path: str) -> int:
    from llama_cpp import Llama

    with open(out_path, encoding="utf-8") as f:
        golden = json.load(f)
    first = np.load(os.path.join(os.path.dirname(out_path), "smollm2_first_logits.npz"))
    llm = Llama(model_path=model_path, n_ctx=256, n_batch=256, n_threads=2, seed=0, logits_all=True, verbose=False)
    for case in golden["cases"]:
        ref_ids = llm.tokenize(case["text"].encode("utf-8"), add_bos=True, special=True)
        if ref_ids != case["prompt_ids"]:
            raise SystemExit(f"{case['name']}: llama.cpp tokenizes the prompt differently: {ref_ids}")
        llm.reset()
        llm.eval(case["prompt_ids"])
        generated, margins = [], []
        for step in range(golden["n_new"]):
            logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)  # (vocab,)
            if step == 0:
                want = first[case["name"]].astype(np.float64)  # (vocab,)
                rel = float(np.max(np.abs(logits - want)) / np.max(np.abs(want)))
                print(f"{case['name']}: llama.cpp first-step logits vs transformers: max rel error {rel:.3g}",
                      file=sys.stderr)
            order = np.argsort(logits)[-2:]  # (2,)
            generated.append(int(order[1]))
            margins.append(float(logits[order[1]] - logits[order[0]]))
            llm.eval([generated[-1]])
        case["llama_cpp_generated_ids"] = generated
        case["llama_cpp_top2_margins"] = margins
        ref = case["generated_ids"]
        prefix = next((i for i, (a, b) in enumerate(zip(generated, ref)) if a != b), len(ref))
        note = "" if prefix == len(ref) else (f" (top-2 margin there: transformers {case['top2_margins'][prefix]:.3g}, "
                                              f"llama.cpp {margins[prefix]:.3g})")
        print(f"{case['name']}: llama.cpp equals transformers for the first {prefix}/{len(ref)} tokens{note}",
              file=sys.stderr)
    golden["llama_cpp_reference"] = f"llama-cpp-python {version('llama-cpp-python')}, CPU, greedy argmax of " \
                                    "Llama.scores after eval, no stop tokens"
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
