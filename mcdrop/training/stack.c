/* Gradients of G stacked one-hidden-layer dropout networks for one minibatch (mcdrop/training/stack_kernel.py
   builds and calls it; mcdrop/training/uci.py's _train_stack is the same step in torch operations).

   Network g (data set k = owner[g], minibatch rows r_b = idx[g, b], b < B), with s_g = 1 / (1 - p_g):
       x_b = X[k, r_b] * m1_b,  a_b = s_g x_b W1_g + b1_g,  h_b = relu(a_b) * m2_b,  o_b = s_g h_b W2_g + b2_g
   homoscedastic (one output):       L_g = mean_b (o_b - y_b)^2                         + decay_g (|W1|^2 + |W2|^2)
   heteroscedastic (o = (mu, v)):    L_g = mean_b w_b [exp(-v_b) (y_b - mu_b)^2 + v_b]  + decay_g (|W1|^2 + |W2|^2)
   with w_b = exp(beta v_b) held constant (beta-NLL; beta = 0: the Gaussian NLL).
   The keep masks m are the 16-bit lanes u of the random words (three per 64-bit word, lanes 0-2), kept when
   u >= threshold_g, exactly as _keep draws them; the gradients written are dL_g / d(W1, b1, W2, b2), as autograd
   gives them for the torch step (ReLU's gradient is 0 at a = 0). Networks are independent, so they are split over
   OpenMP threads; each one's sums run in row order. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* VW floats per vector: each network's hidden units are padded to a multiple of VW (zero weights, zero masks). */
#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4
#endif
typedef float vec __attribute__((vector_size(VW * 4)));
typedef int32_t veci __attribute__((vector_size(VW * 4)));

int stack_openmp(void) {
#if defined(_OPENMP)
    return 1;
#else
    return 0;
#endif
}

/* The n lanes e0 .. e0 + n - 1 (lane e: 16-bit lane e % 3 of word e / 3) copied out contiguously. */
static void lanes(const int16_t *restrict words, int64_t e0, int64_t n, int16_t *restrict out) {
    int64_t q = e0 / 3, r = e0 % 3, i = 0;
    for (; r != 0 && i < n; i++) {
        out[i] = words[4 * q + r];
        if (++r == 3) { r = 0; q++; }
    }
    for (; i + 3 <= n; i += 3, q++) memcpy(out + i, words + 4 * q, 6);
    for (r = 0; i < n; i++, r++) out[i] = words[4 * q + r];
}

static inline float hsum(vec v) {
    float t = 0.0f;
    for (int k = 0; k < VW; k++) t += v[k];
    return t;
}

