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

int slm_int8_abi(void) { return 2; }

/* x [M,K] fp32 -> qbuf [M,K] u8 and scales[M] = amax/127 */
void slm_int8_quantize(const float *x, int64_t M, int64_t K, uint8_t *qbuf, float *scales) {
    quantize_rows(x, M, K, qbuf, scales);
    for (int64_t m = 0; m < M; m++) scales[m] = scales[m] * (1.0f / 127.0f);
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
