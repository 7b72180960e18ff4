// rope_f32: rotary position embedding, both GGML modes, out-of-place.
//   x, out: (T, n_heads * head_dim) float32. Row t is rotated at position p = pos[t] (int32 device buffer);
//   with sink != 0 at min(p, max_positions - 1) (the StreamingKVCache sink-query position).
//   Rotated pair i (0 <= i < n_rot/2) uses angle = p * inv_freq[i] in float64 (inv_freq already holds the
//   llama3 freq factors and linear scaling), cos/sin rounded to float32 as in the NumPy twin:
//     normal (GGML llama): (x[2i], x[2i+1])        -> (a cos - b sin, a sin + b cos)
//     neox:                (x[i], x[i + n_rot/2])   -> same
//   Dimensions >= n_rot are copied unchanged.
// Launch: grid (T), block 256; threads stride over (head, pair) jobs.

template <bool NEOX>
__device__ void rope_row(const float* __restrict__ x, float* __restrict__ out, const int* __restrict__ pos,
                         const double* __restrict__ inv_freq, int n_heads, int head_dim, int n_rot,
                         int sink, int max_positions) {
    const int t = blockIdx.x;
    int p = pos[t];
    if (sink && p > max_positions - 1) p = max_positions - 1;
    const int half = n_rot >> 1;
    const size_t row = (size_t)t * n_heads * head_dim;
    const int jobs = n_heads * half;
    for (int j = threadIdx.x; j < jobs; j += blockDim.x) {
        const int h = j / half, i = j - h * half;
        double sd, cd;
        sincos((double)p * inv_freq[i], &sd, &cd);
        const float s = (float)sd, c = (float)cd;
        const int ia = NEOX ? i : 2 * i;
        const int ib = NEOX ? i + half : 2 * i + 1;
        const size_t base = row + (size_t)h * head_dim;
        const float a = x[base + ia], b = x[base + ib];
        out[base + ia] = a * c - b * s;
        out[base + ib] = a * s + b * c;
    }
    const int rest = head_dim - n_rot;
    if (rest > 0) {
        for (int j = threadIdx.x; j < n_heads * rest; j += blockDim.x) {
            const int h = j / rest, d = n_rot + (j - h * rest);
            out[row + (size_t)h * head_dim + d] = x[row + (size_t)h * head_dim + d];
        }
    }
}

extern "C" __global__ void rope_f32(const float* __restrict__ x, float* __restrict__ out, const int* __restrict__ pos,
                                    const double* __restrict__ inv_freq, int n_heads, int head_dim, int n_rot,
                                    int sink, int max_positions) {
    rope_row<false>(x, out, pos, inv_freq, n_heads, head_dim, n_rot, sink, max_positions);
}

extern "C" __global__ void rope_neox_f32(const float* __restrict__ x, float* __restrict__ out,
                                         const int* __restrict__ pos, const double* __restrict__ inv_freq,
                                         int n_heads, int head_dim, int n_rot, int sink, int max_positions) {
    rope_row<true>(x, out, pos, inv_freq, n_heads, head_dim, n_rot, sink, max_positions);
}
