// PROTOTYPE (bench/stream_proto.py): the batch-1 decode step's matmuls as one persistent launch that streams weights
// across matmul boundaries.
//
// Question it answers: in the decode graph every matmul is its own launch, and the copy engine of an SM goes idle
// at each boundary (round ten: the matmuls reach 59-90 % of copy inside the step, 75-86 % alone). Here one grid of
// one block per SM walks a list of phases (one matrix each); a warp's jobs (RT rows of one matrix, at most SLOT
// bytes) are numbered over the concatenated phases, J = gw, gw + NW, ... (gw = warp * gridDim.x + blockIdx.x, so
// consecutive jobs go to different SMs), and its ring of ST stages is refilled with its next job whatever phase that
// is in. A phase flagged `sync` starts after a grid barrier (every earlier phase's outputs written): the copies of
// its first jobs were issued before the barrier, during the phases before.
//
// The sums are matmul_dec.cu's group_dot (included below: the same arithmetic, so the outputs are bit-identical to
// its r<RT>s<STAGES> entries). Activations are read through __ldg as there: valid only while no phase writes them
// (the prototype's phases do not; a fused step would read them with coherent loads).
#include "matmul_dec.cu"

namespace {

constexpr int SLOT = 9216;  // bytes of a stage: 4 Q4_K rows of 4096, 2 Q6_K rows of 4096, 1 Q6_K row of 11008

struct Phase {  // one matrix: out (N) = W (N, K) . x, x in the decode copy at xd / dsd / xs16
    const uint8_t* q;
    const uint8_t* s;
    float* out;
    const int8_t* xd;
    const float4* dsd;
    const int4* xs16;
    int N, K, Kp, type;  // type 0: Q4_K, 1: Q6_K
    int rt, groups, sync, pad;  // rows per job (rt * row bytes <= SLOT), ceil(N / rt), grid barrier before
    int gid, prev_jobs;         // mode 3: the launch group it belongs to, and the jobs of the group before it
};

__device__ __forceinline__ int row_bytes_of(const Phase& p) { return (p.K >> 8) * (p.type ? 208 : 144); }

// the next job of a warp after group g of phase p: NW jobs on, over the concatenated phases
__device__ __forceinline__ void advance(const Phase* ph, int n_ph, int& p, int& g, int step) {
    g += step;
    while (p < n_ph && g >= ph[p].groups) g -= ph[p].groups, ++p;
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// Barrier k (1, 2, ...) of the grid: every block's writes before it are visible to every block after it. count
// starts at 0 and is reset by the last block to leave the kernel (exit_count). mode 1: thread 0 (which also issues
// bulk copies) fences and adds; mode 2: the block's last thread (which issues none) adds with release semantics.
__device__ __forceinline__ unsigned long long globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

// trace (when not null): per barrier and block, the ns when the block's last warp arrived and when it left
__device__ __forceinline__ void grid_sync(unsigned* count, unsigned k, int mode, unsigned long long* trace) {
    __syncthreads();
    if (trace && threadIdx.x == 0) trace[((k - 1) * gridDim.x + blockIdx.x) * 2] = globaltimer();
    const unsigned target = k * gridDim.x;
    if (mode == 1 && threadIdx.x == 0) {
        __threadfence();
        atomicAdd(count, 1u);
        while (ld_acquire(count) < target) {
        }
    } else if (mode == 2 && threadIdx.x == blockDim.x - 1) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
        while (ld_acquire(count) < target) {
        }
    }
    __syncthreads();
    if (trace && threadIdx.x == 0) trace[((k - 1) * gridDim.x + blockIdx.x) * 2 + 1] = globaltimer();
}

template <int RT, class W>
__device__ __forceinline__ void job_rt(const Phase& P, int g, const uint8_t* rows, int j, SubBlocks sb) {
    const int rb = row_bytes_of(P), row0 = g * RT;
    Sums<RT> acc = group_dot<W, RT>(Group{P.q, P.s, P.out, P.N, row0}, rows, rb, 0, P.K >> 6, P.K >> 8, j, sb,
                                    P.xd, P.dsd, P.xs16, P.Kp);
#pragma unroll
    for (int t = 0; t < RT; ++t) acc.v[t] = warp_sum(acc.v[t]);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int t = 0; t < RT; ++t)
            if (row0 + t < P.N) P.out[row0 + t] = acc.v[t];
    }
}

