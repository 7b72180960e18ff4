"""A/B of decode-graph settings in one process: GPU time per decode step of the 7B-shaped Q4_K_M dummy model.

    python bench/decode_ab.py [--settings nopdl pdl] [--rounds 3] [--reps 100] [--kv-dtype f16|q8] [--out DIR]

Settings (see `apply`): pdl / nopdl = every decode graph with or without programmatic kernel -> kernel edges,
auto = the backend's choice per batch size; a suffix -plain:<prefix>,<prefix> keeps the edges into those kernels plain;
options after "+": nodec sends batch-1 Q4_K through the paired vector kernel instead of kernels/matmul_dec.cu,
dec:<config> picks that decode-kernel configuration (e.g. pdl+dec:r1s2), qfirst makes the two-pass quantizers trigger
their dependent before their own wait (CudaMatmul.quant_trigger_first), only:<type>,<type> limits the decode
kernel to those weight types (e.g. pdl+only:q4_k), nomix launches Q4_K and Q6_K matrices sharing x separately
(not in one matmul_dec_q4_k_q6_k launch: CudaMatmul.dec_mixed), nofuse quantizes the matmul inputs in launches of
their own (not inside rms_norm / silu_mul: CudaBackend.fuse_quant), norope rotates q and k in a rope_qk launch of
its own (not inside decode attention: CudaBackend.fuse_rope), splitk:<n> gives decode attention's splits at least n
keys (CudaBackend.split_keys), attsm:<n> sizes its grid for n blocks per SM (CudaBackend.split_blocks_per_sm; list
the setting with the most splits first: a larger grid reallocates the partial states under the graphs captured
before), halffrom:<n> the keys from which a row takes at least half of that grid (CudaBackend.split_half_from; 0:
never), noshort / short:<n> sends decode steps of contexts up to 0 / n keys (default 192) to
attention in clusters (CudaBackend.short_keys), noglu launches gate / up and silu_mul apart (not in one
matmul_dec_glu launch: CudaBackend.fuse_glu), glu:<config> picks that launch's configuration
(cuda_matmul.GLU_CONFIGS), pf:<KB> prefetches that many KB of the weights after each single-matrix decode launch's
matrix into L2 (CudaMatmul.prefetch_kb; pf:0 none), cols:<n> sends decode steps of 2 .. n sequences to the decode
kernel's column entries (CudaMatmul.dec_cols; cols:0 none), frag:<A> loads the fragment kernel's weights A blocks
ahead up to 8 rows (CudaMatmul.frag_ahead; frag:0 its n1 entries), skip:<prefix>,<prefix> launches no kernel whose
name starts with a prefix (the outputs are then wrong: it measures what those kernels cost inside the graph, e.g.
pdl+skip:quantize_act).
For every scenario (b1: batch 1 at depth 16, d<D>: batch 1 at depth D, s<N>: N sequences at depth 512) one
decode graph is captured per setting; the graphs are then replayed alternately,
`reps` replays per setting per round, timed with CUDA events, so every setting sees the same machine state.
Prints a table (median ms per step over rounds, tok/s from it) last and writes DIR/decode_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from service.backends.base import SeqChunk, StepBatch  # noqa: E402
from service.backends.cuda_backend import SPLIT_BLOCKS_PER_SM, SPLIT_HALF_FROM, SPLIT_KEYS  # noqa: E402
from service.backends.cuda_matmul import DEC_COLS, DEC_TYPES, FRAG_AHEAD, GLU_DEFAULT, PREFETCH_KB  # noqa: E402
from service.model.llama import LlamaModel  # noqa: E402

MB = 1 << 20


class _NoLaunch:
    """A prepared kernel whose launches are dropped (skip:); everything else is the real function's."""

    def __init__(self, fn):
        self._fn = fn

    def prepared_async_call(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name):
        return getattr(self._fn, name)


def _skip(be, prefixes: tuple[str, ...]) -> None:
    """Drop the launches of kernels whose name starts with one of the prefixes (backend ops and matmul launcher)."""
    cls, mm = type(be), be.mm
    be._launch = lambda module, name, *a: None if name.startswith(prefixes) else cls._launch(be, module, name, *a)
    mm._fns = {}
    mm._fn = lambda module, name, sig: (_NoLaunch if prefixes and name.startswith(prefixes) else lambda f: f)(
        type(mm)._fn(mm, module, name, sig))


def _option(opts: list[str], name: str, default, parse=int):
    """The value of option `name:<value>` among opts, parsed, or default."""
    prefix = name + ":"
    return next((parse(o[len(prefix):]) for o in opts if o.startswith(prefix)), default)


