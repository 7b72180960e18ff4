"""GPU benchmark of the whole server model path: the 7B-shaped Q4_K_M dummy model on the CUDA backend.

    python bench/gpu_bench.py [--shape 7b] [--out DIR]        (prints a table last, writes DIR/gpu_bench.json)

Measures, in one process on one GPU: device-to-device copy bandwidth (the ceiling; bytes read + written),
decode at batch 1 (128 tokens after a 16-token prompt) and at context depth 2048, prefill of a 512-token
prompt, time to first token of a 512-token prompt (one request, nothing queued: prefill + the host argmax),
aggregate decode of 2 / 4 / 8 / 32 / 64 concurrent sequences (512-token prompts, 128 tokens each), host CPU time per
decode step, achieved GB/s of a decode step (weight bytes read + KV bytes read, over the step's wall time)
and its % of the copy bandwidth, and peak device memory of the process. Decode steps are CUDA-graph replays.
The decode rows run greedy steps as the server's engine does for greedy requests (overlapped decode,
`LlamaModel.launch_greedy`): the argmax on the device, step n + 1 queued on its tokens before the host reads
step n's. The same steps with each step's logits copied to the host and the argmax taken there (how every
request ran before, and how sampled requests still run) are measured in the same run ("logits to host"), and
so is LLMEngine's own step loop at batch 1 with overlap on and off. Random weights: values do not change the
work done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from service.backends.base import SeqChunk, StepBatch  # noqa: E402
from service.model.llama import LlamaModel  # noqa: E402

LLAMA_CPP_H100 = {"decode_b1": 287, "decode_d2048": 255, "prefill_512": 10092, "agg_8": 965, "agg_32": 2472,
                  "agg_64": 3054}
TARGETS = {"decode_b1": 575, "decode_d2048": 480, "prefill_512": 12000, "agg_32": 3700}
GIB = 1 << 30


def copy_bandwidth(be, nbytes: int = 1 << 30, reps: int = 20) -> float:
    """Device-to-device memcpy bandwidth in bytes/s (read + write), CUDA events, median of reps."""
    cuda, rt = be.rt._cuda, be.rt
    a = rt.alloc(nbytes, "activations", "bench.copy_a")
    b = rt.alloc(nbytes, "activations", "bench.copy_b")
    rt.memset_u8(a, 7, nbytes)
    times = []
    for _ in range(reps + 2):
        e0, e1 = cuda.Event(), cuda.Event()
        e0.record(rt.stream)
        cuda.memcpy_dtod_async(b.ptr, a.ptr, nbytes, rt.stream)
        e1.record(rt.stream)
        e1.synchronize()
        times.append(e1.time_since(e0) / 1e3)
    rt.free(a)
    rt.free(b)
    return 2 * nbytes / statistics.median(times[2:])


class Runner:
    """Drives steps like the engine does: host-side positions; greedy tokens chosen on the device and chained
    (`greedy`), or each step's logits to the host and the argmax there (`decode`)."""

    def __init__(self, be, model, max_positions: int):
        self.be, self.model, self.maxpos = be, model, max_positions
        self.seen: dict[int, int] = {}

    def prefill(self, slot: int, ids: np.ndarray) -> int:
        self.seen[slot] = 0
        out = self.model.forward(StepBatch(ids.astype(np.int32), (SeqChunk(slot, 0, len(ids)),), self.maxpos))
        self.seen[slot] = len(ids)
        return int(np.argmax(out[0]))

    def decode(self, toks: dict[int, int]) -> dict[int, int]:
        slots = sorted(toks)
        batch = StepBatch(np.array([toks[s] for s in slots], np.int32),
                          tuple(SeqChunk(s, self.seen[s], 1) for s in slots), self.maxpos)
        out = self.be.forward(self.model, batch)  # (S, vocab), graph replay after the first two steps
        for s in slots:
            self.seen[s] += 1
        return {s: int(np.argmax(out[i])) for i, s in enumerate(slots)}

    def greedy(self, toks: dict[int, int], n: int) -> tuple[dict[int, int], float]:
        """n greedy decode steps as the engine overlaps them (LLMEngine, engine.overlap_decode): the argmax taken
        on the device, step i + 1 launched on the tokens step i left there before step i's tokens are read.
        Returns (the last tokens, host seconds to the launches' returns)."""
        slots = sorted(toks)
        host, prev = 0.0, None
        for i in range(n):
            ids = np.array([toks[s] for s in slots] if prev is None else [0] * len(slots), np.int32)
            nxt = self.model.launch_greedy(StepBatch(ids, tuple(SeqChunk(s, self.seen[s], 1) for s in slots),
                                                     self.maxpos), follow=prev)
            host += self.be.last_host_s
            for s in slots:
                self.seen[s] += 1
            if prev is not None:
                prev.result()  # the host's share of step i - 1 (streaming it out) happens while step i runs
            prev = nxt
        out = prev.result()
        return {s: int(out[i]) for i, s in enumerate(slots)}, host

    def timed_greedy(self, toks: dict[int, int], n: int, warm: int = 3) -> tuple[float, float]:
        """(wall seconds, host seconds) of n overlapped greedy steps after `warm` (eager, capture, replay)."""
        toks, _ = self.greedy(toks, warm)
        self.be.rt.synchronize()
        t0 = time.perf_counter()
        _, host = self.greedy(toks, n)
        return time.perf_counter() - t0, host

    def both_ways(self, toks: dict[int, int], depth: int, n: int) -> tuple[float, float, float]:
        """n steps from `depth` with the logits to the host, then the same n overlapped (each run rewrites the same
        positions): (wall seconds of the first, wall seconds of the second, its host seconds)."""
        for s in toks:
            self.seen[s] = depth
        host_argmax, _ = self.timed_decode(toks, n)
        for s in toks:
            self.seen[s] = depth
        return (host_argmax, *self.timed_greedy(toks, n))

    def timed_decode(self, toks: dict[int, int], n: int, warm: int = 2) -> tuple[float, float]:
        """(wall seconds, host seconds) of n decode steps after `warm` steps (eager + capture). Host seconds:
        the backend's time from the step's start to the graph launch's return (staging, the copy, the
        launch), excluding the wait for the GPU (the sync spins, so process CPU time would count the GPU)."""
        for _ in range(warm):
            toks = self.decode(toks)
        t0, host = time.perf_counter(), 0.0
        for _ in range(n):
            toks = self.decode(toks)
            host += self.be.last_host_s
        return time.perf_counter() - t0, host