// Chunked: x's K is cut into CH chunks (block boundaries c * nbk / CH); a chunk's units are summed as soon as the bit c
// of *ready says the producers of that chunk have finished (the sums per chunk kept apart and added in chunk order at
// the end, so the result does not depend on the order the chunks came in).
constexpr int CH = 4;
__device__ __forceinline__ int chunk_block(int c, int nbk) { return c * nbk / CH; }

template <int RT, class W>
__device__ __forceinline__ void job_rt_chunked(const Phase& P, int g, const uint8_t* rows, int j, SubBlocks sb,
                                               const volatile int* ready) {
    const int rb = row_bytes_of(P), row0 = g * RT, nbk = P.K >> 8;
    const Group gr{P.q, P.s, P.out, P.N, row0};
    float part[CH][RT];
    int done = 0;
    while (done != (1 << CH) - 1) {
        int avail = ready ? *ready : (1 << CH) - 1;
        avail = __shfl_sync(0xffffffffu, avail, 0) & ~done;
        if (!avail) continue;
        __threadfence_block();
#pragma unroll
        for (int c = 0; c < CH; ++c) {
            if (!(avail >> c & 1)) continue;
            const int b0 = chunk_block(c, nbk), b1 = chunk_block(c + 1, nbk);
            const Sums<RT> a = group_dot<W, RT>(gr, rows + b0 * W::BYTES, rb, 4 * b0, 4 * b1, nbk, j, sb, P.xd,
                                                P.dsd, P.xs16, P.Kp);
#pragma unroll
            for (int t = 0; t < RT; ++t) part[c][t] = a.v[t];
        }
        done |= avail;
    }
    float acc[RT];
#pragma unroll
    for (int t = 0; t < RT; ++t) {
        acc[t] = part[0][t];
#pragma unroll
        for (int c = 1; c < CH; ++c) acc[t] += part[c][t];
        acc[t] = warp_sum(acc[t]);
    }
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int t = 0; t < RT; ++t)
            if (row0 + t < P.N) P.out[row0 + t] = acc[t];
    }
}

template <class W>
__device__ __forceinline__ void job_type_chunked(const Phase& P, int g, const uint8_t* rows, int j, SubBlocks sb,
                                                 const volatile int* ready) {
    switch (P.rt) {
        case 1: job_rt_chunked<1, W>(P, g, rows, j, sb, ready); break;
        case 2: job_rt_chunked<2, W>(P, g, rows, j, sb, ready); break;
        default: job_rt_chunked<4, W>(P, g, rows, j, sb, ready); break;
    }
}

template <class W>
__device__ __forceinline__ void job_type(const Phase& P, int g, const uint8_t* rows, int j, SubBlocks sb) {
    switch (P.rt) {
        case 1: job_rt<1, W>(P, g, rows, j, sb); break;
        case 2: job_rt<2, W>(P, g, rows, j, sb); break;
        case 3: job_rt<3, W>(P, g, rows, j, sb); break;
        default: job_rt<4, W>(P, g, rows, j, sb); break;
    }
}