def apply(be, setting: str) -> None:
    """Backend settings by name: pdl / nopdl (programmatic edges in every decode graph, or in none), auto (the
    backend's own choice by batch size); options +nodec, +dec:<config>, +qfirst, +only:<types>, +nomix, +nofuse,
    +norope, +noglu, +glu:<config>, +pf:<KB>, +cols:<n>, +frag:<A>, +splitk:<n>, +attsm:<n>, +halffrom:<n>, +noshort,
    +short:<n>, +skip:<prefixes> (module docstring)."""
    setting, *opts = setting.split("+")
    be.mm.use_dec = "nodec" not in opts
    be.mm.dec_mixed = "nomix" not in opts
    be.mm.dec_variant = next((o for o in opts if o.startswith("dec:")), None)
    be.mm.quant_trigger_first = "qfirst" in opts
    be.fuse_quant = "nofuse" not in opts
    be.fuse_rope = "norope" not in opts
    be.fuse_glu = "noglu" not in opts
    be.mm.glu_config = _option(opts, "glu", GLU_DEFAULT, str)
    be.split_keys = _option(opts, "splitk", SPLIT_KEYS)
    be.split_blocks_per_sm = _option(opts, "attsm", SPLIT_BLOCKS_PER_SM)
    be.split_half_from = _option(opts, "halffrom", SPLIT_HALF_FROM)
    be.mm.prefetch_kb = _option(opts, "pf", PREFETCH_KB)
    be.mm.frag_ahead = _option(opts, "frag", FRAG_AHEAD)
    be.mm.dec_cols = _option(opts, "cols", DEC_COLS[-1])
    be.short_keys = 0 if "noshort" in opts else _option(opts, "short", 192)
    be.mm.dec_types = _option(opts, "only", DEC_TYPES, lambda v: frozenset(v.split(",")))
    skip = _option(opts, "skip", "", str)
    _skip(be, tuple(p for p in skip.split(",") if p))
    base, _, plain = setting.partition("-plain:")  # e.g. pdl-plain:matmul_pipe,splitk: those kernels' edges stay plain
    if base not in ("pdl", "nopdl", "auto"):
        raise SystemExit(f"unknown setting {setting!r}")
    be.pdl = base != "nopdl"
    be._pdl_for = (lambda n: be.pdl) if base == "pdl" else type(be)._pdl_for.__get__(be)
    be.pdl_plain_into = tuple(p for p in plain.split(",") if p)


def dummy_7b_model():
    """The 7B-shaped Q4_K_M dummy model on a CUDA backend of 512 rows and 64 sequences a step: (backend, model)."""
    from service.backends.cuda_backend import CudaBackend
    from service.model.dummy import dummy_gguf_model

    be = CudaBackend(max_rows=512, max_seqs=64)
    g = dummy_gguf_model("7b")
    be.reserve_weights(g)
    return be, LlamaModel(g, be)


def prefill(model, rng: np.random.Generator, slot: int, n: int, max_positions: int) -> int:
    """Sequence `slot` prefilled with n random tokens (chunks of up to 512); returns the greedy token after them."""
    vocab = model.hp.vocab_size
    for a in range(0, n, 512):
        m = min(512, n - a)
        out = model.forward(StepBatch(rng.integers(0, vocab, m).astype(np.int32), (SeqChunk(slot, a, m),),
                                      max_positions))
    return int(np.argmax(out[0]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["nopdl", "pdl"])
    ap.add_argument("--scenarios", default="b1,d2048,s32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    ap.add_argument("--kv-dtype", default="f16", choices=("f16", "q8"), help="the KV cache's storage")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    be, model = dummy_7b_model()
    maxpos = 2048 + 64
    scenarios = args.scenarios.split(",")
    deep = [sc for sc in scenarios if sc.startswith("d")]
    n_slots = max([1 + len(deep)] + [int(sc[1:]) for sc in scenarios if sc.startswith("s")])
    kv = model.alloc_kv(model.kv_layout(slots=n_slots, max_positions=maxpos, sink_tokens=4, dtype=args.kv_dtype))

    batches = {}
    for sc in scenarios:  # b1: one sequence at depth 16; d<D>: one at depth D; s<N>: N sequences at depth 512
        slots = [0] if sc == "b1" else [1 + deep.index(sc)] if sc in deep else list(range(int(sc[1:])))
        depth = 16 if sc == "b1" else int(sc[1:]) if sc in deep else 512
        toks = [prefill(model, rng, s, depth, maxpos) for s in slots]
        batches[sc] = StepBatch(np.array(toks, np.int32), tuple(SeqChunk(s, depth, 1) for s in slots), maxpos)

    graphs: dict[tuple[str, str], object] = {}
    for sc, batch in batches.items():
        be.forward(model, batch)  # eager: learns the matmul order, sizes the pools
        for st in args.settings:
            apply(be, st)
            key = be.graph_key(model, batch, False)
            be._graphs.pop(key, None)
            be._seen.add(key)  # (the eager step above sized everything)
            be.forward(model, batch)  # captures under this setting
            graphs[(sc, st)] = be._graphs.pop(key)[0]
    be.rt.synchronize()

    times: dict[tuple[str, str], list[float]] = {k: [] for k in graphs}
    for sc, batch in batches.items():
        be.begin_step(batch)  # the graphs read the step's positions from the staging buffer: stage this scenario's
        be.rt.synchronize()
        for _ in range(args.rounds):
            for st in args.settings:
                graph = graphs[(sc, st)]
                graph.replay()
                times[(sc, st)].append(graph.replay_ms(args.reps))

    res = {"device": be.rt.name, "l2_bytes": be.rt.l2_bytes, "rows": []}
    print(f"\n{be.rt.name}  L2 {be.rt.l2_bytes / MB:.0f} MB   ms per decode step (median of {args.rounds} rounds)")
    print(f"{'scenario':10s} {'setting':16s} {'ms/step':>9s} {'tok/s':>9s} {'vs first':>9s}")
    for sc in batches:
        base = statistics.median(times[(sc, args.settings[0])])
        for st in args.settings:
            ms = statistics.median(times[(sc, st)])
            n = len(batches[sc].seqs)
            res["rows"].append({"scenario": sc, "setting": st, "ms": ms, "all_ms": times[(sc, st)]})
            print(f"{sc:10s} {st:16s} {ms:9.4f} {1e3 * n / ms:9.1f} {base / ms:9.3f}x")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "decode_ab.json"), "w") as f:
        json.dump(res, f, indent=1)
    be.free_kv(kv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
