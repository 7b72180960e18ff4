// Shared by rope.cu and attention.cu (which rotates q and the new k itself at decode): one rotated pair.
#pragma once

#define ROPE_MAX_HALF 256

// (a c - b s, a s + b c) with every product and sum rounded on its own, as NumPy's float32 arithmetic does (no
// fused multiply-add), so rotated values match the NumPy twin bit for bit rather than to an ulp (an ulp can flip
// an int8 KV quant)
__device__ __forceinline__ float2 rotate(float a, float b, float c, float s) {
    return make_float2(__fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)), __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c)));
}

// (cos p f, sin p f, cos ps f, sin ps f) of one rotated pair's frequency f at a row's position p and its sink
// position ps: the angle in double, rounded to float as in the NumPy twin
__device__ __forceinline__ float4 rope_angles(int p, int ps, double f) {
    double sd, cd;
    sincos((double)p * f, &sd, &cd);
    const float c = (float)cd, s = (float)sd;
    if (ps != p) sincos((double)ps * f, &sd, &cd);
    return make_float4(c, s, (float)cd, (float)sd);
}
