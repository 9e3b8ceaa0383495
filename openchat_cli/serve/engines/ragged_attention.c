/* Ragged decode attention for CPU: one new query token per sequence against that sequence's own
 * KV cache, each of its own length, with no padding and no copies.
 *
 * Why a kernel: on a small model the padded, masked sdpa over the batch's cache spends most of
 * its time on padding, and a Python loop of per-row sdpa calls pays torch's per-call overhead
 * 32 times per layer. This reads each key and value row once, for all the query heads that
 * share it (GQA), and keeps the softmax online (one pass, blocks of BLOCK keys), in fp32.
 *
 * ragged_prefill_attention does the same for a packed row of prompts (causal within each), in
 * tiles: see its section below.
 *
 * Compiled at run time by ragged_attention.py with the system C compiler and loaded with ctypes,
 * so it is plain C: no torch or Python headers. Loops are written for the auto-vectorizer; exp is
 * a polynomial (no libm, no -ffast-math, which in a shared library would switch the whole
 * process's floating point to flush-to-zero).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 128
#define NEG_BIG (-3.0e38f)

enum { DTYPE_F32 = 0, DTYPE_BF16 = 1 };

/* exp(x) for x <= 0, relative error ~2e-7: 2^n * p(r) with r = x - n ln2, |r| <= ln2 / 2. */
static inline float exp_nonpositive(float x) {
    x = x < -87.0f ? -87.0f : x;
    float t = x * 1.44269504088896341f;
    int32_t n = (int32_t)(t < 0.0f ? t - 0.5f : t + 0.5f);
    float fn = (float)n;
    float r = x - fn * 0.693145751953125f - fn * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.16666667f + r * (0.041666668f + r * (0.008333334f +
                                                                                         r * 0.0013888889f)))));
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float bf16_to_f32(uint16_t x) {
    uint32_t bits = (uint32_t)x << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest even, as torch's float -> bfloat16 conversion does; NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

/* Element i of a float32 or bfloat16 array (bf16 is constant where this is inlined). */
static inline __attribute__((always_inline)) float load(const void *p, int64_t i, const int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* One block of n keys (rows of D elements) for the g query heads that share them: scores, the
 * online softmax update (running max m, running sum l, rescaled accumulators), then p @ V. */
static inline __attribute__((always_inline)) void attend_block(const float *restrict q, const void *restrict k,
                                                               const void *restrict v, int n, int g, const int D,
                                                               const int bf16,
                                                               float *restrict m, float *restrict l,
                                                               float *restrict acc, float *restrict s) {
    for (int j = 0; j < n; j++) {
        const int64_t kj = (int64_t)j * D;
        for (int h = 0; h < g; h++) {
            const float *qh = q + h * D;
            float dot = 0.0f;
            for (int d = 0; d < D; d++) dot += qh[d] * load(k, kj + d, bf16);
            s[h * BLOCK + j] = dot;
        }
    }
    for (int h = 0; h < g; h++) {
        float *sh = s + h * BLOCK;
        float block_max = m[h];
        for (int j = 0; j < n; j++) block_max = sh[j] > block_max ? sh[j] : block_max;
        float sum = 0.0f;
        for (int j = 0; j < n; j++) {
            float p = exp_nonpositive(sh[j] - block_max);
            sh[j] = p;
            sum += p;
        }
        if (block_max != m[h]) {
            float c = exp_nonpositive(m[h] - block_max);
            float *ah = acc + h * D;
            for (int d = 0; d < D; d++) ah[d] *= c;
            l[h] *= c;
            m[h] = block_max;
        }
        l[h] += sum;
    }
    /* p @ V, one head at a time with its accumulator in registers: four independent chains of
     * rows, so the adds do not wait on each other. */
    for (int h = 0; h < g; h++) {
        const float *sh = s + h * BLOCK;
        float a0[D], a1[D], a2[D], a3[D];
        for (int d = 0; d < D; d++) {
            a0[d] = acc[h * D + d];
            a1[d] = a2[d] = a3[d] = 0.0f;
        }
        int j = 0;
        for (; j + 4 <= n; j += 4) {
            const int64_t vj = (int64_t)j * D;
            const float p0 = sh[j], p1 = sh[j + 1], p2 = sh[j + 2], p3 = sh[j + 3];
            for (int d = 0; d < D; d++) {
                a0[d] += p0 * load(v, vj + d, bf16);
                a1[d] += p1 * load(v, vj + D + d, bf16);
                a2[d] += p2 * load(v, vj + 2 * D + d, bf16);
                a3[d] += p3 * load(v, vj + 3 * D + d, bf16);
            }
        }
        for (; j < n; j++) {
            const float p = sh[j];
            const int64_t vj = (int64_t)j * D;
            for (int d = 0; d < D; d++) a0[d] += p * load(v, vj + d, bf16);
        }
        for (int d = 0; d < D; d++) acc[h * D + d] = (a0[d] + a1[d]) + (a2[d] + a3[d]);
    }
}

/* One (sequence, kv head) pair: the g query heads of the group against `length` keys. */
static inline __attribute__((always_inline)) void attend_group(const void *query, const void *keys,
                                                               const void *values, int64_t length, int g,
                                                               const int D, const int bf16, float scale, void *out) {
    float q[g * D], acc[g * D], s[g * BLOCK], m[g], l[g];
    for (int i = 0; i < g * D; i++) q[i] = load(query, i, bf16) * scale;
    for (int i = 0; i < g * D; i++) acc[i] = 0.0f;
    for (int h = 0; h < g; h++) {
        m[h] = NEG_BIG;
        l[h] = 0.0f;
    }
    const int64_t elem = bf16 ? 2 : 4;
    for (int64_t start = 0; start < length; start += BLOCK) {
        int n = (int)(length - start < BLOCK ? length - start : BLOCK);
        attend_block(q, (const char *)keys + start * D * elem, (const char *)values + start * D * elem, n, g, D,
                     bf16, m, l, acc, s);
    }
    for (int h = 0; h < g; h++) {
        /* length 0 has nothing to attend to: zeros, not 0/0. */
        float inv = l[h] > 0.0f ? 1.0f / l[h] : 0.0f;
        if (bf16) {
            uint16_t *ob = (uint16_t *)out + h * D;
            for (int d = 0; d < D; d++) ob[d] = f32_to_bf16(acc[h * D + d] * inv);
        } else {
            float *of = (float *)out + h * D;
            for (int d = 0; d < D; d++) of[d] = acc[h * D + d] * inv;
        }
    }
}

/* One copy per dtype and per common head size, with both constants (unrolled, branch-free). */
typedef void (*attend_fn)(const void *, const void *, const void *, int64_t, int, int, float, void *);
#define ATTEND(NAME, DIM, BF16)                                                                               \
    static void NAME(const void *q, const void *k, const void *v, int64_t n, int g, int D, float sc, void *o) { \
        (void)D;                                                                                              \
        attend_group(q, k, v, n, g, DIM, BF16, sc, o);                                                        \
    }
ATTEND(f32_d32, 32, 0)
ATTEND(f32_d64, 64, 0)
ATTEND(f32_d128, 128, 0)
ATTEND(f32_any, D, 0)
ATTEND(bf16_d32, 32, 1)
ATTEND(bf16_d64, 64, 1)
ATTEND(bf16_d128, 128, 1)
ATTEND(bf16_any, D, 1)

static attend_fn pick(int64_t D, int bf16) {
    switch (D) {
        case 32: return bf16 ? bf16_d32 : f32_d32;
        case 64: return bf16 ? bf16_d64 : f32_d64;
        case 128: return bf16 ? bf16_d128 : f32_d128;
        default: return bf16 ? bf16_any : f32_any;
    }
}

/* query: [B, Hq, D] contiguous; rows: 5 arrays of B int64 one after the other: key base
 * pointers, value base pointers, lengths, key head strides, value head strides (in elements);
 * each head's rows are contiguous (row stride D). Query head h reads kv head h / (Hq / Hkv).
 * out: [B, Hq, D] contiguous, the query's dtype. Returns 0, or -1 for arguments it cannot take. */
int ragged_decode_attention(const void *query, const int64_t *rows, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                            float scale, int dtype, int threads, void *out) {
    if (B < 0 || Hkv <= 0 || Hq % Hkv != 0 || D <= 0 || D > 1024 || (dtype != DTYPE_F32 && dtype != DTYPE_BF16))
        return -1;
    const int g = (int)(Hq / Hkv);
    const int64_t elem = dtype == DTYPE_BF16 ? 2 : 4;
    const int64_t *key_ptr = rows, *value_ptr = rows + B, *length = rows + 2 * B;
    const int64_t *key_stride = rows + 3 * B, *value_stride = rows + 4 * B;
    const int64_t tasks = B * Hkv;
    const attend_fn fn = pick(D, dtype == DTYPE_BF16);
    (void)threads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t b = t / Hkv, kvh = t % Hkv;
        const char *qp = (const char *)query + ((b * Hq + kvh * g) * D) * elem;
        const char *kp = (const char *)(intptr_t)key_ptr[b] + kvh * key_stride[b] * elem;
        const char *vp = (const char *)(intptr_t)value_ptr[b] + kvh * value_stride[b] * elem;
        char *op = (char *)out + ((b * Hq + kvh * g) * D) * elem;
        fn(qp, kp, vp, length[b], g, (int)D, scale, op);
    }
    return 0;
}

/* ---- Prefill: causal attention within each segment of one packed row of prompts. ----
 * Tiles of TQ query positions against blocks of BJ keys. The segment's keys are first copied
 * transposed ([D][L], fp32), so the scores of a tile are broadcast multiply-adds along the keys
 * (no horizontal sums, each key column loaded once for TQ queries). */
#define TQ 4
#define BJ 64

static inline __attribute__((always_inline)) void prefill_head(const void *q, int64_t q_stride, const float *kt,
                                                               int64_t ld, const void *v, int64_t v_stride, int64_t L,
                                                               const int D, const int bf16, float scale, void *out) {
    for (int64_t t0 = 0; t0 < L; t0 += TQ) {
        const int rows = (int)(L - t0 < TQ ? L - t0 : TQ);
        float qs[TQ][D], acc[TQ][D], m[TQ], l[TQ], s[TQ][BJ];
        for (int i = 0; i < TQ; i++) {
            for (int d = 0; d < D; d++) {
                qs[i][d] = i < rows ? load(q, (t0 + i) * q_stride + d, bf16) * scale : 0.0f;
                acc[i][d] = 0.0f;
            }
            m[i] = NEG_BIG;
            l[i] = 0.0f;
        }
        const int64_t seen = t0 + rows; /* keys 0 .. seen-1 are visible to some row of the tile */
        for (int64_t j0 = 0; j0 < seen; j0 += BJ) {
            const int n = (int)(seen - j0 < BJ ? seen - j0 : BJ);
            for (int i = 0; i < TQ; i++)
                for (int j = 0; j < BJ; j++) s[i][j] = 0.0f;
            for (int d = 0; d < D; d++) {
                const float *kd = kt + d * ld + j0; /* padded to whole blocks: no remainder loop */
                for (int i = 0; i < TQ; i++) {
                    const float qv = qs[i][d];
                    for (int j = 0; j < BJ; j++) s[i][j] += qv * kd[j];
                }
            }
            for (int i = 0; i < rows; i++) {
                int valid = (int)(t0 + i + 1 - j0); /* causal: row t0+i sees keys up to itself */
                valid = valid > n ? n : valid;
                float *si = s[i];
                float block_max = m[i];
                for (int j = 0; j < valid; j++) block_max = si[j] > block_max ? si[j] : block_max;
                float sum = 0.0f;
                for (int j = 0; j < BJ; j++) {
                    float p = j < valid ? exp_nonpositive(si[j] - block_max) : 0.0f;
                    si[j] = p;
                    sum += p;
                }
                if (block_max != m[i]) {
                    float c = exp_nonpositive(m[i] - block_max);
                    for (int d = 0; d < D; d++) acc[i][d] *= c;
                    l[i] *= c;
                    m[i] = block_max;
                }
                l[i] += sum;
            }
            for (int j = 0; j < n; j++) {
                const int64_t vj = (j0 + j) * v_stride;
                for (int i = 0; i < TQ; i++) {
                    const float p = s[i][j];
                    for (int d = 0; d < D; d++) acc[i][d] += p * load(v, vj + d, bf16);
                }
            }
        }
        for (int i = 0; i < rows; i++) {
            float inv = 1.0f / l[i];
            if (bf16) {
                uint16_t *o = (uint16_t *)out + (t0 + i) * q_stride;
                for (int d = 0; d < D; d++) o[d] = f32_to_bf16(acc[i][d] * inv);
            } else {
                float *o = (float *)out + (t0 + i) * q_stride;
                for (int d = 0; d < D; d++) o[d] = acc[i][d] * inv;
            }
        }
    }
}

/* One (segment, kv head): transpose its keys once, then each query head of the group. */
static inline __attribute__((always_inline)) int prefill_group(const void *q, int64_t q_stride, const void *k,
                                                               int64_t k_stride, const void *v, int64_t v_stride,
                                                               int64_t L, int g, const int D, const int bf16,
                                                               float scale, void *out) {
    const int64_t ld = (L + BJ - 1) / BJ * BJ;
    float *kt = (float *)calloc((size_t)(D * ld), sizeof(float));
    if (!kt) return -1;
    for (int64_t j = 0; j < L; j++)
        for (int d = 0; d < D; d++) kt[d * ld + j] = load(k, j * k_stride + d, bf16);
    const int64_t elem = bf16 ? 2 : 4;
    for (int h = 0; h < g; h++)
        prefill_head((const char *)q + h * D * elem, q_stride, kt, ld, v, v_stride, L, D, bf16, scale,
                     (char *)out + h * D * elem);
    free(kt);
    return 0;
}

typedef int (*prefill_fn)(const void *, int64_t, const void *, int64_t, const void *, int64_t, int64_t, int, int, float,
                          void *);
#define PREFILL(NAME, DIM, BF16)                                                                              \
    static int NAME(const void *q, int64_t qs, const void *k, int64_t ks, const void *v, int64_t vs, int64_t n,  \
                    int g, int D, float sc, void *o) {                                                        \
        (void)D;                                                                                              \
        return prefill_group(q, qs, k, ks, v, vs, n, g, DIM, BF16, sc, o);                                    \
    }
PREFILL(pf_f32_d32, 32, 0)
PREFILL(pf_f32_d64, 64, 0)
PREFILL(pf_f32_d128, 128, 0)
PREFILL(pf_f32_any, D, 0)
PREFILL(pf_bf16_d32, 32, 1)
PREFILL(pf_bf16_d64, 64, 1)
PREFILL(pf_bf16_d128, 128, 1)
PREFILL(pf_bf16_any, D, 1)

static prefill_fn pick_prefill(int64_t D, int bf16) {
    switch (D) {
        case 32: return bf16 ? pf_bf16_d32 : pf_f32_d32;
        case 64: return bf16 ? pf_bf16_d64 : pf_f32_d64;
        case 128: return bf16 ? pf_bf16_d128 : pf_f32_d128;
        default: return bf16 ? pf_bf16_any : pf_f32_any;
    }
}

/* query/out: [N, Hq, D] contiguous; key/value: [Hkv, N, D], each vector of D contiguous, with
 * head and row strides in elements (so [N, Hkv, D] memory seen as [Hkv, N, D] is read in place);
 * segments: S starts then S lengths.
 * Positions outside every segment are left as they are. Returns 0, -1 for bad arguments, -2 when
 * out of memory (for a segment's transposed keys). */
int ragged_prefill_attention(const void *query, const void *key, const void *value, int64_t key_head_stride,
                             int64_t key_row_stride, int64_t value_head_stride, int64_t value_row_stride,
                             const int64_t *segments, int64_t S, int64_t Hq, int64_t Hkv, int64_t D, float scale,
                             int dtype, int threads, void *out) {
    if (S < 0 || Hkv <= 0 || Hq % Hkv != 0 || D <= 0 || D > 1024 || (dtype != DTYPE_F32 && dtype != DTYPE_BF16))
        return -1;
    const int g = (int)(Hq / Hkv);
    const int64_t elem = dtype == DTYPE_BF16 ? 2 : 4;
    const int64_t tasks = S * Hkv;
    const prefill_fn fn = pick_prefill(D, dtype == DTYPE_BF16);
    int failed = 0;
    (void)threads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        const int64_t seg = t / Hkv, kvh = t % Hkv, start = segments[seg], length = segments[S + seg];
        if (length <= 0) continue;
        const int64_t q_off = (start * Hq + kvh * g) * D * elem;
        const char *kp = (const char *)key + (kvh * key_head_stride + start * key_row_stride) * elem;
        const char *vp = (const char *)value + (kvh * value_head_stride + start * value_row_stride) * elem;
        if (fn((const char *)query + q_off, Hq * D, kp, key_row_stride, vp, value_row_stride, length, g, (int)D, scale,
               (char *)out + q_off) != 0) {
#pragma omp atomic write
            failed = 1;
        }
    }
    return failed ? -2 : 0;
}

