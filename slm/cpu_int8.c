/* int8 linear layer for x86 CPUs with AVX2 (slm/cpu_int8.py builds and loads this file).

   y[M,N] = bias + (q(x) . w - 128 * wsum) * wscale[n] * amax[m] / 127

   w: int8 weights [N,K] row-major (out x in), |w| <= 63 per output channel (so that two u8 x s8 products
   summed by vpmaddubsw never saturate 16 bits); wsum[n] = sum_k w[n,k]; wscale[n]: the weight scale.
   x: fp32 activations [M,K], each row quantized here to u8 with zero point 128 at scale amax/127
   (q = trunc(x * 127 / amax + 128.5)). The integer dot products are exact and every output element goes
   through the same float epilogue whatever M is and however the rows are blocked, so a row's result does
   not depend on the other rows of the call (greedy decoding is the same alone or batched).

   Why not oneDNN: on AVX2 CPUs without VNNI, oneDNN's int8 matmul is its jit gemm, which repacks the
   weight matrix on every call; for the few rows of a decode step that costs 2-3x the weight reads. Here
   the weights are read once per call, straight from their row-major layout, 64 output rows at a time
   (kept in L2 while every activation row passes). One call is single-threaded; slm.cpu_int8 splits large
   products by output columns over torch's thread count. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

static void quantize_rows(const float *x, int64_t M, int64_t K, uint8_t *q, float *amax_out) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * K;
        uint8_t *qr = q + m * K;
        __m256 vmax = _mm256_setzero_ps();
        int64_t k = 0;
        for (; k + 8 <= K; k += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + k)));
        float lanes[8];
        _mm256_storeu_ps(lanes, vmax);
        float amax = 0.0f;
        for (int i = 0; i < 8; i++) amax = lanes[i] > amax ? lanes[i] : amax;
        for (; k < K; k++) amax = fabsf(xr[k]) > amax ? fabsf(xr[k]) : amax;
        if (!(amax >= 1e-12f)) amax = 1e-12f; /* also catches NaN */
        const float inv = 127.0f / amax;
        amax_out[m] = amax;
        const __m256 vinv = _mm256_set1_ps(inv), voff = _mm256_set1_ps(128.5f);
        for (k = 0; k + 32 <= K; k += 32) {
            __m256i a = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + k), vinv), voff));
            __m256i b = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + k + 8), vinv), voff));
            __m256i c = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + k + 16), vinv), voff));
            __m256i d = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + k + 24), vinv), voff));
            __m256i packed = _mm256_packus_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
            _mm256_storeu_si256((__m256i *)(qr + k), _mm256_permutevar8x32_epi32(packed, order));
        }
        for (; k < K; k++) {
            float v = xr[k] * inv + 128.5f;
            qr[k] = (uint8_t)(v < 0.0f ? 0 : v > 255.0f ? 255 : (int)v);
        }
    }
}

static inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* acc[i * NR + j] = q[i] . w[j] for MR activation rows and NR weight rows (exact int32) */
#define DOT_BLOCK(MR, NR)                                                                                   \
    static void dot_##MR##x##NR(const uint8_t *q, const int8_t *w, int64_t K, int32_t *acc) {              \
        const __m256i ones = _mm256_set1_epi16(1);                                                          \
        __m256i c[MR][NR];                                                                                  \
        for (int i = 0; i < MR; i++)                                                                        \
            for (int j = 0; j < NR; j++) c[i][j] = _mm256_setzero_si256();                                  \
        int64_t k = 0;                                                                                      \
        for (; k + 32 <= K; k += 32) {                                                                      \
            __m256i wv[NR];                                                                                 \
            for (int j = 0; j < NR; j++) wv[j] = _mm256_loadu_si256((const __m256i *)(w + j * K + k));      \
            for (int i = 0; i < MR; i++) {                                                                  \
                __m256i xv = _mm256_loadu_si256((const __m256i *)(q + i * K + k));                          \
                for (int j = 0; j < NR; j++)                                                                \
                    c[i][j] = _mm256_add_epi32(c[i][j], _mm256_madd_epi16(_mm256_maddubs_epi16(xv, wv[j]), ones)); \
            }                                                                                               \
        }                                                                                                   \
        for (int i = 0; i < MR; i++)                                                                        \
            for (int j = 0; j < NR; j++) {                                                                  \
                int32_t s = hsum(c[i][j]);                                                                  \
                for (int64_t kk = k; kk < K; kk++) s += (int32_t)q[i * K + kk] * (int32_t)w[j * K + kk];    \
                acc[i * NR + j] = s;                                                                        \
            }                                                                                               \
    }

