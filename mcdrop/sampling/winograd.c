/* mcdrop's fused 3x3 convolution, bias, 2x2 max pooling and ReLU on a CPU (see mcdrop/sampling/winograd.py for how
   it is built and called).

   conv3x3_pool computes, for each of n images x (h, w, c) (NHWC, zero padding 1, stride 1),
       y[i, j, o] = scale[o] relu(bias[o] + max_{a, b in {0, 1}} conv(r(x + ib))[2i + a, 2j + b, o]),
   i < h / 2, j < w / 2, r the identity, or ReLU when relu is set, ib an input bias per channel (or none), scale
   per image and output (or none): torch's max_pool2d(relu(conv2d(r(x + ib), W, bias, padding=1)), 2) * scale
   (the pooling and the ReLU commute; the pooling floors odd sizes). Each 2x2 pooling window is one Winograd
   F(2x2, 3x3) tile (Lavin & Gray 2016): with the 4x4 input patch d around it and the transformed weights
   U = G g G^T (made by the caller, packed per block of NR outputs),
       conv tile = A^T [ sum_c (B^T d_c B) * U_c ] A,
   16 products per input channel and output instead of the direct form's 36: a 2.25x smaller sum. Exact in
   arithmetic; float32 rounding differs from a direct convolution's (README "Reproducibility").

   Speed: tiles run in blocks of MR, numbered across the images of a thread's range, so no block is padded but the
   last. A block's 16 transformed patches (16, MR, c) stay in L1 while each of the 16 sums, (MR x c) @ (c x NR)
   per block of NR outputs, runs in MR x 2 vector registers; the sums are transformed back and pooled from L1. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

/* VW floats per vector register; MR tiles x 2 vectors of accumulators (12 registers) per register tile. */
#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4
#endif
#define NR (2 * VW)
#define MR 6

typedef float vec __attribute__((vector_size(VW * 4)));
typedef float vecu __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t mask __attribute__((vector_size(VW * 4)));

/* Outputs per packed block of U: the caller pads o to a multiple of it. */
int mcdrop_winograd_nr(void) { return NR; }

int mcdrop_openmp(void) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

/* Lane-wise max, NaN if either is NaN (as torch's max pooling and ReLU): a where a > b or a is NaN, else b (a
   vector comparison's lanes are all ones or all zeros). */
static inline vec vmax(vec a, vec b) {
    mask m = (a > b) | (a != a);
    return (vec)(((mask)a & m) | ((mask)b & ~m));
}

static inline vec vrelu(vec a, int relu) { return relu ? vmax(a, (vec){0}) : a; }

static inline float srelu(float a, int relu) { return relu && a < 0.0f ? 0.0f : a; }

/* B^T r(d + ib) B for the tile (ti, tj) of one image x (h, w, c), written to v[pos * MR * c + k] for pos < 16;
   padding reads `pad`, which holds -ib, so that it adds up to exactly 0. */
