"""CUDA runtime: context, kernel modules (kernels/*.cu via PyCUDA), one accounted allocator, CUDA graphs.

Everything the CUDA backend and the matmul kernels need from the driver lives here:

    rt = CudaRuntime(device=0, kernel_cache_dir=...)     # retains the device's primary context, one stream
    f = rt.function("norm", "rms_norm_f32")             # builds kernels/norm.cu once (nvcc -cubin, cached on disk)
    buf = rt.alloc(nbytes, "weights", "blk.0.attn_q.weight", layer=0, ggml_type="Q4_K")   # accounted
    g = CudaGraph(rt); g.capture(lambda: ...launches on rt.stream...); g.replay()

Accounting: every device byte the server allocates goes through `alloc` and is listed by `memory_records()`
under one category ("weights" | "kv" | "activations"); page-locked host buffers through `pinned`
("pinned_host", device=False). `baseline_used_bytes` is the device memory in use *before* this process
created its context (read through NVML when libnvidia-ml is there, else None), so the process's own usage
is `(total - free) - baseline_used_bytes` and the CUDA context's share is that minus the accounted bytes.

Kernels are compiled with nvcc to cubins (`build_cubin`; PyCUDA's SourceModule does the same plus an
`extern "C"` wrapper we don't want) and cached under build/kernels/ keyed by a hash of the sources, so
`python -m service.backends.cuda_runtime --arch sm_90` prebuilds them on a machine without a GPU.

PyCUDA is imported lazily (inside the constructor), so CPU-only installs can import this module.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from service.backends.base import MemoryRecord
from service.errors import LLMError

KERNEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "kernels")

CATEGORIES = ("weights", "kv", "activations", "pinned_host")
NVCC_OPTIONS = ("-O3", "-lineinfo")  # no --use_fast_math: kernels pick fast intrinsics explicitly where safe
SLAB_ALIGN = 256  # bytes; every buffer carved from a slab starts on this boundary
DEFAULT_CACHE_DIR = os.path.join(os.path.dirname(KERNEL_DIR), "build", "kernels")  # git-ignored


def cubin_path(module: str, arch: str, cache_dir: str | None = None) -> str:
    """Where kernels/<module>.cu's cubin for `arch` is cached: the name hashes the source, every header in
    kernels/, the arch and the nvcc options, so an edit anywhere rebuilds."""
    h = hashlib.sha256()
    h.update(f"{arch}|{' '.join(NVCC_OPTIONS)}|".encode())
    with open(os.path.join(KERNEL_DIR, f"{module}.cu"), "rb") as f:
        h.update(f.read())
    for name in sorted(os.listdir(KERNEL_DIR)):
        if name.endswith((".cuh", ".h")):
            with open(os.path.join(KERNEL_DIR, name), "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
    return os.path.join(cache_dir or DEFAULT_CACHE_DIR, f"{module}-{arch}-{h.hexdigest()[:16]}.cubin")


def build_cubin(module: str, arch: str, cache_dir: str | None = None) -> str:
    """Compile kernels/<module>.cu with nvcc to a cached cubin (no-op when cached); returns its path.
    Needs no GPU, so cubins can be built ahead on a CPU machine and carried."""
    out = cubin_path(module, arch, cache_dir)
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.{os.getpid()}.tmp"
    cmd = ["nvcc", "-cubin", f"-arch={arch}", *NVCC_OPTIONS, f"-I{KERNEL_DIR}", "-o", tmp,
           os.path.join(KERNEL_DIR, f"{module}.cu")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for kernels/{module}.cu:\n{proc.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


def prebuild(arch: str = "sm_90", cache_dir: str | None = None, jobs: int = 2) -> list[str]:
    """Build every kernels/*.cu for `arch` (in parallel)."""
    from concurrent.futures import ThreadPoolExecutor

    modules = sorted(n[:-3] for n in os.listdir(KERNEL_DIR) if n.endswith(".cu"))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda m: build_cubin(m, arch, cache_dir), modules))


class CudaUnavailableError(LLMError):
    """pycuda is not installed, no driver, or no usable device."""


@dataclass
class DeviceBuffer:
    """One accounted device allocation."""

    ptr: int  # device address
    nbytes: int
    alloc: Any  # pycuda.driver.DeviceAllocation (keeps the memory alive); None when carved from a slab
    record: MemoryRecord = field(repr=False, default=None)  # type: ignore[assignment]
    slab: "Slab | None" = field(repr=False, default=None)

    def __int__(self) -> int:
        return self.ptr


@dataclass(eq=False)
class Slab:
    """One driver allocation carved into accounted buffers (weights of a model, a KV arena)."""

    category: str
    name: str
    ptr: int
    nbytes: int
    alloc: Any  # pycuda.driver.DeviceAllocation
    used: int = 0  # bump offset
    records: set = field(default_factory=set)  # id() of the MemoryRecords carved from it


def _nvml_memory(device: int) -> tuple[int, int] | None:
    """(total, used) device bytes as NVML sees them (no CUDA context needed), or None without NVML."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None

    class _Mem(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    handle = ctypes.c_void_p()
    mem = _Mem()
    try:
        if nvml.nvmlInit_v2() != 0:
            return None
        try:
            if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(device), ctypes.byref(handle)) != 0:
                return None
            if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) != 0:
                return None
            return int(mem.total), int(mem.total - mem.free)
        finally:
            nvml.nvmlShutdown()
    except AttributeError:
        return None


class _ContextPush:
    """One push of a context on the creating thread, popped when the object dies. Kept in a thread-local, it
    dies when its thread ends (CPython clears a thread's locals on that thread as it exits), so no thread
    leaves PyCUDA a non-empty context stack (which aborts the process at exit)."""

    def __init__(self, context: Any):
        self.context = context
        context.push()

    def __del__(self) -> None:
        try:
            self.context.pop()
        except Exception:  # noqa: BLE001 - interpreter shutdown or a context already gone
            pass


class CudaRuntime:
    """The process's CUDA state: primary context, the one stream, kernel modules, accounted memory."""

    def __init__(self, device: int = 0, kernel_cache_dir: str | None = None):
        try:
            import pycuda.driver as cuda  # lazy: optional extra
        except ImportError as exc:
            raise CudaUnavailableError(f"pycuda is not usable here: {exc}") from None
        self._cuda = cuda
        self.driver = cuda  # pycuda.driver, for its enums (function attributes)
        try:
            cuda.init()
            if cuda.Device.count() <= device:
                raise CudaUnavailableError(f"no CUDA device {device} (found {cuda.Device.count()})")
            self.device = cuda.Device(device)
        except cuda.Error as exc:
            raise CudaUnavailableError(f"CUDA driver error: {exc}") from None
        self.device_index = device
        nvml = _nvml_memory(device)  # before our context exists
        self.context = self.device.retain_primary_context()
        self._thread = threading.local()  # .holder: this thread's push of our context (see ensure_current)
        self.ensure_current()
        atexit.register(self.shutdown)  # like pycuda.autoinit: pop before PyCUDA's module cleanup
        major, minor = self.device.compute_capability()
        self.arch = f"sm_{major}{minor}"  # "sm_90" on Hopper
        self.name = self.device.name()
        self.sm_count = int(self.device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT))
        self.l2_bytes = int(self.device.get_attribute(cuda.device_attribute.L2_CACHE_SIZE))
        self.stream = cuda.Stream()
        self.kernel_cache_dir = kernel_cache_dir or DEFAULT_CACHE_DIR
        self._modules: dict[str, Any] = {}
        self._functions: dict[tuple[str, str], Any] = {}
        self._records: list[MemoryRecord] = []
        self._live: dict[int, DeviceBuffer] = {}  # id(record) -> buffer, for free()
        self._lock = threading.Lock()
        self._slabs: list[Slab] = []
        self._open: dict[str, Slab] = {}  # category -> slab that plain alloc() calls sub-allocate from
        self._granularity: dict[str, int] = {}  # category -> driver bytes beyond the requested bytes
        # NVML's "used" before the context includes memory the driver reserves, which cuMemGetInfo's total
        # already leaves out: the baseline is what was used beyond that reservation (0 on an idle GPU).
        self.baseline_used_bytes: int | None = None
        if nvml is not None:
            _, cuda_total = self.mem_get_info()
            self.baseline_used_bytes = max(0, nvml[1] - (nvml[0] - cuda_total))
        self.context_bytes = self.process_used_bytes()  # the context alone; measure_context() after module loads

    def ensure_current(self) -> None:
        """Make our context current in the calling thread. The model loads on one thread, the engine steps on
        its own and MemoryStats runs on the event loop's: each pushes the (primary) context once. Cheap
        enough to call at every entry point (a thread-local attribute read)."""
        if getattr(self._thread, "holder", None) is None:
            self._thread.holder = _ContextPush(self.context)

    def measure_context(self) -> int:
        """Record the context's device memory now (call once kernel modules are loaded and before big
        allocations): process usage minus accounted bytes. MemoryStats reports it as its own line."""
        self.synchronize()
        self.context_bytes = self.process_used_bytes() - self.accounted_device_bytes()
        return self.context_bytes

    # -- kernels -----------------------------------------------------------------------------------
    def module(self, module: str) -> Any:
        """kernels/<module>.cu compiled for this device (once per process; cubin cached on disk)."""
        mod = self._modules.get(module)
        if mod is None:
            path = build_cubin(module, self.arch, self.kernel_cache_dir)
            mod = self._cuda.module_from_file(path)
            self._modules[module] = mod
        return mod

    def function(self, module: str, name: str) -> Any:
        """The extern "C" kernel `name` of kernels/<module>.cu."""
        key = (module, name)
        fn = self._functions.get(key)
        if fn is None:
            fn = self.module(module).get_function(name)
            self._functions[key] = fn
        return fn

    # -- memory ------------------------------------------------------------------------------------
    def _driver_alloc(self, nbytes: int, category: str) -> Any:
        """cuMemAlloc, charging the driver's rounding (free-memory delta minus bytes asked) to `category`."""
        free0, _ = self.mem_get_info()
        alloc = self._cuda.mem_alloc(max(nbytes, 1))
        free1, _ = self.mem_get_info()
        self._granularity[category] = self._granularity.get(category, 0) + (free0 - free1) - nbytes
        return alloc

    def _driver_free(self, alloc: Any, nbytes: int, category: str) -> None:
        free0, _ = self.mem_get_info()
        alloc.free()
        free1, _ = self.mem_get_info()
        self._granularity[category] = self._granularity.get(category, 0) - ((free1 - free0) - nbytes)

    def reserve(self, category: str, nbytes: int, name: str, open_for_alloc: bool = False) -> "Slab":
        """One device allocation that later `alloc(..., slab=)` calls carve up (256-byte aligned), so many
        tensors cost one driver allocation and no per-allocation rounding. open_for_alloc: plain alloc()
        calls of this category sub-allocate from it while they fit (until close())."""
        nbytes = int(nbytes)
        alloc = self._driver_alloc(nbytes, category)
        slab = Slab(category, name, int(alloc), nbytes, alloc)
        with self._lock:
            self._slabs.append(slab)
            if open_for_alloc:
                self._open[category] = slab
        return slab

    def close(self, category: str) -> None:
        """Stop sub-allocating `category` from its open slab (its unused tail stays reported)."""
        self._open.pop(category, None)

    def release(self, slab: "Slab") -> None:
        """Free a slab and every buffer carved from it."""
        with self._lock:
            self._records = [r for r in self._records if id(r) not in slab.records]
            for key in slab.records:
                self._live.pop(key, None)
            self._slabs.remove(slab)
            if self._open.get(slab.category) is slab:
                del self._open[slab.category]
        self._driver_free(slab.alloc, slab.nbytes, slab.category)

    def alloc(self, nbytes: int, category: str, name: str, layer: int | None = None,
              ggml_type: str | None = None, slab: "Slab | None" = None) -> DeviceBuffer:
        """Device memory, accounted under `category` (weights | kv | activations): carved from `slab` (or
        the category's open slab when it fits), else its own driver allocation."""
        assert category in CATEGORIES and category != "pinned_host", category
        self.ensure_current()
        nbytes = int(nbytes)
        rec = MemoryRecord(category, name, nbytes, layer, ggml_type, device=True)
        with self._lock:
            s = slab or self._open.get(category)
            off = -1
            if s is not None:
                off = (s.used + SLAB_ALIGN - 1) // SLAB_ALIGN * SLAB_ALIGN
                if off + nbytes > s.nbytes:
                    if slab is not None:
                        raise MemoryError(f"slab {s.name} is full ({s.used} of {s.nbytes} bytes used)")
                    off = -1
            if off >= 0:
                s.used = off + nbytes
                s.records.add(id(rec))
                buf = DeviceBuffer(s.ptr + off, nbytes, None, rec, s)
                self._records.append(rec)
                self._live[id(rec)] = buf
                return buf
        alloc = self._driver_alloc(nbytes, category)
        buf = DeviceBuffer(int(alloc), nbytes, alloc, rec)
        with self._lock:
            self._records.append(rec)
            self._live[id(rec)] = buf
        return buf

    def free(self, buf: DeviceBuffer) -> None:
        """Release an accounted buffer (load-time only; nothing is freed on the hot path). A buffer carved
        from a slab returns nothing to the driver: its bytes show as the slab's unused bytes."""
        with self._lock:
            self._live.pop(id(buf.record), None)
            self._records = [r for r in self._records if r is not buf.record]
            if buf.slab is not None:
                buf.slab.records.discard(id(buf.record))
        if buf.slab is None:
            self._driver_free(buf.alloc, buf.nbytes, buf.record.category)

    def pinned(self, shape: Any, dtype: Any, name: str, mapped: bool = False) -> np.ndarray:
        """Page-locked host array (fast async copies), accounted as pinned_host; mapped: also addressable by kernels
        (its device address: mapped_ptr)."""
        self.ensure_current()
        flags = self._cuda.host_alloc_flags.DEVICEMAP if mapped else 0
        arr = self._cuda.pagelocked_empty(shape, dtype, mem_flags=flags)  # shape as asked
        with self._lock:
            self._records.append(MemoryRecord("pinned_host", name, int(arr.nbytes), None, None, device=False))
        return arr

    @staticmethod
    def mapped_ptr(arr: np.ndarray) -> int:
        """The device address of a pinned(..., mapped=True) array."""
        return int(arr.base.get_device_pointer())

    def memory_records(self) -> list[MemoryRecord]:
        """Every accounted allocation, plus per category the bytes reserved in slabs but not handed out
        ("<category>.slab_unused") and the driver's allocation rounding ("<category>.allocator_rounding",
        measured as free-memory deltas around each cuMemAlloc): together they sum to what our allocations
        cost the driver."""
        with self._lock:
            recs = list(self._records)
            unused: dict[str, int] = {}
            for s in self._slabs:
                live = sum(r.nbytes for r in self._records if id(r) in s.records)
                unused[s.category] = unused.get(s.category, 0) + s.nbytes - live
            for cat, n in unused.items():
                recs.append(MemoryRecord(cat, f"{cat}.slab_unused", int(n), None, None, device=True))
            for cat, n in self._granularity.items():
                recs.append(MemoryRecord(cat, f"{cat}.allocator_rounding", int(n), None, None, device=True))
        return recs

    def accounted_device_bytes(self) -> int:
        return sum(r.nbytes for r in self.memory_records() if r.device)

    def mem_get_info(self) -> tuple[int, int]:
        """(free, total) device bytes from the driver (cuMemGetInfo)."""
        self.ensure_current()
        free, total = self._cuda.mem_get_info()
        return int(free), int(total)

    def process_used_bytes(self) -> int:
        """This process's device memory: driver's (total - free) minus what was in use before our context."""
        free, total = self.mem_get_info()
        return total - free - (self.baseline_used_bytes or 0)

    # -- copies and sync ---------------------------------------------------------------------------
    def htod(self, buf: DeviceBuffer | int, host: np.ndarray, offset: int = 0) -> None:
        """Async host->device copy on the stream (host should be pinned for a true async copy)."""
        self._cuda.memcpy_htod_async(int(buf) + offset, host, self.stream)

    def dtoh(self, host: np.ndarray, buf: DeviceBuffer | int, offset: int = 0) -> None:
        """Async device->host copy on the stream; synchronize() before reading `host`."""
        self._cuda.memcpy_dtoh_async(host, int(buf) + offset, self.stream)

    def memset_u8(self, buf: DeviceBuffer | int, value: int, nbytes: int) -> None:
        self._cuda.memset_d8_async(int(buf), value, nbytes, self.stream)

    def synchronize(self) -> None:
        self.ensure_current()
        self.stream.synchronize()

    def shutdown(self) -> None:
        """Pop the primary context (buffers should be released first)."""
        if getattr(self, "_popped", False):
            return
        self._popped = True
        try:
            self.synchronize()
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        self._thread.holder = None  # pops this thread's push (other threads pop theirs as they end)


# -- CUDA graphs through the driver API (PyCUDA has no graph capture) --------------------------------
CU_STREAM_CAPTURE_MODE_RELAXED = 2  # other threads' unsafe calls are not an error during capture
CU_GRAPH_NODE_TYPE_KERNEL = 0
CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC = 1
CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC = 1  # fires once every block of the upstream kernel ran pdl_trigger()


class _EdgeData(ctypes.Structure):  # CUgraphEdgeData
    _fields_ = [("from_port", ctypes.c_ubyte), ("to_port", ctypes.c_ubyte), ("type", ctypes.c_ubyte),
                ("reserved", ctypes.c_ubyte * 5)]


class _Driver:
    """ctypes bindings of the few libcuda graph entry points."""

    _lib: Any = None

    @classmethod
    def lib(cls) -> Any:
        if cls._lib is None:
            lib = ctypes.CDLL("libcuda.so.1")
            vp, pvp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
            lib.cuStreamBeginCapture_v2.argtypes = [vp, ctypes.c_int]
            lib.cuStreamEndCapture.argtypes = [vp, pvp]
            lib.cuGraphInstantiateWithFlags.argtypes = [pvp, vp, ctypes.c_ulonglong]
            lib.cuGraphLaunch.argtypes = [vp, vp]
            lib.cuGraphExecDestroy.argtypes = [vp]
            lib.cuGraphDestroy.argtypes = [vp]
            lib.cuGraphGetNodes.argtypes = [vp, pvp, ctypes.POINTER(ctypes.c_size_t)]
            pe = ctypes.POINTER(_EdgeData)
            lib.cuGraphGetEdges_v2.argtypes = [vp, pvp, pvp, pe, ctypes.POINTER(ctypes.c_size_t)]
            lib.cuGraphRemoveDependencies_v2.argtypes = [vp, pvp, pvp, pe, ctypes.c_size_t]
            lib.cuGraphAddDependencies_v2.argtypes = [vp, pvp, pvp, pe, ctypes.c_size_t]
            lib.cuGraphNodeGetType.argtypes = [vp, ctypes.POINTER(ctypes.c_int)]
            lib.cuGraphKernelNodeGetParams_v2.argtypes = [vp, vp]
            lib.cuFuncGetName.argtypes = [ctypes.POINTER(ctypes.c_char_p), vp]
            cls._lib = lib
        return cls._lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed with CUresult {rc}")


class CudaGraph:
    """Capture a sequence of launches on rt.stream once, then replay it with one cuGraphLaunch.

    programmatic: every kernel -> kernel edge of the captured graph becomes a programmatic one (Hopper's
    programmatic dependent launch), so a kernel is launched while its predecessor still runs and waits in
    pdl_wait() (kernels/pdl.cuh, which every kernel here starts with) instead of being launched after it."""

    def __init__(self, rt: CudaRuntime, programmatic: bool = False, plain_into: tuple[str, ...] = ()):
        self.rt = rt
        self.programmatic = programmatic
        self.plain_into = plain_into  # kernel-name prefixes whose incoming edges stay plain
        self._graph = ctypes.c_void_p()
        self._exec = ctypes.c_void_p()
        self.n_nodes = 0
        self.n_programmatic = 0  # edges made programmatic

    def capture(self, fn: Callable[[], None]) -> None:
        """Run `fn` (which only enqueues work on rt.stream) under stream capture and instantiate the graph."""
        lib = _Driver.lib()
        self.destroy()
        stream = ctypes.c_void_p(self.rt.stream.handle)
        _check(lib.cuStreamBeginCapture_v2(stream, CU_STREAM_CAPTURE_MODE_RELAXED), "cuStreamBeginCapture")
        try:
            fn()
        finally:
            rc = lib.cuStreamEndCapture(stream, ctypes.byref(self._graph))
        _check(rc, "cuStreamEndCapture")
        n = ctypes.c_size_t(0)
        _check(lib.cuGraphGetNodes(self._graph, None, ctypes.byref(n)), "cuGraphGetNodes")
        self.n_nodes = int(n.value)
        if self.programmatic:
            self.n_programmatic = self._make_programmatic()
        _check(lib.cuGraphInstantiateWithFlags(ctypes.byref(self._exec), self._graph, 0), "cuGraphInstantiate")

    def _make_programmatic(self) -> int:
        """Replace each full-completion kernel -> kernel edge by a programmatic one; returns how many."""
        lib = _Driver.lib()
        n = ctypes.c_size_t(0)
        _check(lib.cuGraphGetEdges_v2(self._graph, None, None, None, ctypes.byref(n)), "cuGraphGetEdges")
        count = int(n.value)
        if count == 0:
            return 0
        frm, to, data = (ctypes.c_void_p * count)(), (ctypes.c_void_p * count)(), (_EdgeData * count)()
        _check(lib.cuGraphGetEdges_v2(self._graph, frm, to, data, ctypes.byref(n)), "cuGraphGetEdges")
        kinds: dict[int, int] = {}

        def is_kernel(node: int) -> bool:
            if node not in kinds:
                t = ctypes.c_int(-1)
                _check(lib.cuGraphNodeGetType(ctypes.c_void_p(node), ctypes.byref(t)), "cuGraphNodeGetType")
                kinds[node] = t.value
            return kinds[node] == CU_GRAPH_NODE_TYPE_KERNEL

        def name(node: int) -> str:  # the kernel's name (each node is looked up about once: one incoming edge)
            params = (ctypes.c_char * 128)()  # CUDA_KERNEL_NODE_PARAMS: the CUfunction comes first
            _check(lib.cuGraphKernelNodeGetParams_v2(ctypes.c_void_p(node), params), "cuGraphKernelNodeGetParams")
            fn = ctypes.c_void_p.from_buffer(params).value
            out = ctypes.c_char_p()
            _check(lib.cuFuncGetName(ctypes.byref(out), ctypes.c_void_p(fn)), "cuFuncGetName")
            return (out.value or b"").decode()

        sel = [i for i in range(count) if data[i].type == 0 and data[i].from_port == 0
               and is_kernel(frm[i]) and is_kernel(to[i])
               and not (self.plain_into and name(to[i]).startswith(self.plain_into))]
        if not sel:
            return 0
        k = len(sel)
        f, t = (ctypes.c_void_p * k)(*[frm[i] for i in sel]), (ctypes.c_void_p * k)(*[to[i] for i in sel])
        old, new = (_EdgeData * k)(), (_EdgeData * k)()
        for j in range(k):
            new[j].from_port = CU_GRAPH_KERNEL_NODE_PORT_PROGRAMMATIC
            new[j].type = CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC
        _check(lib.cuGraphRemoveDependencies_v2(self._graph, f, t, old, k), "cuGraphRemoveDependencies")
        _check(lib.cuGraphAddDependencies_v2(self._graph, f, t, new, k), "cuGraphAddDependencies")
        return k

    def replay(self) -> None:
        assert self._exec.value, "capture first"
        _check(_Driver.lib().cuGraphLaunch(self._exec, ctypes.c_void_p(self.rt.stream.handle)), "cuGraphLaunch")

    def replay_ms(self, n: int = 1) -> float:
        """GPU time of one replay in ms: n replays back to back, between two CUDA events on the runtime's stream
        (the benchmarks' timer; waits for them)."""
        start, end = self.rt._cuda.Event(), self.rt._cuda.Event()
        start.record(self.rt.stream)
        for _ in range(n):
            self.replay()
        end.record(self.rt.stream)
        end.synchronize()
        return end.time_since(start) / n

    def destroy(self) -> None:
        lib = _Driver.lib() if (self._exec.value or self._graph.value) else None
        if self._exec.value:
            lib.cuGraphExecDestroy(self._exec)
            self._exec = ctypes.c_void_p()
        if self._graph.value:
            lib.cuGraphDestroy(self._graph)
            self._graph = ctypes.c_void_p()

    def __del__(self) -> None:
        try:
            self.destroy()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


if __name__ == "__main__":  # prebuild cubins: python -m service.backends.cuda_runtime --arch sm_90
    import argparse

    ap = argparse.ArgumentParser(description="prebuild kernels/*.cu cubins")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    for p in prebuild(a.arch, a.cache_dir, a.jobs):
        print(p)