DOT_BLOCK(4, 2)
DOT_BLOCK(4, 1)
DOT_BLOCK(1, 4)
DOT_BLOCK(1, 1)

/* the one float epilogue every output element goes through */
static inline float epilogue(int32_t acc, int32_t wsum, float wscale, float xscale, float bias) {
    float dot = (float)(acc - 128 * wsum);
    return bias + dot * wscale * xscale;
}

int slm_int8_abi(void) { return 8; }

/* x [M,K] fp32 -> qbuf [M,K] u8 and scales[M] = amax/127 */
void slm_int8_quantize(const float *x, int64_t M, int64_t K, uint8_t *qbuf, float *scales) {
    quantize_rows(x, M, K, qbuf, scales);
    for (int64_t m = 0; m < M; m++) scales[m] = scales[m] * (1.0f / 127.0f);
}

/* the same with rows of qbuf `ldq` bytes apart (ldq >= K; the bytes past K are left as they are) */
void slm_int8_quantize_ld(const float *x, int64_t M, int64_t K, int64_t ldq, uint8_t *qbuf, float *scales) {
    for (int64_t m = 0; m < M; m++) slm_int8_quantize(x + m * K, 1, K, qbuf + m * ldq, scales + m);
}

/* output columns [n_begin, n_end) of y [M,N] from the quantized rows (threads may split the columns) */
void slm_int8_gemm(const uint8_t *qbuf, const float *scales, int64_t M, int64_t K, const int8_t *w,
                   const int32_t *wsum, const float *wscale, const float *bias, int64_t N, int64_t n_begin,
                   int64_t n_end, float *y) {
    const int64_t NB = 64;
    int32_t acc[8];
    for (int64_t n0 = n_begin; n0 < n_end; n0 += NB) {
        const int64_t n1 = n0 + NB < n_end ? n0 + NB : n_end;
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) {
            const uint8_t *qm = qbuf + m * K;
            int64_t n = n0;
            for (; n + 2 <= n1; n += 2) {
                dot_4x2(qm, w + n * K, K, acc);
                for (int i = 0; i < 4; i++)
                    for (int j = 0; j < 2; j++)
                        y[(m + i) * N + n + j] = epilogue(acc[i * 2 + j], wsum[n + j], wscale[n + j], scales[m + i], bias[n + j]);
            }
            for (; n < n1; n++) {
                dot_4x1(qm, w + n * K, K, acc);
                for (int i = 0; i < 4; i++) y[(m + i) * N + n] = epilogue(acc[i], wsum[n], wscale[n], scales[m + i], bias[n]);
            }
        }
        for (; m < M; m++) {
            const uint8_t *qm = qbuf + m * K;
            int64_t n = n0;
            for (; n + 4 <= n1; n += 4) {
                dot_1x4(qm, w + n * K, K, acc);
                for (int j = 0; j < 4; j++) y[m * N + n + j] = epilogue(acc[j], wsum[n + j], wscale[n + j], scales[m], bias[n + j]);
            }
            for (; n < n1; n++) {
                dot_1x1(qm, w + n * K, K, acc);
                y[m * N + n] = epilogue(acc[0], wsum[n], wscale[n], scales[m], bias[n]);
            }
        }
    }
}

/* ---- AVX-512 VNNI (x86 CPUs with avx512_vnni: Intel since Cascade Lake, AMD Zen 4) ----------------------

   Full 8-bit weights (|w| <= 127: vpdpbusd sums four u8 x s8 products straight into int32, nothing
   saturates), packed once into the layout the instruction wants: wp[N/64][K/4][64][4] (zero padded to
   multiples of 64 outputs and 4 inputs), so one 64-byte load holds 4 inputs of 16 outputs and each
   activation row contributes a broadcast 4-byte group. A tile of MR (<= 6) rows x 64 outputs keeps 4*MR
   accumulators in registers; every weight load serves the MR rows; a tile's weights (48 KB at K = 768)
   are one sequential stream, read ahead with prefetches, and stay in L1/L2 while all the rows pass. The epilogue is the same vector expression for every
   element, bias + ((acc - 128 * wsum) * wscale) * xscale, whatever the tile, so a row's result does not
   depend on M or on how the columns are split. */

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))

/* acc += four u8 x s8 products per int32 lane. Inline asm rather than _mm512_dpbusd_epi32: with that
   intrinsic GCC 12 copies every accumulator through the stack on each step (2x slower) */
#define DPBUSD(acc, x, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w))

int slm_int8_vnni512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}