static void transform_tile(const float *restrict x, int64_t h, int64_t w, int64_t c, int64_t ti, int64_t tj,
                           int relu, const float *restrict ib, const float *restrict pad, float *restrict v) {
    const float *p[4][4];
    for (int r = 0; r < 4; r++) {
        for (int s = 0; s < 4; s++) {
            int64_t row = 2 * ti - 1 + r, col = 2 * tj - 1 + s;
            p[r][s] = (row >= 0 && row < h && col >= 0 && col < w) ? x + (row * w + col) * c : pad;
        }
    }
    const int64_t plane = MR * c;
    int64_t k = 0;
    for (; k + VW <= c; k += VW) { /* VW channels at a time */
        vec e[4][4];
        for (int s = 0; s < 4; s++) { /* B^T d: along rows */
            vec b = *(const vecu *)(ib + k);
            vec d0 = vrelu(*(const vecu *)(p[0][s] + k) + b, relu), d1 = vrelu(*(const vecu *)(p[1][s] + k) + b, relu);
            vec d2 = vrelu(*(const vecu *)(p[2][s] + k) + b, relu), d3 = vrelu(*(const vecu *)(p[3][s] + k) + b, relu);
            e[0][s] = d0 - d2;
            e[1][s] = d1 + d2;
            e[2][s] = d2 - d1;
            e[3][s] = d1 - d3;
        }
        for (int a = 0; a < 4; a++) { /* (B^T d) B: along columns */
            *(vecu *)(v + (a * 4 + 0) * plane + k) = e[a][0] - e[a][2];
            *(vecu *)(v + (a * 4 + 1) * plane + k) = e[a][1] + e[a][2];
            *(vecu *)(v + (a * 4 + 2) * plane + k) = e[a][2] - e[a][1];
            *(vecu *)(v + (a * 4 + 3) * plane + k) = e[a][1] - e[a][3];
        }
    }
    for (; k < c; k++) { /* the rest, one channel at a time */
        float e[4][4];
        for (int s = 0; s < 4; s++) {
            float d0 = srelu(p[0][s][k] + ib[k], relu), d1 = srelu(p[1][s][k] + ib[k], relu);
            float d2 = srelu(p[2][s][k] + ib[k], relu), d3 = srelu(p[3][s][k] + ib[k], relu);
            e[0][s] = d0 - d2;
            e[1][s] = d1 + d2;
            e[2][s] = d2 - d1;
            e[3][s] = d1 - d3;
        }
        for (int a = 0; a < 4; a++) {
            v[(a * 4 + 0) * plane + k] = e[a][0] - e[a][2];
            v[(a * 4 + 1) * plane + k] = e[a][1] + e[a][2];
            v[(a * 4 + 2) * plane + k] = e[a][2] - e[a][1];
            v[(a * 4 + 3) * plane + k] = e[a][1] - e[a][3];
        }
    }
}

/* m (MR, NR) = v (MR rows of stride c) @ u (c, NR). */
static inline void micro(int64_t c, const float *restrict v, const float *restrict u, float *restrict m) {
    vec acc[MR][2];
    for (int i = 0; i < MR; i++) {
        acc[i][0] = (vec){0};
        acc[i][1] = (vec){0};
    }
    for (int64_t k = 0; k < c; k++) {
        vec u0 = *(const vecu *)(u + k * NR), u1 = *(const vecu *)(u + k * NR + VW);
        for (int i = 0; i < MR; i++) {
            float a = v[i * c + k];
            acc[i][0] += a * u0;
            acc[i][1] += a * u1;
        }
    }
    for (int i = 0; i < MR; i++) {
        *(vecu *)(m + i * NR) = acc[i][0];
        *(vecu *)(m + i * NR + VW) = acc[i][1];
    }
}

/* A^T M A for tile i of a block, pooled, plus bias, ReLU, times scale (when not NULL): m (16, MR, NR) ->
   out[0 .. on). */
static void finish_tile(const float *restrict m, int i, const float *restrict bias, const float *restrict scale,
                        int64_t on, float *restrict out) {
    float res[NR];
    for (int j = 0; j < NR; j += VW) {
        vec q[4][4];
        for (int a = 0; a < 4; a++) {
            for (int b = 0; b < 4; b++) {
                q[a][b] = *(const vecu *)(m + ((a * 4 + b) * MR + i) * NR + j);
            }
        }
        vec s0[4], s1[4];
        for (int b = 0; b < 4; b++) {
            s0[b] = q[0][b] + q[1][b] + q[2][b];
            s1[b] = q[1][b] - q[2][b] - q[3][b];
        }
        vec y00 = s0[0] + s0[1] + s0[2], y01 = s0[1] - s0[2] - s0[3];
        vec y10 = s1[0] + s1[1] + s1[2], y11 = s1[1] - s1[2] - s1[3];
        vec best = vmax(vmax(y00, y01), vmax(y10, y11)) + *(const vecu *)(bias + j);
        *(vecu *)(res + j) = vmax(best, (vec){0});
    }
    if (scale) {
        for (int64_t j = 0; j < on; j++) {
            out[j] = res[j] * scale[j];
        }
    } else {
        memcpy(out, res, (size_t)on * sizeof(float));
    }
}

