"""`python -m service generate`: load a model (progress bar) and stream a completion to the terminal."""

from __future__ import annotations

import argparse
import sys
import time

from service import config as config_module
from service.engine.core import LLMEngine
from service.engine.request import SamplingParams


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt (streams to stdout)")
    config_module.add_arguments(p, sections=("model", "cache", "engine"))
    p.add_argument("--prompt", required=True, help="the prompt text (with --chat: the user message)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stats", action="store_true", help="print tokens/s to stderr at the end")
    p.set_defaults(run=run)


def _progress_bar():
    from tqdm import tqdm
    bar = tqdm(total=1, desc="loading", unit="layer", file=sys.stderr, leave=False, disable=None)  # no bar off a TTY

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
    return update


def run(args: argparse.Namespace) -> int:
    config = config_module.from_args(args)
    from service.model.loader import load_model
    loaded = load_model(config, progress=_progress_bar())
    engine = LLMEngine(loaded.model, loaded.tokenizer, config)
    prompt = args.prompt
    if args.chat:
        if loaded.chat_template is None:
            from service.errors import ChatTemplateError
            raise ChatTemplateError("this model has no chat template; drop --chat")
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": prompt}]
        prompt = loaded.chat_template.encode(messages, add_generation_prompt=True)  # ids: BOS never doubled
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                            max_tokens=args.max_tokens)
    start = time.perf_counter()
    request = engine.add_request(prompt, params)
    first_token_at = None
    n_tokens = 0
    while engine.has_work():
        for out in engine.step():
            if out.error is not None:
                raise out.error
            if out.delta is None:
                continue
            if out.delta.token_ids and first_token_at is None:
                first_token_at = time.perf_counter()
            n_tokens += len(out.delta.token_ids)
            sys.stdout.write(out.delta.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        end = time.perf_counter()
        decode_s = end - (first_token_at or end)
        print(f"prompt {len(request.prompt_ids)} tokens, generated {n_tokens}; time to first token "
              f"{(first_token_at or end) - start:.2f} s; decode {max(n_tokens - 1, 0) / decode_s if decode_s else 0:.1f} tok/s",
              file=sys.stderr)
    return 0