/* w [N,K] int8 row-major -> wp [ceil(N/64)][ceil(K/4)][64][4], zero padded */
void slm_int8_pack_vnni(const int8_t *w, int64_t N, int64_t K, int8_t *wp) {
    const int64_t groups = (K + 3) / 4, tiles = (N + 63) / 64;
    for (int64_t b = 0; b < tiles; b++)
        for (int64_t g = 0; g < groups; g++)
            for (int64_t j = 0; j < 64; j++)
                for (int64_t t = 0; t < 4; t++) {
                    const int64_t n = b * 64 + j, k = g * 4 + t;
                    wp[((b * groups + g) * 64 + j) * 4 + t] = (n < N && k < K) ? w[n * K + k] : 0;
                }
}

typedef struct {
    const uint8_t *q;     /* quantized rows, ldq bytes apart, zero padded to a multiple of 4 */
    int64_t ldq;
    const float *xscale;  /* per row: amax / 127 */
    const int8_t *wp;     /* packed weights */
    int64_t groups;       /* K / 4, rounded up */
    const int32_t *wsum;
    const float *wscale;
    const float *bias;
    float *y;
    int64_t ldy;
    const float *res;     /* NULL, or rows added to the output after the activation (ldy apart; may be y) */
    int act;              /* 0: none, 1: GPT-2's tanh-GELU */
} vnni_args;

/* GPT-2's tanh-GELU as x * sigmoid(2k(x + 0.044715 x^3)) = x / (1 + e^(-2k(x + 0.044715 x^3))), k = sqrt(2/pi);
   e^t by 2^n * 2^f with a degree-6 polynomial (relative error ~2e-7). One definition: the fused epilogue
   and slm_gelu (the model's own forward) give the same bits. */
/* e^(g) for g = f ln 2, f in [-0.5, 0.5]: the degree-6 Taylor polynomial in Horner form, for any vector width */
#define EXP_POLY(T, FMA, SET, g)                                                                            \
    ({                                                                                                      \
        T p_ = SET(1.0f / 720.0f);                                                                          \
        p_ = FMA(p_, g, SET(1.0f / 120.0f));                                                                \
        p_ = FMA(p_, g, SET(1.0f / 24.0f));                                                                 \
        p_ = FMA(p_, g, SET(1.0f / 6.0f));                                                                  \
        p_ = FMA(p_, g, SET(0.5f));                                                                         \
        p_ = FMA(p_, g, SET(1.0f));                                                                         \
        FMA(p_, g, SET(1.0f));                                                                              \
    })

static inline VNNI_TARGET __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 g = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147180559945309f));
    const __m512 p = EXP_POLY(__m512, _mm512_fmadd_ps, _mm512_set1_ps, g);
    return _mm512_scalef_ps(p, n);
}

static inline VNNI_TARGET __m512 gelu16(__m512 x) {
    const __m512 k2 = _mm512_set1_ps(-1.5957691216057308f); /* -2 sqrt(2/pi) */
    const __m512 z = _mm512_mul_ps(_mm512_fmadd_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(0.044715f), _mm512_set1_ps(1.0f)), x);
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_mul_ps(z, k2))));
}

/* y[i] = gelu(x[i]) for n floats (in place allowed) */
VNNI_TARGET void slm_gelu(const float *x, int64_t n, float *y) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, gelu16(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
        _mm512_mask_storeu_ps(y + i, m, gelu16(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

/* LayerNorm of each row of x [M,K] into y (in place allowed): mean and variance summed in 16 lanes then
   across them in a fixed order, so a row's result does not depend on M */
VNNI_TARGET void slm_layernorm(const float *x, int64_t M, int64_t K, const float *gamma, const float *beta, float eps,
                               float *y) {
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * K;
        float *yr = y + m * K;
        __m512 acc = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) acc = _mm512_add_ps(acc, _mm512_loadu_ps(xr + k));
        __mmask16 tail = (__mmask16)(K - k >= 16 ? 0 : (1u << (K - k)) - 1u);
        acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(tail, xr + k));
        const float mean = _mm512_reduce_add_ps(acc) / (float)K;
        const __m512 vmean = _mm512_set1_ps(mean);
        acc = _mm512_setzero_ps();
        for (k = 0; k + 16 <= K; k += 16) {
            const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xr + k), vmean);
            acc = _mm512_fmadd_ps(d, d, acc);
        }
        const __m512 dt = _mm512_maskz_sub_ps(tail, _mm512_maskz_loadu_ps(tail, xr + k), vmean);
        acc = _mm512_fmadd_ps(dt, dt, acc);
        const float var = _mm512_reduce_add_ps(acc) / (float)K;
        const __m512 rstd = _mm512_set1_ps(1.0f / sqrtf(var + eps));
        for (k = 0; k + 16 <= K; k += 16) {
            const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xr + k), vmean), rstd);
            _mm512_storeu_ps(yr + k, _mm512_fmadd_ps(d, _mm512_loadu_ps(gamma + k), _mm512_loadu_ps(beta + k)));
        }
        if (tail) {
            const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, xr + k), vmean), rstd);
            _mm512_mask_storeu_ps(yr + k, tail,
                                  _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(tail, gamma + k), _mm512_maskz_loadu_ps(tail, beta + k)));
        }
    }
}