template <int SW, int ST>
__device__ __forceinline__ void stream_body(const Phase* __restrict__ ph, int n_ph, unsigned* sync_words, int syncs,
                                            unsigned long long* trace) {
    extern __shared__ __align__(128) uint8_t wsm[];  // (SW, ST, SLOT)
    __shared__ __align__(8) uint64_t bar[SW][ST];
    __shared__ int2 job_of[SW][ST];  // (phase, group) of the job in each stage; phase n_ph: none
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nw = SW * gridDim.x, gw = warp * gridDim.x + blockIdx.x;
    uint8_t* stages = wsm + (size_t)warp * ST * SLOT;
    // mode 4: jobs are not dealt out in turn but taken from one ticket counter (sync_words[2]) in order, each warp
    // drawing its next ticket when it copies a job (one draw ahead, so the atomic's latency is hidden)
    const bool tickets = syncs == 4;
    unsigned* ticket = sync_words + 2;

    int ip = 0, ig = 0;  // lane 0: the next job to copy (tickets: the last one drawn)
    unsigned last_t = 0, next_t = 0;
    if (lane == 0) {
        if (tickets) next_t = atomicAdd(ticket, 1u);
        else advance(ph, n_ph, ip, ig, gw);
    }
    auto issue = [&](int s) {
        if (tickets) {
            const unsigned t = next_t;
            if (ip < n_ph) advance(ph, n_ph, ip, ig, static_cast<int>(t - last_t));
            last_t = t;
            if (ip < n_ph) next_t = atomicAdd(ticket, 1u);
        }
        job_of[warp][s] = make_int2(ip, ig);
        if (ip >= n_ph) return;
        const Phase& P = ph[ip];
        const int rb = row_bytes_of(P), row0 = ig * P.rt;
        bulk_copy(stages + (size_t)s * SLOT, P.q + (size_t)row0 * rb, min(P.rt, P.N - row0) * rb, &bar[warp][s]);
        if (!tickets) advance(ph, n_ph, ip, ig, nw);
    };
    if (lane == 0) {
#pragma unroll
        for (int s = 0; s < ST; ++s) bulk_init(&bar[warp][s]);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#pragma unroll
        for (int s = 0; s < ST; ++s) issue(s);
    }
    __syncwarp();
    pdl_start();

    const int j = lane & 3;
    const SubBlocks sb{(2u * (j & 1)) | ((2u * (j & 1) + 1) << 4), j >= 2};
    uint32_t parity = 0;
    int s = 0;
    unsigned barriers = 0;
    // mode 3: no grid barriers. Each warp adds the jobs it did in a launch group to that group's counter (sync_words
    // [2 + gid], with release semantics, lane 0 having written their outputs) when it leaves the group, and waits for
    // the group before a job's to be counted complete (acquire) before that job.
    unsigned* counters = sync_words + 2;
    int done_gid = -1, cur_gid = -1, cur_jobs = 0;  // highest group seen complete; the group being counted
    auto arrive = [&]() {
        if (cur_jobs > 0 && lane == 0)
            asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(counters + cur_gid), "r"(cur_jobs) : "memory");
        cur_jobs = 0;
    };
    for (int p = 0; p < n_ph; ++p) {
        if (p > 0 && syncs && syncs != 3 && ph[p].sync) grid_sync(sync_words, ++barriers, syncs == 4 ? 2 : syncs, trace);
        for (int2 job = job_of[warp][s]; job.x == p; job = job_of[warp][s]) {
            const Phase P = ph[p];
            if (syncs == 3) {
                if (P.gid != cur_gid) arrive(), cur_gid = P.gid;
                if (P.gid - 1 > done_gid) {
                    if (lane == 0)
                        while (ld_acquire(counters + P.gid - 1) < static_cast<unsigned>(P.prev_jobs)) {
                        }
                    __syncwarp();
                    done_gid = P.gid - 1;
                }
                ++cur_jobs;
            }
            bulk_wait(&bar[warp][s], (parity >> s) & 1u);
            parity ^= 1u << s;
            const uint8_t* rows = stages + (size_t)s * SLOT;
            if (P.type) job_type<DecQ6K>(P, job.y, rows, j, sb);
            else job_type<DecQ4K>(P, job.y, rows, j, sb);
            __syncwarp();  // every lane is done reading stage s
            if (lane == 0) {
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                issue(s);
            }
            __syncwarp();  // job_of[warp][s] is written
            s = s + 1 == ST ? 0 : s + 1;
        }
    }
    if (syncs == 3) arrive();
    if (syncs) {  // the last block out resets the barrier count and the group counters for the next launch
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            if (atomicAdd(sync_words + 1, 1u) == gridDim.x - 1) {
                sync_words[0] = 0;
                sync_words[1] = 0;
                if (syncs == 3)
                    for (int i = 0; i <= ph[n_ph - 1].gid; ++i) counters[i] = 0;
                if (syncs == 4) *ticket = 0;
                __threadfence();
            }
        }
    }
}

