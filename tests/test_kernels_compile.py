"""Every kernels/*.cu compiles for sm_90 with nvcc (the options CudaRuntime uses); the matmul kernels don't spill.

Runs wherever nvcc is on PATH (CI has nvcc 13.0, no GPU); skips cleanly without it. Each file is one case so a
broken kernel names itself.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import tempfile

import pytest

KERNEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
SOURCES = sorted(glob.glob(os.path.join(KERNEL_DIR, "*.cu")))
NVCC = shutil.which("nvcc")


@functools.lru_cache(maxsize=None)
def _compile(source: str) -> tuple[int, str, int]:
    """(return code, nvcc/ptxas -v messages, cubin bytes) with CudaRuntime's options; once per file per session."""
    from service.backends.cuda_runtime import NVCC_OPTIONS

    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        proc = subprocess.run([NVCC, "-arch=sm_90", "-cubin", *NVCC_OPTIONS, "-I", KERNEL_DIR, "-Xptxas", "-v",
                               "-o", cubin, source], capture_output=True, text=True, timeout=300)
        size = os.path.getsize(cubin) if os.path.exists(cubin) else 0
    return proc.returncode, proc.stderr, size


NO_SPILL = {"matmul_vec.cu", "matmul_dec.cu", "matmul_tiled.cu", "matmul_frag.cu", "matmul_pipe.cu", "quantize_act.cu", "get_rows.cu", "attention_mma.cu"}  # hot loops: local memory is a bug


@pytest.mark.slow  # ~45-80 s for all files on 2 busy cores (matmul_vec.cu alone ~30 s: 116 entries)
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_kernel_compiles_for_sm90(source: str) -> None:
    rc, stderr, size = _compile(source)
    assert rc == 0, stderr[-4000:]
    assert size > 0
    if os.path.basename(source) in NO_SPILL:  # ptxas -v reports stack/spill bytes per entry
        # ptxas sometimes keeps one 8-byte spill slot (seen on one matmul_vec entry with 56 registers); an array
        # that went to local memory shows as hundreds of bytes
        spills = [m.group(0) for m in re.finditer(r"(\d+) bytes spill stores", stderr) if int(m.group(1)) > 16]
        assert not spills, spills