/* one tile of MR (1..6, a constant after inlining) rows x 64 outputs. The accumulators are named
   variables, not an array: GCC keeps an array of vectors on the stack and stores it back on every step. */
#define VNNI_ACC(i) __m512i c##i##0 = _mm512_setzero_si512(), c##i##1 = c##i##0, c##i##2 = c##i##0, c##i##3 = c##i##0;
#define VNNI_ROW(i)                                                                                         \
    if (MR > i) {                                                                                           \
        int32_t four;                                                                                       \
        __builtin_memcpy(&four, qm + i * ldq + g * 4, 4);                                                   \
        const __m512i xb = _mm512_set1_epi32(four);                                                         \
        DPBUSD(c##i##0, xb, w0);                                                                            \
        DPBUSD(c##i##1, xb, w1);                                                                            \
        DPBUSD(c##i##2, xb, w2);                                                                            \
        DPBUSD(c##i##3, xb, w3);                                                                            \
    }
#define VNNI_OUT(i, j)                                                                                      \
    if (MR > i) {                                                                                           \
        const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(c##i##j, comp));                             \
        __m512 out = _mm512_add_ps(bs, _mm512_mul_ps(_mm512_mul_ps(dot, ws), _mm512_set1_ps(a->xscale[m + i]))); \
        if (a->act) out = gelu16(out);                                                                      \
        if (a->res) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask, a->res + (m + i) * a->ldy + n0));  \
        _mm512_mask_storeu_ps(a->y + (m + i) * a->ldy + n0, mask, out);                                     \
    }
#define VNNI_COLUMN(j)                                                                                      \
    {                                                                                                       \
        const int64_t n0 = tile * 64 + j * 16;                                                              \
        const int64_t left = n_end - n0;                                                                    \
        const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1u); \
        const __m512i comp = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, a->wsum + n0), 7);           \
        const __m512 ws = _mm512_maskz_loadu_ps(mask, a->wscale + n0);                                      \
        const __m512 bs = _mm512_maskz_loadu_ps(mask, a->bias + n0);                                        \
        VNNI_OUT(0, j) VNNI_OUT(1, j) VNNI_OUT(2, j) VNNI_OUT(3, j) VNNI_OUT(4, j) VNNI_OUT(5, j)           \
    }

/* weights are read ahead of use by this many 256-byte steps (24 KB), into L2: one decode row does too
   little work per step for the hardware prefetcher alone to keep enough memory reads in flight (GPT-2
   124M shape, one row, every matmul of a step from memory: 14 -> 17 GB/s; plain streaming reads 16) */
#define SLM_PREFETCH 96
#define SLM_PREFETCH_HINT _MM_HINT_T2

static inline __attribute__((always_inline)) VNNI_TARGET void vnni_tile(const int MR, const vnni_args *a, int64_t m,
                                                                        int64_t tile, int64_t n_end) {
    VNNI_ACC(0) VNNI_ACC(1) VNNI_ACC(2) VNNI_ACC(3) VNNI_ACC(4) VNNI_ACC(5)
    const int64_t groups = a->groups, ldq = a->ldq;
    const int8_t *wb = a->wp + tile * groups * 256;
    const uint8_t *qm = a->q + m * ldq;
    for (int64_t g = 0; g < groups; g++) {
        const int8_t *wg = wb + g * 256;
        _mm_prefetch((const char *)(wg + SLM_PREFETCH * 256), SLM_PREFETCH_HINT);
        _mm_prefetch((const char *)(wg + SLM_PREFETCH * 256 + 64), SLM_PREFETCH_HINT);
        _mm_prefetch((const char *)(wg + SLM_PREFETCH * 256 + 128), SLM_PREFETCH_HINT);
        _mm_prefetch((const char *)(wg + SLM_PREFETCH * 256 + 192), SLM_PREFETCH_HINT);
        const __m512i w0 = _mm512_loadu_si512((const void *)wg);
        const __m512i w1 = _mm512_loadu_si512((const void *)(wg + 64));
        const __m512i w2 = _mm512_loadu_si512((const void *)(wg + 128));
        const __m512i w3 = _mm512_loadu_si512((const void *)(wg + 192));
        VNNI_ROW(0) VNNI_ROW(1) VNNI_ROW(2) VNNI_ROW(3) VNNI_ROW(4) VNNI_ROW(5)
    }
    VNNI_COLUMN(0) VNNI_COLUMN(1) VNNI_COLUMN(2) VNNI_COLUMN(3)
}