/* ---- The fast forward's decode (fast_llama.py): rotary, cache write and attention in one call. ---- */
static inline __attribute__((always_inline)) void store(void *p, int64_t i, float x, const int bf16) {
    if (bf16)
        ((uint16_t *)p)[i] = f32_to_bf16(x);
    else
        ((float *)p)[i] = x;
}

/* Rotary embedding of one head vector: out[d] = x[d] * cos[d] + x[(d + D/2) % D] * sin[d], with
 * rotate_half's sign already folded into `sin` (its first half negated). */
static inline __attribute__((always_inline)) void rope_head(const void *x, const void *cos, const void *sin,
                                                            int64_t D, const int bf16, void *out, int64_t at) {
    const int64_t half = D / 2;
    for (int64_t d = 0; d < D; d++) {
        const int64_t partner = d < half ? d + half : d - half;
        store(out, at + d, load(x, d, bf16) * load(cos, d, bf16) + load(x, partner, bf16) * load(sin, d, bf16), bf16);
    }
}

/* The fast forward's whole decode attention for one layer: rotary embedding of the step's queries
 * and keys, the keys and values written into each sequence's buffers, and the attention.
 * qk: [B, Hq + Hkv, D] un-rotated queries then keys (rows qk_row_stride apart, heads D apart);
 * value: [B, Hkv, D] (rows value_row_stride apart); rope: [P, 2, D], per position cos then signed
 * sin; positions: B int64; rows: the decode table (lengths count the new column); query_out:
 * [B, Hq, D] scratch for the rotated queries; out: [B, Hq, D], contiguous, the dtype.
 * Why in C: in torch the rotation was five ops per layer (flip, two multiplies, add, a contiguous
 * copy), ~9% of a one-row decode step, and writing one column per row from Python took B tensor
 * views and a foreach copy per layer. */