def graph_step_ms(be, model, batch: StepBatch, reps: int = 50, greedy: bool = True) -> float | None:
    """GPU time of one replay of the decode graph `batch` takes (no host work in between), CUDA events, from
    batch's positions on. greedy: the graph that ends with the device argmax (launch_greedy; each replay advances
    the staged positions by one), else the one whose logits go to the host."""
    entry = be._graphs.get(be.graph_key(model, batch, greedy))
    if entry is None:
        return None
    be.begin_step(batch)
    ms = entry[0].replay_ms(reps)
    be._dev_meta = None  # (the replays moved the staged step on behind the backend's back)
    return ms


OPS = ("embedding", "rms_norm", "matmul", "rope", "attention", "silu_mul", "add", "take_rows")


def profile_ops(be, model, batch) -> dict[str, float]:
    """GPU milliseconds per op kind over one eager, unfused forward (CUDA events around each backend op; ops
    of several launches include the host's launch gaps, so this is a rough split, not the graph's time)."""
    cuda = be.rt._cuda
    marks: list[tuple[str, object, object]] = []
    saved = {}
    for name in OPS:
        orig = getattr(be, name)
        saved[name] = orig

        def wrapped(*a, _orig=orig, _name=name, **kw):
            e0, e1 = cuda.Event(), cuda.Event()
            e0.record(be.rt.stream)
            out = _orig(*a, **kw)
            e1.record(be.rt.stream)
            key = _name
            if _name == "matmul":
                key = f"matmul {a[1].rows}x{a[1].cols} {a[1].ggml_type}"
            marks.append((key, e0, e1))
            return out
        setattr(be, name, wrapped)
    be.defer = False  # every op issued where it is called (no fusion), so each is timed on its own
    try:
        model.forward(batch)
    finally:
        be.defer = True
        for name in OPS:
            delattr(be, name)
    be.rt.synchronize()
    ms: dict[str, float] = {}
    for key, e0, e1 in marks:
        ms[key] = ms.get(key, 0.0) + e1.time_since(e0)
    return dict(sorted(ms.items(), key=lambda kv: -kv[1]))