#define VNNI_TILE(MR)                                                                                       \
    static VNNI_TARGET void vnni_##MR(const vnni_args *a, int64_t m, int64_t tile, int64_t n_end) {          \
        vnni_tile(MR, a, m, tile, n_end);                                                                   \
    }
VNNI_TILE(1) VNNI_TILE(2) VNNI_TILE(3) VNNI_TILE(4) VNNI_TILE(5) VNNI_TILE(6)

typedef void (*vnni_fn)(const vnni_args *, int64_t, int64_t, int64_t);
static const vnni_fn VNNI_TILES[7] = {0, vnni_1, vnni_2, vnni_3, vnni_4, vnni_5, vnni_6};

/* ---- AMX (Intel Sapphire Rapids and later) ----------------------------------------------------------------
   The same packed weights serve as AMX B tiles as they are: rows of a 64-output tile are 256 bytes apart and
   the 16 outputs j*16.. of a row are 64 bytes at offset 64*j, 4 inputs each, which is the tile's layout
   (16 rows = 64 inputs, stride 256). A tile multiply takes up to 16 activation rows x 64 inputs at once, so
   several decode rows or a prompt cost about what one row costs on vpdpbusd. The int32 sums are exact either
   way and go through the same epilogue, so a row gets the same bits from AMX as from the vector kernel,
   whichever the row count picks. Linux gives a process the tile registers on request (arch_prctl). */

#define AMX_TARGET __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")))
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#ifndef SLM_AMX_MIN_ROWS
#define SLM_AMX_MIN_ROWS 6 /* fewer rows go to the vector kernel: it streams the weights faster (bench/int8_ops.py) */
#endif

static int amx_state = -1; /* -1 unknown, 0 no, 1 yes */
static int amx_allowed = 1;

/* switches the AMX path off (0) or back on (1): SLM_INT8_AMX=0, and the tests comparing both paths */
void slm_int8_allow_amx(int allowed) { amx_allowed = allowed; }

int slm_int8_amx(void) {
    if (amx_state < 0) {
        unsigned a, b, c, d;
        int ok = slm_int8_vnni512() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 25));
        if (ok) ok = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
        amx_state = ok;
    }
    return amx_state;
}

typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed, aligned(64))) amx_config;

static AMX_TARGET void amx_configure(int rows) {
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 5; t++) { /* 0-3: the sums of 4 x 16 outputs, 4: activations */
        cfg.rows[t] = (uint8_t)rows;
        cfg.colsb[t] = 64;
    }
    for (int t = 5; t < 8; t++) { /* weights: 16 rows of 4 inputs x 16 outputs */
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
}

static AMX_TARGET void amx_epilogue(const vnni_args *a, int64_t m, int rows, int64_t tile, int64_t n_end,
                                    const int32_t *sums) {
    for (int j = 0; j < 4; j++) {
        const int64_t n0 = tile * 64 + j * 16;
        const int64_t left = n_end - n0;
        const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1u);
        const __m512i comp = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, a->wsum + n0), 7);
        const __m512 ws = _mm512_maskz_loadu_ps(mask, a->wscale + n0);
        const __m512 bs = _mm512_maskz_loadu_ps(mask, a->bias + n0);
        for (int i = 0; i < rows; i++) { /* VNNI_OUT's expression */
            const __m512i c = _mm512_load_si512((const void *)(sums + i * 64 + j * 16));
            const __m512 dot = _mm512_cvtepi32_ps(_mm512_sub_epi32(c, comp));
            __m512 out = _mm512_add_ps(bs, _mm512_mul_ps(_mm512_mul_ps(dot, ws), _mm512_set1_ps(a->xscale[m + i])));
            if (a->act) out = gelu16(out);
            if (a->res) out = _mm512_add_ps(out, _mm512_maskz_loadu_ps(mask, a->res + (m + i) * a->ldy + n0));
            _mm512_mask_storeu_ps(a->y + (m + i) * a->ldy + n0, mask, out);
        }
    }
}