int ragged_rope_append_decode_attention(const void *qk, const void *value, int64_t qk_row_stride,
                                        int64_t value_row_stride, const void *rope, int64_t P, const int64_t *positions,
                                        const int64_t *rows, int64_t B, int64_t Hq, int64_t Hkv, int64_t D,
                                        float scale, int dtype, int threads, void *query_out, void *out) {
    if (B < 0 || Hkv <= 0 || D <= 0 || D % 2 || (dtype != DTYPE_F32 && dtype != DTYPE_BF16)) return -1;
    const int bf16 = dtype == DTYPE_BF16;
    const int64_t elem = bf16 ? 2 : 4;
    const int64_t *key_ptr = rows, *value_ptr = rows + B, *length = rows + 2 * B;
    const int64_t *key_stride = rows + 3 * B, *value_stride = rows + 4 * B;
    for (int64_t b = 0; b < B; b++) {
        if (length[b] <= 0 || positions[b] < 0 || positions[b] >= P) return -1;
        const char *row = (const char *)qk + b * qk_row_stride * elem;
        const char *cos = (const char *)rope + positions[b] * 2 * D * elem, *sin = cos + D * elem;
        for (int64_t h = 0; h < Hq; h++) rope_head(row + h * D * elem, cos, sin, D, bf16, query_out, (b * Hq + h) * D);
        const int64_t column = (length[b] - 1) * D;
        for (int64_t h = 0; h < Hkv; h++) {
            rope_head(row + (Hq + h) * D * elem, cos, sin, D, bf16, (void *)(intptr_t)key_ptr[b],
                      h * key_stride[b] + column);
            memcpy((char *)(intptr_t)value_ptr[b] + (h * value_stride[b] + column) * elem,
                   (const char *)value + (b * value_row_stride + h * D) * elem, (size_t)(D * elem));
        }
    }
    return ragged_decode_attention(query_out, rows, B, Hq, Hkv, D, scale, dtype, threads, out);
}