/* One network's gradients; n_out is 1 or 2, a constant after inlining. */
static inline void net_grad(int64_t g, int64_t batch, int64_t n_rows, int64_t d, int64_t h, const int n_out, float beta,
                            const float *x, const float *y, const int64_t *owner, const int64_t *idx,
                            const int16_t *words_in, const int16_t *words_hidden, const int16_t *threshold,
                            const float *scale, const float *decay, const float *w1, const float *b1, const float *w2,
                            const float *b2, float *g_w1, float *g_b1, float *g_w2, float *g_b2) {
    const int64_t nv = (h + VW - 1) / VW, hp = nv * VW;
    /* vectors: w1s (d nv), w2s (n_out nv), b1 (nv), m2 (nv), gw1 (d nv), gw2 (n_out nv), gb1 (nv) */
    vec *vbuf = aligned_alloc(VW * 4, sizeof(vec) * (size_t)((2 * d + 2 * n_out + 3) * nv));
    int16_t *lane_in = malloc(sizeof(int16_t) * (size_t)(batch * d)), *lane_hid = malloc(sizeof(int16_t) * (size_t)(batch * h));
    memset(vbuf, 0, sizeof(vec) * (size_t)((2 * d + 2 * n_out + 3) * nv));
    vec *w1s = vbuf, *w2s = w1s + d * nv, *vb1 = w2s + n_out * nv, *m2 = vb1 + nv, *gw1 = m2 + nv;
    vec *gw2 = gw1 + d * nv, *gb1 = gw2 + n_out * nv;
    float *w1f = (float *)w1s, *w2f = (float *)w2s, *b1f = (float *)vb1, *m2f = (float *)m2;
    const float s = scale[g], two_decay = 2.0f * decay[g];
    const float *W1 = w1 + g * d * h, *W2 = w2 + g * h * n_out, *B2 = b2 + g * n_out;
    float *GW1 = g_w1 + g * d * h, *GB1 = g_b1 + g * h, *GW2 = g_w2 + g * h * n_out, *GB2 = g_b2 + g * n_out;
    const int16_t t = threshold[g];
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = 0; j < h; j++) w1f[i * hp + j] = W1[i * h + j] * s;
    for (int64_t j = 0; j < h; j++)
        for (int o = 0; o < n_out; o++) w2f[o * hp + j] = W2[j * n_out + o] * s;
    for (int64_t j = 0; j < h; j++) b1f[j] = b1[g * h + j];
    lanes(words_in, g * batch * d, batch * d, lane_in);
    lanes(words_hidden, g * batch * h, batch * h, lane_hid);
    const float *X = x + owner[g] * n_rows * d, *Y = y + owner[g] * n_rows;
    const vec zero = {0};
    float gb2[2] = {0.0f, 0.0f}, xm[d];
    for (int64_t b = 0; b < batch; b++) {
        const int64_t r = idx[g * batch + b];
        for (int64_t i = 0; i < d; i++) xm[i] = lane_in[b * d + i] >= t ? X[r * d + i] : 0.0f;
        for (int64_t j = 0; j < h; j++) m2f[j] = lane_hid[b * h + j] >= t ? 1.0f : 0.0f;
        vec a[nv], hm[nv];
        for (int64_t v = 0; v < nv; v++) a[v] = vb1[v];
        for (int64_t i = 0; i < d; i++)
            for (int64_t v = 0; v < nv; v++) a[v] += xm[i] * w1s[i * nv + v];
        vec acc0 = zero, acc1 = zero;
        for (int64_t v = 0; v < nv; v++) {
            const veci pos = a[v] > zero;
            hm[v] = (vec)((veci)a[v] & pos) * m2[v];
            acc0 += hm[v] * w2s[v];
            if (n_out > 1) acc1 += hm[v] * w2s[nv + v];
        }
        const float out0 = B2[0] + hsum(acc0), out1 = n_out > 1 ? B2[1] + hsum(acc1) : 0.0f;
        float d0, d1 = 0.0f;
        if (n_out == 1) {
            d0 = 2.0f * (out0 - Y[r]) / (float)batch;
        } else {
            const float e = expf(-out1), diff = Y[r] - out0;
            const float w = beta != 0.0f ? expf(beta * out1) / (float)batch : 1.0f / (float)batch;
            d0 = -2.0f * e * diff * w;
            d1 = (1.0f - e * diff * diff) * w;
        }
        gb2[0] += d0;
        gb2[1] += d1;
        for (int64_t v = 0; v < nv; v++) {
            vec back = d0 * w2s[v];
            gw2[v] += hm[v] * d0;
            if (n_out > 1) {
                back += d1 * w2s[nv + v];
                gw2[nv + v] += hm[v] * d1;
            }
            const vec dh = (vec)((veci)back & (hm[v] > zero)); /* kept and a > 0 */
            gb1[v] += dh;
            for (int64_t i = 0; i < d; i++) gw1[i * nv + v] += xm[i] * dh;
        }
    }
    const float *gw1f = (float *)gw1, *gw2f = (float *)gw2, *gb1f = (float *)gb1;
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = 0; j < h; j++) GW1[i * h + j] = gw1f[i * hp + j] * s + two_decay * W1[i * h + j];
    for (int64_t j = 0; j < h; j++) {
        GB1[j] = gb1f[j];
        for (int o = 0; o < n_out; o++) GW2[j * n_out + o] = gw2f[o * hp + j] * s + two_decay * W2[j * n_out + o];
    }
    for (int o = 0; o < n_out; o++) GB2[o] = gb2[o];
    free(lane_in);
    free(lane_hid);
    free(vbuf);
}

void stack_grad(int32_t threads, int64_t nets, int64_t batch, int64_t n_rows, int64_t d, int64_t h, int64_t n_out, float beta,
                const float *x, const float *y, const int64_t *owner, const int64_t *idx, const int16_t *words_in,
                const int16_t *words_hidden, const int16_t *threshold, const float *scale, const float *decay,
                const float *w1, const float *b1, const float *w2, const float *b2,
                float *g_w1, float *g_b1, float *g_w2, float *g_b2) {
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (int64_t g = 0; g < nets; g++) {
        if (n_out == 1)
            net_grad(g, batch, n_rows, d, h, 1, 0.0f, x, y, owner, idx, words_in, words_hidden, threshold, scale, decay, w1,
                     b1, w2, b2, g_w1, g_b1, g_w2, g_b2);
        else
            net_grad(g, batch, n_rows, d, h, 2, beta, x, y, owner, idx, words_in, words_hidden, threshold, scale, decay, w1,
                     b1, w2, b2, g_w1, g_b1, g_w2, g_b2);
    }
}