/* needs groups % 16 == 0 (K a multiple of 64) and q rows readable 64 bytes at a time */
static AMX_TARGET void gemm_amx(const vnni_args *a, int64_t M, int64_t n_begin, int64_t n_end) {
    int32_t sums[16 * 64] __attribute__((aligned(64)));
    const int64_t groups = a->groups;
    int configured = 0;
    for (int64_t tile = n_begin / 64; tile * 64 < n_end; tile++) {
        const int8_t *wb = a->wp + tile * groups * 256;
        for (int64_t m = 0; m < M; m += 16) {
            const int rows = M - m < 16 ? (int)(M - m) : 16;
            if (rows != configured) {
                amx_configure(rows);
                configured = rows;
            }
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            const uint8_t *qm = a->q + m * a->ldq;
            for (int64_t g = 0; g < groups; g += 16) {
                const int8_t *wg = wb + g * 256;
                if (m == 0)
                    for (int64_t off = 0; off < 16 * 256; off += 64) {
                        _mm_prefetch((const char *)(wg + SLM_PREFETCH * 256 + off), SLM_PREFETCH_HINT);
                        _mm_prefetch((const char *)(wg + 16 * 256 + off), _MM_HINT_T0);
                    }
                _tile_loadd(4, qm + g * 4, a->ldq);
                _tile_loadd(5, wg, 256);
                _tile_dpbusd(0, 4, 5);
                _tile_loadd(6, wg + 64, 256);
                _tile_dpbusd(1, 4, 6);
                _tile_loadd(7, wg + 128, 256);
                _tile_dpbusd(2, 4, 7);
                _tile_loadd(5, wg + 192, 256);
                _tile_dpbusd(3, 4, 5);
            }
            _tile_stored(0, sums, 256);
            _tile_stored(1, sums + 16, 256);
            _tile_stored(2, sums + 32, 256);
            _tile_stored(3, sums + 48, 256);
            amx_epilogue(a, m, rows, tile, n_end, sums);
        }
    }
    _tile_release();
}

static void gemm_vnni_args(const vnni_args *a, int64_t M, int64_t n_begin, int64_t n_end) {
    if (M >= SLM_AMX_MIN_ROWS && a->groups % 16 == 0 && amx_allowed && slm_int8_amx()) {
        gemm_amx(a, M, n_begin, n_end);
        return;
    }
    for (int64_t tile = n_begin / 64; tile * 64 < n_end; tile++)
        for (int64_t m = 0; m < M; m += 6) VNNI_TILES[M - m < 6 ? M - m : 6](a, m, tile, n_end);
}

/* output columns [n_begin, n_end) of y [M,N] (n_begin a multiple of 64; threads may split the columns) */
void slm_int8_gemm_vnni(const uint8_t *q, int64_t ldq, const float *xscale, int64_t M, int64_t K, const int8_t *wp,
                        const int32_t *wsum, const float *wscale, const float *bias, int64_t N, int64_t n_begin,
                        int64_t n_end, float *y) {
    const vnni_args a = {q, ldq, xscale, wp, (K + 3) / 4, wsum, wscale, bias, y, N, NULL, 0};
    gemm_vnni_args(&a, M, n_begin, n_end);
}

/* the whole layer on the calling thread, with GPT-2's neighbours fused: y = act(LN(x) . W^T + b) + res, where
   LN (gamma non-NULL), act (1: tanh-GELU) and res (non-NULL; may be y) are optional; x [M,K] is LayerNormed
   into scratch, quantized (scratch on the stack when small), multiplied. The same bits as slm_layernorm, this
   call without extras (slm_int8_linear_vnni), slm_gelu and an add done one after the other. 0, or -1 when
   out of memory. */
int slm_int8_linear_vnni_fused(const int8_t *wp, const int32_t *wsum, const float *wscale, const float *bias,
                               int64_t N, int64_t K, const float *x, int64_t M, float *y, const float *gamma,
                               const float *beta, float eps, int act, const float *res) {
    const int64_t ldq = (K + 3) / 4 * 4;
    uint8_t q_small[16384];
    float s_small[256], n_small[4096];
    uint8_t *q = M * ldq <= (int64_t)sizeof(q_small) ? q_small : malloc((size_t)(M * ldq));
    float *s = M <= 256 ? s_small : malloc((size_t)M * sizeof(float));
    float *normed = gamma == NULL || M * K <= 4096 ? n_small : malloc((size_t)(M * K) * sizeof(float));
    int rc = 0;
    if (q == NULL || s == NULL || normed == NULL) {
        rc = -1;
        goto done;
    }
    if (ldq != K)
        for (int64_t m = 0; m < M; m++) memset(q + m * ldq + K, 0, (size_t)(ldq - K));
    if (gamma != NULL) {
        slm_layernorm(x, M, K, gamma, beta, eps, normed);
        x = normed;
    }
    slm_int8_quantize_ld(x, M, K, ldq, q, s);
    const vnni_args a = {q, ldq, s, wp, (K + 3) / 4, wsum, wscale, bias, y, N, res, act};
    gemm_vnni_args(&a, M, 0, N);
done:
    if (q != q_small) free(q);
    if (s != s_small) free(s);
    if (normed != n_small) free(normed);
    return rc;
}