def engine_decode(model, gen: int, vocab: int) -> dict[str, float]:
    """The server's own step loop (LLMEngine, no RPC) on the same model: one greedy request, 16-token prompt,
    `gen` tokens; decode tok/s from its first token to its last, with and without overlapped decode."""
    from service.config import Config, replace
    from service.engine.core import LLMEngine
    from service.engine.request import SamplingParams

    out = {}
    rng = np.random.default_rng(1)
    for overlap in ("on", "off"):
        cfg = replace(Config(), cache__slots=1, cache__max_positions=2048 + gen + 8, engine__max_running=1,
                      engine__overlap_decode=overlap)
        eng = LLMEngine(model, None, cfg)
        params = SamplingParams(temperature=0.0, max_tokens=gen + 1, ignore_eos=True)
        rates = []
        for _ in range(3):  # the first run captures the graphs
            eng.add_request(rng.integers(0, vocab, 16).tolist(), params)
            outs = eng.step()  # the prompt, and the first token
            assert outs and outs[0].delta is not None
            t0 = time.perf_counter()
            eng.run_until_done()
            rates.append(gen / (time.perf_counter() - t0))
        out[f"engine_decode_b1_overlap_{overlap}"] = statistics.median(rates[1:])
        model.backend.free_kv(model.kv)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="7b")
    ap.add_argument("--out", default=os.path.join("bench", "out"))
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--batches", default="2,4,8,32,64")
    ap.add_argument("--decode-activations", default="int8x2", choices=("int8", "int8x2", "f16"),
                    help="decode matmul activations: int8 / int8x2 (dp4a vector path, one or two passes) or f16 "
                         "(tiled tensor-core path)")
    ap.add_argument("--no-pipe", action="store_true",
                    help="Q4_K / Q6_K at many rows through the tiled / fragment kernels instead of "
                         "kernels/matmul_pipe.cu (for a same-run comparison)")
    ap.add_argument("--no-pdl", action="store_true",
                    help="decode graphs without programmatic kernel -> kernel edges (for a comparison)")
    ap.add_argument("--no-dec", action="store_true",
                    help="batch-1 Q4_K / Q6_K through the paired vector kernel instead of kernels/matmul_dec.cu (comparison)")
    ap.add_argument("--no-fuse", action="store_true",
                    help="batch-1 matmul inputs quantized in launches of their own, not inside rms_norm / silu_mul")
    args = ap.parse_args(argv)

    from service.backends.cuda_backend import CudaBackend
    from service.model.dummy import dummy_gguf_model

    rng = np.random.default_rng(0)
    res: dict = {"shape": args.shape, "decode_activations": args.decode_activations}
    be = CudaBackend(max_rows=512, max_seqs=64, int8_decode=args.decode_activations != "f16",
                     int8x2=args.decode_activations == "int8x2")
    be.mm.use_pipe = not args.no_pipe
    be.pdl = not args.no_pdl
    be.mm.use_dec = not args.no_dec
    be.fuse_quant = not args.no_fuse
    res["pdl"] = be.pdl
    res["matmul_dec"] = be.mm.use_dec
    res["fuse_quant"] = be.fuse_quant
    res["device"] = be.rt.name
    res["matmul_pipe"] = not args.no_pipe
    res["copy_bw_gbs"] = copy_bandwidth(be) / 1e9
    t0 = time.time()
    g = dummy_gguf_model(args.shape)
    be.reserve_weights(g)
    model = LlamaModel(g, be)
    res["load_s"] = time.time() - t0
    hp = g.hparams
    vocab = hp.vocab_size
    weight_bytes = sum(r.nbytes for r in be.memory_records() if r.category == "weights")
    read_bytes = weight_bytes - g.tensor("token_embd.weight").n_bytes  # one embedding row per token
    kv_tok_layer = 2 * hp.n_kv_heads * hp.head_dim * 2  # f16 K + V bytes per token per layer
    res["weight_gib"] = weight_bytes / GIB
    peak = 0

    def sample_peak() -> None:
        nonlocal peak
        be.rt.synchronize()
        peak = max(peak, be.rt.process_used_bytes())

    # -- batch 1: short prompt, depth 2048, prefill 512, TTFT ---------------------------------------
    kv = model.alloc_kv(model.kv_layout(slots=4, max_positions=2048 + args.gen + 8, sink_tokens=4, dtype="f16"))
    run = Runner(be, model, 2048 + args.gen + 8)
    first = run.prefill(0, rng.integers(0, vocab, 16))
    to_host, wall, cpu = run.both_ways({0: first}, 16, args.gen)
    res["decode_b1_host_argmax"] = args.gen / to_host
    at16 = StepBatch(np.array([first], np.int32), (SeqChunk(0, 16, 1),), run.maxpos)
    res["decode_b1_host_argmax_gpu_ms_per_step"] = graph_step_ms(be, model, at16, greedy=False)
    res["decode_b1"] = args.gen / wall
    res["decode_b1_host_ms_per_step"] = 1e3 * cpu / args.gen
    res["profile_decode_b1_ms"] = profile_ops(be, model, StepBatch(np.array([first], np.int32),
                                              (SeqChunk(3, 0, 1),), run.maxpos))
    res["decode_b1_gpu_ms_per_step"] = graph_step_ms(be, model, at16)
    step_s = wall / args.gen
    res["decode_b1_gbs"] = (read_bytes + 16 * hp.n_layers * kv_tok_layer) / step_s / 1e9
    pre = []
    for rep in range(4):
        ids = rng.integers(0, vocab, 512)
        be.rt.synchronize()
        t = time.perf_counter()
        tok = run.prefill(1, ids)  # includes logits to host + argmax: the time to first token
        pre.append(time.perf_counter() - t)
    res["prefill_512"] = 512 / statistics.median(pre[1:])
    default = be.use_prefill_kernel
    be.use_prefill_kernel = not default  # the same prefill with the other attention kernel, for comparison
    pre_other = []
    for rep in range(3):
        be.rt.synchronize()
        t = time.perf_counter()
        run.prefill(1, rng.integers(0, vocab, 512))
        pre_other.append(time.perf_counter() - t)
    be.use_prefill_kernel = default
    res["prefill_512_other_attention_kernel"] = 512 / statistics.median(pre_other)
    res["prefill_attention_kernel"] = be.prefill_kernel if default else "split-K"
    res["profile_prefill_512_ms"] = profile_ops(be, model, StepBatch(rng.integers(0, vocab, 512).astype(np.int32),
                                                (SeqChunk(3, 0, 512),), run.maxpos))
    res["ttft_512_ms"] = 1e3 * statistics.median(pre[1:])
    ids = rng.integers(0, vocab, 2048)
    for a in range(0, 2048, 512):  # 2048-token context in 512-token chunks
        out = model.forward(StepBatch(ids[a:a + 512].astype(np.int32), (SeqChunk(2, a, 512),), run.maxpos))
    to_host, wall, _ = run.both_ways({2: int(np.argmax(out[0]))}, 2048, args.gen)
    res["decode_d2048_host_argmax"] = args.gen / to_host
    res["decode_d2048"] = args.gen / wall
    res["decode_d2048_gpu_ms_per_step"] = graph_step_ms(
        be, model, StepBatch(np.zeros(1, np.int32), (SeqChunk(2, 2048, 1),), run.maxpos))
    res["decode_d2048_gbs"] = (read_bytes + (2048 + args.gen // 2) * hp.n_layers * kv_tok_layer) / (wall / args.gen) / 1e9
    sample_peak()
    be.free_kv(kv)
    del tok

    # -- aggregate decode: B sequences, 512-token prompts, args.gen tokens each -----------------------
    batches = [int(b) for b in args.batches.split(",") if b]
    kv = model.alloc_kv(model.kv_layout(slots=max(batches), max_positions=512 + args.gen + 8, sink_tokens=4, dtype="f16"))
    run = Runner(be, model, 512 + args.gen + 8)
    firsts, pre_all = {}, []
    for s in range(max(batches)):
        t = time.perf_counter()
        firsts[s] = run.prefill(s, rng.integers(0, vocab, 512))
        pre_all.append(time.perf_counter() - t)
    res["prefill_512_over_all_prompts"] = 512 / statistics.median(pre_all)
    for b in batches:
        # every sequence continues from its prompt: the same depth for each batch size
        to_host, wall, cpu = run.both_ways({s: firsts[s] for s in range(b)}, 512, args.gen)
        res[f"agg_{b}_host_argmax"] = b * args.gen / to_host
        res[f"agg_{b}"] = b * args.gen / wall
        res[f"agg_{b}_host_ms_per_step"] = 1e3 * cpu / args.gen
        res[f"agg_{b}_gpu_ms_per_step"] = graph_step_ms(
            be, model, StepBatch(np.zeros(b, np.int32), tuple(SeqChunk(s, 512, 1) for s in range(b)), run.maxpos))
        if b in (8, 32):
            res[f"profile_agg_{b}_ms"] = profile_ops(be, model, StepBatch(
                np.array([firsts[s] for s in range(b)], np.int32), tuple(SeqChunk(s, 512, 1) for s in range(b)),
                run.maxpos))
    sample_peak()
    res["peak_device_gib"] = peak / GIB
    res["device_info"] = be.device_info()
    be.free_kv(kv)
    res.update(engine_decode(model, args.gen, vocab))

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump(res, f, indent=1)
    copy = res["copy_bw_gbs"]
    rows = [("decode b1 (128 after 16)", "decode_b1", "tok/s"), ("decode at depth 2048", "decode_d2048", "tok/s"),
            ("prefill 512", "prefill_512", "tok/s")] + [(f"aggregate decode {b} seqs", f"agg_{b}", "tok/s") for b in batches]
    print(f"\n{res['device']}  shape {args.shape}  weights {res['weight_gib']:.2f} GiB  copy bw {copy:.0f} GB/s")
    print(f"{'metric':30s} {'ours':>10s} {'llama.cpp H100':>15s} {'target':>8s}")
    for label, key, unit in rows:
        print(f"{label:30s} {res[key]:10.1f} {LLAMA_CPP_H100.get(key, float('nan')):15.0f} {TARGETS.get(key, float('nan')):8.0f}  {unit}")
    other = "split-K" if res["prefill_attention_kernel"] != "split-K" else be.prefill_kernel
    print(f"{'prefill 512, ' + other + ' attention':30s} {res['prefill_512_other_attention_kernel']:10.1f} tok/s (default: {res['prefill_attention_kernel']})")
    print(f"{'TTFT 512-token prompt':30s} {res['ttft_512_ms']:10.1f} ms")
    for key in ["decode_b1", "decode_d2048"] + [f"agg_{b}" for b in batches]:
        print(f"{key + ', logits to host':30s} {res[key + '_host_argmax']:10.1f} tok/s (each step's argmax on the host)")
    print(f"{'LLMEngine decode b1, overlap':30s} {res['engine_decode_b1_overlap_on']:10.1f} tok/s "
          f"(off: {res['engine_decode_b1_overlap_off']:.1f})")
    print(f"{'decode b1 achieved':30s} {res['decode_b1_gbs']:10.0f} GB/s = {100 * res['decode_b1_gbs'] / copy:.0f} % of copy")
    print(f"{'decode d2048 achieved':30s} {res['decode_d2048_gbs']:10.0f} GB/s = {100 * res['decode_d2048_gbs'] / copy:.0f} % of copy")
    print(f"{'decode b1 GPU time / step':30s} {res['decode_b1_gpu_ms_per_step'] or float('nan'):10.3f} ms (graph replay)")
    print(f"{'host time per decode step':30s} {res['decode_b1_host_ms_per_step']:10.3f} ms (b1, to graph launch)")
    for label in ("profile_decode_b1_ms", "profile_prefill_512_ms", "profile_agg_8_ms", "profile_agg_32_ms"):
        if label not in res:
            continue
        top = list(res[label].items())[:8]
        print(label, "total %.2f ms:" % sum(res[label].values()), ", ".join(f"{k} {v:.2f}" for k, v in top))
    print(f"{'peak device memory':30s} {res['peak_device_gib']:10.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