def test_there_are_kernels() -> None:
    assert SOURCES, f"no .cu files under {KERNEL_DIR}"


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_every_vector_configuration_the_launcher_picks_is_compiled() -> None:
    """cuda_matmul chooses kernel names from tables (VEC_CONFIG, VEC_CONFIG_BY_TYPE, the benchmark's variants);
    each must exist in matmul_vec.cu, or the first decode step on a GPU fails."""
    from gguf import GGMLQuantizationType as T

    from bench.matmul_bench import VARIANT_TYPES, VARIANTS_C1, VARIANTS_CN
    from service.backends.cuda_matmul import _TYPES, VEC_COLS, CudaMatmul, DeviceWeight

    rc, stderr, _ = _compile(os.path.join(KERNEL_DIR, "matmul_vec.cu"))
    assert rc == 0, stderr[-4000:]
    compiled = set(re.findall(r"Compiling entry function '(\w+)'", stderr))
    mm = CudaMatmul(rt=None)
    wanted = set()
    for ggml_type in _TYPES:
        w = DeviceWeight("w", ggml_type, 1, 256, 0, 0, 0, 0)
        wanted |= {mm.vec_kernel(w, nc)[0] for nc in VEC_COLS}
        if ggml_type in VARIANT_TYPES:
            wanted |= {mm.vec_kernel(w, 1, v)[0] for v in VARIANTS_C1 if ggml_type == T.Q4_K or ":" not in v}
        if ggml_type == T.Q4_K:
            wanted |= {mm.vec_kernel(w, nc, v)[0] for nc, vs in VARIANTS_CN.items() for v in vs}
    assert wanted - compiled == set()


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
def test_every_decode_configuration_is_compiled() -> None:
    """DEC_CONFIG, the benchmark's DEC_VARIANTS, DEC_MIXED, GLU_CONFIGS, the prefetching twins of the default
    configurations (PREFETCH_ENTRIES) and the column entries of a few sequences (DEC_COLS, with DEC_MIXED's) name
    entries of matmul_dec.cu, with no spills."""
    from gguf import GGMLQuantizationType as T

    from service.backends.cuda_matmul import (DEC_COLS, DEC_CONFIG, DEC_MIXED, DEC_TYPES, DEC_VARIANTS, GLU_CONFIGS,
                                              GLU_DEFAULT, PREFETCH_ENTRIES, CudaMatmul, DeviceWeight)

    rc, stderr, _ = _compile(os.path.join(KERNEL_DIR, "matmul_dec.cu"))
    assert rc == 0, stderr[-4000:]
    compiled = set(re.findall(r"Compiling entry function '(\w+)'", stderr))
    assert DEC_TYPES == {"q4_k", "q6_k"} == set(DEC_VARIANTS)
    wanted, defaults = set(), set()
    for ggml_type in (T.Q4_K, T.Q6_K):
        w = DeviceWeight("w", ggml_type, 1, 256, 0, 0, 0, 0)
        assert all(c is None or c in DEC_VARIANTS[w.suffix] for c in DEC_CONFIG[w.suffix])
        names = {CudaMatmul.dec_kernel(w, f"dec:{v}")[0] for v in DEC_VARIANTS[w.suffix]}
        assert len(names) == len(DEC_VARIANTS[w.suffix])  # each configuration its own entry
        wanted |= names
        defaults |= {CudaMatmul.dec_kernel(DeviceWeight("w", ggml_type, 1, k, 0, 0, 0, 0))[0] for k in (256, 8192)}
        wanted |= {CudaMatmul.dec_kernel(DeviceWeight("w", ggml_type, 1, k, 0, 0, 0, 0), cols=c)[0]
                   for k in (256, 8192) for c in range(2, DEC_COLS[-1] + 1)}
    assert GLU_DEFAULT in GLU_CONFIGS
    assert defaults == PREFETCH_ENTRIES  # a twin for every default configuration
    twins = {f"{n}f" for n in PREFETCH_ENTRIES}
    mixed = {DEC_MIXED} | {f"{DEC_MIXED}c{c}" for c in DEC_COLS}
    assert wanted | twins | mixed | {f"matmul_dec_glu_q4_k_{c}" for c in GLU_CONFIGS} == compiled


@functools.lru_cache(maxsize=None)
def _ptx(source: str) -> str:
    from service.backends.cuda_runtime import NVCC_OPTIONS

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "k.ptx")
        proc = subprocess.run([NVCC, "-arch=sm_90", "-ptx", *NVCC_OPTIONS, "-I", KERNEL_DIR, "-o", out, source],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        with open(out) as f:
            return f.read()


PRE_WAIT_READS = ("matmul_dec_", "matmul_frag_q4_k_n1a", "matmul_frag_q6_k_n1a", "attention_split_", "rope_qk_",
                  "rms_norm_quant_x2")


@pytest.mark.slow
@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_every_kernel_waits_for_its_predecessor(source: str) -> None:
    """Decode graphs make every kernel -> kernel edge programmatic (cuda_runtime.CudaGraph), which is only safe
    for kernels that run griddepcontrol.wait before touching their inputs (kernels/pdl.cuh). Each entry's PTX
    must contain the wait, and no global load or store before it. Kernels in PRE_WAIT_READS may read, with read-only
    loads or async copies, data no kernel of the step writes: weights (matmul_dec_*: its first rows; matmul_frag_*_n1a*:
    each warp's first blocks; rms_norm_quant_x2:
    the norm weights; rope_qk_*: the frequencies), the step metadata (positions, sequence table: staged by the host
    or advanced by the step before), the KV ring's entries of earlier steps and the step's rope angle table, launched
    before the first layer's matmuls (attention_split_*)."""
    ptx = _ptx(source)
    entries = re.split(r"\n\.visible \.entry ", ptx)[1:]
    assert entries, f"no entry in {source}"
    for body in entries:
        name = body.split("(", 1)[0]
        assert "griddepcontrol.wait" in body, f"{name} does not wait for its predecessor"
        before = body.split("griddepcontrol.wait", 1)[0]
        if name.startswith(PRE_WAIT_READS):
            before = re.sub(r"\bld\.global\.nc\b", "", before)  # read-only loads (cp.async[.bulk] does not match)
        assert not re.search(r"\b(ld|st|atom|red)\.global", before), f"{name} touches global memory before the wait"