/* the whole layer on the calling thread: quantize x [M,K] (scratch on the stack when small) and y = x.W^T + b.
   The weights' arguments come first so that a caller can bind them once. 0, or -1 when out of memory. */
int slm_int8_linear_vnni(const int8_t *wp, const int32_t *wsum, const float *wscale, const float *bias, int64_t N,
                         int64_t K, const float *x, int64_t M, float *y) {
    return slm_int8_linear_vnni_fused(wp, wsum, wscale, bias, N, K, x, M, y, NULL, NULL, 0.0f, 0, NULL);
}

/* ---- the engine's KV cache and decode attention (AVX2, fp32) --------------------------------------------

   The slot cache on the CPU is position-major: keys and values [slots, window, kv_heads, D], so all heads of
   a position sit together and a request's cache is one run of memory (GPT-2 124M: 3 KB per position), read
   front to back. `slm_kv_write` stores the step's new keys/values; `slm_attend_decode` attends one new token
   per request over its own cached positions: for every head, scores = scale * q . k[t], a softmax, and the
   weighted sum of the values. Each row is computed on its own, in the same order whatever else is in the
   step, so a row's output does not depend on the batch. D is a multiple of 8 (the caller checks). */

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* four keys' dot products with q at once (independent accumulators); the keys are `stride` floats apart */
static inline void dot4(const float *q, const float *k, int64_t stride, int64_t D, float *out, int64_t out_stride) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + d), a0);
        a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + stride + d), a1);
        a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 2 * stride + d), a2);
        a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 3 * stride + d), a3);
    }
    out[0] = hsum8(a0);
    out[out_stride] = hsum8(a1);
    out[2 * out_stride] = hsum8(a2);
    out[3 * out_stride] = hsum8(a3);
}

static inline float dot1(const float *q, const float *k, int64_t D) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(k + d), a);
    return hsum8(a);
}

/* e^x for x <= 0 (softmax after subtracting the max): 2^n * 2^f, f in [-0.5, 0.5], a degree-6 polynomial
   (relative error ~2e-7, like expf); below -87 the result is 0 */
static inline __m256 exp8(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    const __m256 t = _mm256_mul_ps(x, log2e);
    const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 g = _mm256_mul_ps(_mm256_sub_ps(t, n), _mm256_set1_ps(0.693147180559945309f));
    const __m256 p = EXP_POLY(__m256, _mm256_fmadd_ps, _mm256_set1_ps, g);
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* p[0..L) <- softmax(scale * p) in place; the vector exp for every element (the tail padded with -inf) */
static void softmax_scaled(float *p, int64_t L, float scale) {
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vtop = _mm256_set1_ps(-INFINITY);
    int64_t t = 0;
    for (; t + 8 <= L; t += 8) {
        const __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(p + t), vscale);
        _mm256_storeu_ps(p + t, sc);
        vtop = _mm256_max_ps(vtop, sc);
    }
    float lanes[8], top = -INFINITY;
    _mm256_storeu_ps(lanes, vtop);
    for (int j = 0; j < 8; j++) top = lanes[j] > top ? lanes[j] : top;
    for (; t < L; t++) {
        p[t] *= scale;
        top = p[t] > top ? p[t] : top;
    }
    const __m256 vmax = _mm256_set1_ps(top);
    __m256 vtotal = _mm256_setzero_ps();
    for (t = 0; t + 8 <= L; t += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + t), vmax));
        _mm256_storeu_ps(p + t, e);
        vtotal = _mm256_add_ps(vtotal, e);
    }
    float total = hsum8(vtotal);
    float tail[8];
    if (t < L) {
        for (int j = 0; j < 8; j++) tail[j] = t + j < L ? p[t + j] - top : -INFINITY;
        _mm256_storeu_ps(tail, exp8(_mm256_loadu_ps(tail)));
        for (int j = 0; t + j < L; j++) total += tail[j];
    }
    const __m256 inv = _mm256_set1_ps(1.0f / total);
    for (int64_t u = 0; u + 8 <= L; u += 8) _mm256_storeu_ps(p + u, _mm256_mul_ps(_mm256_loadu_ps(p + u), inv));
    for (int j = 0; t + j < L; j++) p[t + j] = tail[j] * (1.0f / total);
}

/* rows r of key/value ([M, kv_heads * D] floats, rows `ldk` / `ldv` apart) -> cache position
   (slots[r], positions[r]); 0, or -2 for a slot or position outside the cache (nothing written) */