// --- one ring of slots per block, shared by its warps ----------------------------------------------------------------
// Above, each warp has a ring of its own, so a warp with one job more than the others in a phase finishes a DRAM
// round trip later. Here block b's jobs are J = b, b + nb, ... (k-th: b + k nb, over the concatenated phases); job k
// is copied into slot k % NS once job k - NS has been read, and the NWC compute warps take the jobs in order from a
// shared counter, so within a block the work is balanced to a job. One more warp (the agent) holds the grid
// barriers: barrier g (before launch group g) once the block has finished every job before that group, and the
// compute warps wait for it only when they take a job of group g.
constexpr int MAX_PH = 256;

// syncs 2: no barriers; a job's outputs count towards its K chunk of the next launch group's x (ready counters,
// `expect` jobs each, by group and chunk: gid * CH + c; Phase.pad = the next group's K / 256, 0 for the last), and the
// agent publishes each chunk of the group before the compute warps' next ones in a bit mask (ready_bits[gid]).
template <int NWC, int NS>
__device__ __forceinline__ void pool_body(const Phase* __restrict__ ph, int n_ph, const int* __restrict__ starts,
                                          unsigned* sync_words, int syncs, unsigned long long* trace,
                                          unsigned* ready_ctr, const int* __restrict__ expect) {
    extern __shared__ __align__(128) uint8_t wsm[];  // (NS, SLOT)
    __shared__ __align__(8) uint64_t bar[NS];
    __shared__ int2 job_of[NS];
    __shared__ int kst[MAX_PH + 1];  // this block's jobs before phase p
    __shared__ int next_k, done_k, passed;
    __shared__ int ready_bits[MAX_PH];
    const int nb = gridDim.x, b = blockIdx.x;
    const int n_groups = ph[n_ph - 1].gid + 1;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int p = threadIdx.x; p <= n_ph; p += blockDim.x) {
        const int st = starts[p];
        kst[p] = st > b ? (st - b + nb - 1) / nb : 0;
    }
    for (int g = threadIdx.x; g < MAX_PH; g += blockDim.x) ready_bits[g] = 0;
    if (threadIdx.x == 0) {
        next_k = done_k = passed = 0;
        for (int i = 0; i < NS; ++i) bulk_init(&bar[i]);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    const int total_k = kst[n_ph];
    auto issue = [&](int k) {  // (one lane) job k into slot k % NS
        if (k >= total_k) return;
        int lo = 0, hi = n_ph - 1;  // its phase: the last p with kst[p] <= k
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (kst[mid] <= k) lo = mid;
            else hi = mid - 1;
        }
        const Phase& P = ph[lo];
        const int g = b + k * nb - starts[lo], slot = k % NS;
        job_of[slot] = make_int2(lo, g);
        const int rb = row_bytes_of(P), row0 = g * P.rt;
        bulk_copy(wsm + (size_t)slot * SLOT, P.q + (size_t)row0 * rb, min(P.rt, P.N - row0) * rb, &bar[slot]);
    };
    if (threadIdx.x == 0)
        for (int k = 0; k < NS; ++k) issue(k);
    __syncthreads();
    pdl_start();

    volatile int* vdone = &done_k;
    volatile int* vpassed = &passed;
    if (warp == NWC) {  // the agent
        if (lane == 0 && syncs == 2) {
            for (int g = 0; g + 1 < n_groups; ++g) {  // group g's chunks, as they complete
                int bits = 0;
                while (bits != (1 << CH) - 1) {
                    for (int c = 0; c < CH; ++c)
                        if (!(bits >> c & 1) && ld_acquire(ready_ctr + g * CH + c) >= static_cast<unsigned>(expect[g * CH + c])) {
                            bits |= 1 << c;
                            __threadfence_block();
                            reinterpret_cast<volatile int*>(ready_bits)[g] = bits;
                        }
                }
            }
        }
        if (lane == 0 && syncs == 1) {
            for (int p = 1; p < n_ph; ++p) {
                if (!ph[p].sync) continue;
                const unsigned g = ph[p].gid;
                while (*vdone < kst[p]) {
                }
                __threadfence_block();
                if (trace) trace[((g - 1) * nb + b) * 2] = globaltimer();
                asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(sync_words) : "memory");
                while (ld_acquire(sync_words) < g * nb) {
                }
                if (trace) trace[((g - 1) * nb + b) * 2 + 1] = globaltimer();
                __threadfence_block();
                *vpassed = static_cast<int>(g);
            }
        }
    } else {
        const int j = lane & 3;
        const SubBlocks sb{(2u * (j & 1)) | ((2u * (j & 1) + 1) << 4), j >= 2};
        for (;;) {
            int k = 0;
            if (lane == 0) k = atomicAdd(&next_k, 1);
            k = __shfl_sync(0xffffffffu, k, 0);
            if (k >= total_k) break;
            const int slot = k % NS;
            bulk_wait(&bar[slot], (k / NS) & 1);
            const int2 job = job_of[slot];
            const Phase P = ph[job.x];
            const uint8_t* rows = wsm + (size_t)slot * SLOT;
            if (syncs == 2) {
                const volatile int* rdy = P.gid > 0 ? ready_bits + P.gid - 1 : nullptr;
                if (P.type) job_type_chunked<DecQ6K>(P, job.y, rows, j, sb, rdy);
                else job_type_chunked<DecQ4K>(P, job.y, rows, j, sb, rdy);
                __syncwarp();
                if (lane == 0) {
                    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                    issue(k + NS);
                    if (P.pad) {  // the job's outputs towards their chunk of the next group's x
                        const int c = (((job.y * P.rt) >> 8) + 1) * CH - 1;
                        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(ready_ctr + P.gid * CH + c / P.pad)
                                     : "memory");
                    }
                }
                continue;
            }
            if (syncs) {
                if (lane == 0)
                    while (*vpassed < P.gid) {
                    }
                __syncwarp();
                __threadfence_block();
            }
            if (P.type) job_type<DecQ6K>(P, job.y, rows, j, sb);
            else job_type<DecQ4K>(P, job.y, rows, j, sb);
            __syncwarp();  // every lane is done reading the slot
            if (lane == 0) {
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                issue(k + NS);
                __threadfence_block();  // the job's outputs before its count
                atomicAdd(&done_k, 1);
            }
        }
    }
    if (syncs) {  // the last block out resets the barrier count
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            if (atomicAdd(sync_words + 1, 1u) == gridDim.x - 1) {
                sync_words[0] = 0;
                sync_words[1] = 0;
                if (syncs == 2)
                    for (int i = 0; i < n_groups * CH; ++i) ready_ctr[i] = 0;
                __threadfence();
            }
        }
    }
}

}  // namespace