/* Tiles of images [n * part / parts, n * (part + 1) / parts). u packed (ob, 16, c, NR), bias (ob * NR), scale
   (n, o) or NULL: y[i, j, o] of image n times scale[n, o] (a channel dropout's mask, fused).
   Returns 0, or 1 when scratch memory could not be had. */
static int part_images(int64_t part, int64_t parts, int64_t n, int64_t h, int64_t w, int64_t c, int64_t o,
                       int relu, const float *ib, const float *x, const float *u, const float *bias,
                       const float *scale, float *y) {
    const int64_t h2 = h / 2, w2 = w / 2, tiles = h2 * w2, ob = (o + NR - 1) / NR;
    const int64_t g0 = n * part / parts * tiles, g1 = n * (part + 1) / parts * tiles;
    if (g0 >= g1) {
        return 0;
    }
    float *v = aligned_alloc(64, (size_t)((16 * MR * c + 15) / 16 * 16) * sizeof(float));
    float *m = aligned_alloc(64, (size_t)(16 * MR * NR) * sizeof(float));
    float *zero = calloc((size_t)c, sizeof(float)), *pad = malloc((size_t)c * sizeof(float));
    int failed = !v || !m || !zero || !pad;
    for (int64_t k = 0; k < c && !failed; k++) {
        pad[k] = ib ? -ib[k] : 0.0f;
    }
    for (int64_t g = g0; g < g1 && !failed; g += MR) { /* tiles g .. g + MR, numbered across images */
        const int64_t rows = g1 - g < MR ? g1 - g : MR;
        for (int64_t i = 0; i < MR; i++) {
            if (i < rows) {
                const int64_t img = (g + i) / tiles, t = (g + i) % tiles;
                transform_tile(x + img * h * w * c, h, w, c, t / w2, t % w2, relu, ib ? ib : zero, pad, v + i * c);
            } else {
                for (int pos = 0; pos < 16; pos++) {
                    memset(v + pos * MR * c + i * c, 0, (size_t)c * sizeof(float));
                }
            }
        }
        for (int64_t b = 0; b < ob; b++) {
            const int64_t o0 = b * NR, on = o - o0 < NR ? o - o0 : NR;
            for (int pos = 0; pos < 16; pos++) {
                micro(c, v + pos * MR * c, u + (b * 16 + pos) * c * NR, m + pos * MR * NR);
            }
            for (int64_t i = 0; i < rows; i++) {
                finish_tile(m, (int)i, bias + o0, scale ? scale + (g + i) / tiles * o + o0 : NULL, on,
                            y + (g + i) * o + o0);
            }
        }
    }
    free(v);
    free(m);
    free(zero);
    free(pad);
    return failed;
}

/* All n images on `threads` threads (OpenMP, the threads torch uses); nonzero if scratch memory ran out. */
int conv3x3_pool(int32_t threads, int64_t n, int64_t h, int64_t w, int64_t c, int64_t o, int32_t relu,
                 const float *ib, const float *x, const float *u, const float *bias, const float *scale, float *y) {
    int failed = 0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(| : failed)
    failed |= part_images(omp_get_thread_num(), omp_get_num_threads(), n, h, w, c, o, relu, ib, x, u, bias, scale, y);
#else
    for (int32_t t = 0; t < threads; t++) {
        failed |= part_images(t, threads, n, h, w, c, o, relu, ib, x, u, bias, scale, y);
    }
#endif
    return failed;
}

/* One of `parts` contiguous image ranges (a build without OpenMP runs them on a thread pool). */
int conv3x3_pool_part(int32_t part, int32_t parts, int64_t n, int64_t h, int64_t w, int64_t c, int64_t o,
                      int32_t relu, const float *ib, const float *x, const float *u, const float *bias,
                      const float *scale, float *y) {
    return part_images(part, parts, n, h, w, c, o, relu, ib, x, u, bias, scale, y);
}