int slm_kv_write(float *kc, float *vc, int64_t n_slots, int64_t window, int64_t row, const float *key, int64_t ldk,
                 const float *value, int64_t ldv, const int64_t *slots, const int64_t *positions, int64_t M) {
    for (int64_t r = 0; r < M; r++)
        if (slots[r] < 0 || slots[r] >= n_slots || positions[r] < 0 || positions[r] >= window) return -2;
    for (int64_t r = 0; r < M; r++) {
        const int64_t at = (slots[r] * window + positions[r]) * row;
        memcpy(kc + at, key + r * ldk, (size_t)row * sizeof(float));
        memcpy(vc + at, value + r * ldv, (size_t)row * sizeof(float));
    }
    return 0;
}

/* q [n, heads, D] (rows `ldq` floats apart) -> out [n, heads, D] (rows `ldo` apart), over the position-major
   caches [slots, window, kv_heads, D]; lengths count the new token. 0, -1 out of memory, -2 bad index. */
int slm_attend_decode(const float *q, int64_t ldq, const float *kc, const float *vc, int64_t n_slots, int64_t window,
                      const int64_t *slots, const int64_t *lengths, int64_t n, int64_t heads, int64_t kv_heads,
                      int64_t D, float scale, float *out, int64_t ldo) {
    int64_t longest = 1;
    for (int64_t i = 0; i < n; i++) {
        if (slots[i] < 0 || slots[i] >= n_slots || lengths[i] < 1 || lengths[i] > window) return -2;
        longest = lengths[i] > longest ? lengths[i] : longest;
    }
    float p_small[8192];
    const int64_t need = heads * ((longest + 3) / 4 * 4);
    float *p = need <= 8192 ? p_small : malloc((size_t)need * sizeof(float));
    if (p == NULL) return -1;
    const int64_t group = heads / kv_heads, row = kv_heads * D;
    for (int64_t i = 0; i < n; i++) {
        const int64_t L = lengths[i], Lp = (L + 3) / 4 * 4; /* p[h * Lp + t] */
        const float *qi = q + i * ldq;
        const float *kb = kc + slots[i] * window * row, *vb = vc + slots[i] * window * row;
        int64_t t = 0; /* scores: positions in order, all heads of each (the cache is read front to back) */
        for (; t + 4 <= L; t += 4)
            for (int64_t h = 0; h < heads; h++) dot4(qi + h * D, kb + t * row + (h / group) * D, row, D, p + h * Lp + t, 1);
        for (; t < L; t++)
            for (int64_t h = 0; h < heads; h++) p[h * Lp + t] = dot1(qi + h * D, kb + t * row + (h / group) * D, D);
        for (int64_t h = 0; h < heads; h++) softmax_scaled(p + h * Lp, L, scale);
        float *o = out + i * ldo;
        for (int64_t h = 0; h < heads; h++) /* values: positions in order; the sums stay in L1 */
            for (int64_t d = 0; d < D; d += 8) _mm256_storeu_ps(o + h * D + d, _mm256_setzero_ps());
        for (t = 0; t < L; t++) {
            const float *vt = vb + t * row;
            for (int64_t h = 0; h < heads; h++) {
                const __m256 pt = _mm256_set1_ps(p[h * Lp + t]);
                const float *vh = vt + (h / group) * D;
                float *oh = o + h * D;
                for (int64_t d = 0; d < D; d += 8)
                    _mm256_storeu_ps(oh + d, _mm256_fmadd_ps(pt, _mm256_loadu_ps(vh + d), _mm256_loadu_ps(oh + d)));
            }
        }
    }
    if (p != p_small) free(p);
    return 0;
}

/* ---- greedy pick ------------------------------------------------------------------------------------------
   The index of the first largest value of x[0..n) (a NaN counts as the largest: the first NaN wins), like
   torch.argmax, which on this build's CPU path costs ~80 us for GPT-2's 50k logits; here ~10. */
int64_t slm_argmax(const float *x, int64_t n) {
    if (n <= 0) return -1;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    __m256 nan = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        vmax = _mm256_max_ps(vmax, v);
    }
    int has_nan = _mm256_movemask_ps(nan) != 0;
    float lanes[8], top = -INFINITY;
    _mm256_storeu_ps(lanes, vmax);
    for (int j = 0; j < 8; j++) top = lanes[j] > top ? lanes[j] : top;
    for (int64_t k = i; k < n; k++) {
        if (x[k] != x[k]) has_nan = 1;
        top = x[k] > top ? x[k] : top;
    }
    for (int64_t k = 0; k < n; k++)
        if (has_nan ? x[k] != x[k] : x[k] == top) return k;
    return 0; /* not reached */
}