// stream_proto_w<SW>s<ST>: grid = SMs (one block each), SW warps, SW * ST * SLOT bytes of dynamic shared memory.
// ph: n_ph Phase records; sync_words: 2 + launch groups zeroed words (kept zero between launches); syncs: grid_sync's
// mode (1, 2), 3 the group counters in its place, 4 mode 2 with jobs drawn from a ticket counter, 0: no ordering at
// all (the bound a free-running stream reaches);
// trace: null, or 2 x barriers x blocks words (grid_sync).
#define STREAM_ENTRY(SW, ST)                                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * SW, 1)                                                  \
        stream_proto_w##SW##s##ST(const Phase* ph, int n_ph, unsigned* sync_words, int syncs,                \
                                  unsigned long long* trace) {                                                \
        stream_body<SW, ST>(ph, n_ph, sync_words, syncs, trace);                                              \
    }
STREAM_ENTRY(12, 2)
STREAM_ENTRY(8, 3)
STREAM_ENTRY(6, 4)
STREAM_ENTRY(24, 1)

// stream_pool_w<NWC>n<NS>: grid = SMs, NWC + 1 warps, NS * SLOT bytes of dynamic shared memory; starts: n_ph + 1
// prefix sums of the phases' jobs; syncs 0, 1 (grid barriers by the agent warp) or 2 (chunk counters: ready, expect).
#define POOL_ENTRY(NWC, NS)                                                                                   \
    extern "C" __global__ void __launch_bounds__(32 * (NWC + 1), 1)                                           \
        stream_pool_w##NWC##n##NS(const Phase* ph, int n_ph, const int* starts, unsigned* sync_words,        \
                                  int syncs, unsigned long long* trace, unsigned* ready, const int* expect) { \
        pool_body<NWC, NS>(ph, n_ph, starts, sync_words, syncs, trace, ready, expect);                        \
    }
POOL_ENTRY(11, 24)
POOL_ENTRY(7, 24)
