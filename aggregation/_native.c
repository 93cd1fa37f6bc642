/* Fused coordinate-wise kernels over a list of separate float32 rows (phalanx.aggregation.fused).
 *
 * A gossip node combines its own vector with a few received ones. In torch that is a stack (one copy of
 * every row) and then several passes over the stacked rows. These kernels read every row exactly once,
 * a block of columns at a time, keep the per-column state of the block in L1, and write the result once.
 * They run with the GIL released.
 *
 * trimmed_mean(rows, d, f, out) -> bool
 *     out[j] = mean of the values of column j without its f largest and f smallest, exactly: no sum of
 *     extreme values is ever subtracted (a 1e30 row cannot wipe out the honest digits). Each column keeps
 *     two multisets of f values, `top` (the f largest seen) and `bot` (the f smallest of the rest); a new
 *     value enters `top` by a compare-exchange chain that carries the multiset's minimum out, that value
 *     enters `bot` by the mirror chain, and what `bot` pushes out is a middle value and is summed.
 *     Cost per column: 4f min/max per row, vectorised across the columns of a block.
 *     f = 1 has its own pass (the default and the simulator's hot path): the largest and the
 *     smallest value seen so far, `hi` and `lo`, take the rows two at a time. The pair is ordered first
 *     (mx, mn); mx goes through hi, mn through lo, and the two values pushed out are middle values and
 *     are summed: 4 min/max and 2 adds per 2 rows instead of 4 min/max, 2 adds per row. Every
 *     compare-exchange is written max(x, y) / min(y, x), which keeps the multiset of its two inputs
 *     exactly (ties, signed zeros and NaNs included: MAXPS/MINPS answer their second operand when they
 *     cannot order), so every value, NaN or infinity, ends in hi, lo or the sum, and a finiteness check
 *     of those three at the end finds it without a per-value probe.
 * weighted_sum(rows, weights, d, out) -> bool
 *     out[j] = sum_i weights[i] * rows[i][j], accumulated in row order.
 *
 * deviation(x, ref, total, d) -> float
 *     total += x - ref, and the squared norm of x - ref (a consensus-distance accumulator).
 *
 * The first two return False when a row holds a NaN or an infinity (out is then meaningless; the caller falls
 * back to its checked path, which drops the bad rows). Rows and out must be C-contiguous float32 buffers of
 * d values (the Python side checks).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 128
#define MAX_F 8
#define MAX_ROWS 4096


static inline float max_f32(float a, float b) { return a > b ? a : b; }
static inline float min_f32(float a, float b) { return a < b ? a : b; }

/* Non-finite detection: x * 0 is 0 for every finite x and NaN for an infinity or a NaN. */
static inline int block_finite(const float *probe, int len) {
    int ok = 1;
    for (int j = 0; j < len; ++j) ok &= (probe[j] == 0.0f);
    return ok;
}

static inline __attribute__((always_inline)) int trimmed_block(const float *const *rows, int n, int f,
                                                                int64_t start, int len, float *out) {
    float top[MAX_F][BLOCK], bot[MAX_F][BLOCK], mid[BLOCK], e[BLOCK], probe[BLOCK];
    for (int j = 0; j < len; ++j) {
        mid[j] = 0.0f;
        probe[j] = 0.0f;
    }
    for (int k = 0; k < f; ++k) {
        const float *r = rows[k] + start;
        for (int j = 0; j < len; ++j) {
            top[k][j] = r[j];
            bot[k][j] = INFINITY;
            probe[j] += r[j] * 0.0f;
        }
    }
    for (int i = f; i < n; ++i) {
        const float *r = rows[i] + start;
        for (int j = 0; j < len; ++j) {
            e[j] = r[j];
            probe[j] += r[j] * 0.0f;
        }
        for (int k = 0; k < f; ++k) { /* e leaves as the minimum of top + {e} */
            float *t = top[k];
            for (int j = 0; j < len; ++j) {
                float a = t[j], b = e[j];
                t[j] = max_f32(a, b);
                e[j] = min_f32(a, b);
            }
        }
        for (int k = 0; k < f; ++k) { /* e leaves as the maximum of bot + {e} */
            float *t = bot[k];
            for (int j = 0; j < len; ++j) {
                float a = t[j], b = e[j];
                t[j] = min_f32(a, b);
                e[j] = max_f32(a, b);
            }
        }
        if (i >= 2 * f) /* the first f values pushed out of bot are its +inf placeholders */
            for (int j = 0; j < len; ++j) mid[j] += e[j];
    }
    const float count = (float)(n - 2 * f);
    for (int j = 0; j < len; ++j) out[start + j] = mid[j] / count;
    return block_finite(probe, len);
}

/* f = 1, rows taken two at a time (see the header). Same operations in the same order as trimmed1_16. */
static inline __attribute__((always_inline)) int trimmed1_block(const float *const *rows, int n, int64_t start,
                                                                 int len, float *out) {
    float hi[BLOCK], lo[BLOCK], mid[BLOCK];
    const float *r0 = rows[0] + start, *r1 = rows[1] + start;
    for (int j = 0; j < len; ++j) {
        hi[j] = max_f32(r0[j], r1[j]);
        lo[j] = min_f32(r1[j], r0[j]);
        mid[j] = 0.0f;
    }
    int i = 2;
    for (; i + 1 < n; i += 2) {
        const float *a = rows[i] + start, *b = rows[i + 1] + start;
        for (int j = 0; j < len; ++j) {
            float mx = max_f32(a[j], b[j]), mn = min_f32(b[j], a[j]);
            float p1 = min_f32(hi[j], mx), p2 = max_f32(lo[j], mn);
            hi[j] = max_f32(mx, hi[j]);
            lo[j] = min_f32(mn, lo[j]);
            mid[j] = mid[j] + p1;
            mid[j] = mid[j] + p2;
        }
    }
    if (i < n) {
        const float *e = rows[i] + start;
        for (int j = 0; j < len; ++j) {
            float p = min_f32(hi[j], e[j]);
            hi[j] = max_f32(e[j], hi[j]);
            float q = max_f32(lo[j], p);
            lo[j] = min_f32(p, lo[j]);
            mid[j] = mid[j] + q;
        }
    }
    const float count = (float)(n - 2);
    int ok = 1;
    for (int j = 0; j < len; ++j) {
        out[start + j] = mid[j] / count;
        ok &= ((hi[j] - hi[j]) == 0.0f) & ((lo[j] - lo[j]) == 0.0f) & ((mid[j] - mid[j]) == 0.0f);
    }
    return ok;
}

/* Portable path: blocks of BLOCK columns, the per-column state in L1 arrays. */
#define TRIMMED_LOOP(F_EXPR, FROM)                                                        \
    for (int64_t start = (FROM); start < d; start += BLOCK) {                             \
        int len = (int)((d - start) < BLOCK ? (d - start) : BLOCK);                        \
        ok &= trimmed_block(rows, n, (F_EXPR), start, len, out);                          \
    }

static int trimmed_mean_portable(const float *const *rows, int n, int f, int64_t from, int64_t d, float *out) {
    int ok = 1;
    switch (f) { /* one specialisation per small f, so that the chains unroll */
    case 1:
        for (int64_t start = from; start < d; start += BLOCK)
            ok &= trimmed1_block(rows, n, start, (int)((d - start) < BLOCK ? (d - start) : BLOCK), out);
        break;
    case 2: TRIMMED_LOOP(2, from) break;
    default: TRIMMED_LOOP(f, from) break;
    }
    return ok;
}

static int weighted_sum_portable(const float *const *rows, const float *w, int n, int64_t from, int64_t d,
                                 float *out) {
    int ok = 1;
    float acc[BLOCK], probe[BLOCK];
    for (int64_t start = from; start < d; start += BLOCK) {
        int len = (int)((d - start) < BLOCK ? (d - start) : BLOCK);
        const float *r0 = rows[0] + start;
        for (int j = 0; j < len; ++j) {
            acc[j] = w[0] * r0[j];
            probe[j] = r0[j] * 0.0f;
        }
        for (int i = 1; i < n; ++i) {
            const float *r = rows[i] + start;
            const float wi = w[i];
            for (int j = 0; j < len; ++j) {
                acc[j] += wi * r[j];
                probe[j] += r[j] * 0.0f;
            }
        }
        for (int j = 0; j < len; ++j) out[start + j] = acc[j];
        ok &= block_finite(probe, len);
    }
    return ok;
}

/* total += x - ref; returns sum (x - ref)^2, accumulated in float per lane, summed in double. */
static double deviation_portable(const float *x, const float *ref, float *total, int64_t from, int64_t d) {
    float lanes[BLOCK];
    double sq = 0.0;
    for (int64_t start = from; start < d; start += BLOCK) {
        int len = (int)((d - start) < BLOCK ? (d - start) : BLOCK);
        for (int j = 0; j < len; ++j) {
            float dev = x[start + j] - ref[start + j];
            total[start + j] += dev;
            lanes[j] = dev * dev;
        }
        for (int j = 0; j < len; ++j) sq += lanes[j];
    }
    return sq;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2 1

/* AVX2 path: 16 columns at a time with the whole per-column state in registers; each row is read once
 * with two unaligned loads. Same operations in the same order as the portable path, so both give the
 * same bits. Non-finite detection: the plain sum of a column's values is finite unless a value is NaN or
 * infinite (or the sum overflows, which only sends the caller to its checked path). */
#define V __m256
static inline __attribute__((always_inline, target("avx2"))) void trimmed_16(const float *const *rows, int n,
                                                                           int f, int64_t j, float *out,
                                                                           V *bad) {
    V top[MAX_F][2], bot[MAX_F][2], mid[2], e[2], probe[2];
    const V inf = _mm256_set1_ps(INFINITY);
    mid[0] = mid[1] = probe[0] = probe[1] = _mm256_setzero_ps();
    for (int k = 0; k < f; ++k) {
        for (int h = 0; h < 2; ++h) {
            top[k][h] = _mm256_loadu_ps(rows[k] + j + 8 * h);
            bot[k][h] = inf;
            probe[h] = _mm256_add_ps(probe[h], top[k][h]);
        }
    }
    for (int i = f; i < n; ++i) {
        for (int h = 0; h < 2; ++h) {
            e[h] = _mm256_loadu_ps(rows[i] + j + 8 * h);
            probe[h] = _mm256_add_ps(probe[h], e[h]);
        }
        for (int k = 0; k < f; ++k)
            for (int h = 0; h < 2; ++h) {
                V a = top[k][h];
                top[k][h] = _mm256_max_ps(a, e[h]);
                e[h] = _mm256_min_ps(a, e[h]);
            }
        for (int k = 0; k < f; ++k)
            for (int h = 0; h < 2; ++h) {
                V a = bot[k][h];
                bot[k][h] = _mm256_min_ps(a, e[h]);
                e[h] = _mm256_max_ps(a, e[h]);
            }
        if (i >= 2 * f)
            for (int h = 0; h < 2; ++h) mid[h] = _mm256_add_ps(mid[h], e[h]);
    }
    const V count = _mm256_set1_ps((float)(n - 2 * f));
    for (int h = 0; h < 2; ++h) {
        _mm256_storeu_ps(out + j + 8 * h, _mm256_div_ps(mid[h], count));
        *bad = _mm256_or_ps(*bad, _mm256_sub_ps(probe[h], probe[h])); /* 0 iff finite */
    }
}

/* f = 1 over 16 columns, rows two at a time (see the header); mirrors trimmed1_block. */
static inline __attribute__((always_inline, target("avx2"))) void trimmed1_16(const float *const *rows, int n,
                                                                            int64_t j, float *out, V *bad) {
    V hi[2], lo[2], mid[2];
    for (int h = 0; h < 2; ++h) {
        V a = _mm256_loadu_ps(rows[0] + j + 8 * h), b = _mm256_loadu_ps(rows[1] + j + 8 * h);
        hi[h] = _mm256_max_ps(a, b);
        lo[h] = _mm256_min_ps(b, a);
        mid[h] = _mm256_setzero_ps();
    }
    int i = 2;
    for (; i + 1 < n; i += 2)
        for (int h = 0; h < 2; ++h) {
            V a = _mm256_loadu_ps(rows[i] + j + 8 * h), b = _mm256_loadu_ps(rows[i + 1] + j + 8 * h);
            V mx = _mm256_max_ps(a, b), mn = _mm256_min_ps(b, a);
            V p1 = _mm256_min_ps(hi[h], mx), p2 = _mm256_max_ps(lo[h], mn);
            hi[h] = _mm256_max_ps(mx, hi[h]);
            lo[h] = _mm256_min_ps(mn, lo[h]);
            mid[h] = _mm256_add_ps(mid[h], p1);
            mid[h] = _mm256_add_ps(mid[h], p2);
        }
    if (i < n)
        for (int h = 0; h < 2; ++h) {
            V e = _mm256_loadu_ps(rows[i] + j + 8 * h);
            V p = _mm256_min_ps(hi[h], e);
            hi[h] = _mm256_max_ps(e, hi[h]);
            V q = _mm256_max_ps(lo[h], p);
            lo[h] = _mm256_min_ps(p, lo[h]);
            mid[h] = _mm256_add_ps(mid[h], q);
        }
    const V count = _mm256_set1_ps((float)(n - 2));
    for (int h = 0; h < 2; ++h) {
        _mm256_storeu_ps(out + j + 8 * h, _mm256_div_ps(mid[h], count));
        *bad = _mm256_or_ps(*bad, _mm256_sub_ps(hi[h], hi[h])); /* 0 iff finite, each of the three */
        *bad = _mm256_or_ps(*bad, _mm256_sub_ps(lo[h], lo[h]));
        *bad = _mm256_or_ps(*bad, _mm256_sub_ps(mid[h], mid[h]));
    }
}

static inline __attribute__((always_inline, target("avx2"))) int all_zero(V bad) {
    return _mm256_movemask_ps(_mm256_cmp_ps(bad, _mm256_setzero_ps(), _CMP_EQ_OQ)) == 0xff;
}

#define TRIMMED_16_LOOP(F_EXPR)                                                            \
    for (; j + 16 <= d; j += 16) trimmed_16(rows, n, (F_EXPR), j, out, &bad);

__attribute__((target("avx2"))) static int trimmed_mean_avx2(const float *const *rows, int n, int f, int64_t d,
                                                            float *out) {
    V bad = _mm256_setzero_ps();
    int64_t j = 0;
    switch (f) {
    case 1:
        for (; j + 16 <= d; j += 16) trimmed1_16(rows, n, j, out, &bad);
        break;
    case 2: TRIMMED_16_LOOP(2) break;
    case 3: TRIMMED_16_LOOP(3) break;
    default: TRIMMED_16_LOOP(f) break;
    }
    int ok = all_zero(bad);
    return trimmed_mean_portable(rows, n, f, j, d, out) & ok;
}

/* 32 columns at a time: four independent accumulator chains hide the FMA latency. */
__attribute__((target("avx2,fma"))) static int weighted_sum_avx2(const float *const *rows, const float *w, int n,
                                                                int64_t d, float *out) {
    V bad = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= d; j += 32) {
        V acc[4], probe[4];
        const V w0 = _mm256_set1_ps(w[0]);
        for (int h = 0; h < 4; ++h) {
            probe[h] = _mm256_loadu_ps(rows[0] + j + 8 * h);
            acc[h] = _mm256_mul_ps(w0, probe[h]);
        }
        for (int i = 1; i < n; ++i) {
            const V wi = _mm256_set1_ps(w[i]);
            for (int h = 0; h < 4; ++h) {
                V x = _mm256_loadu_ps(rows[i] + j + 8 * h);
                acc[h] = _mm256_fmadd_ps(wi, x, acc[h]);
                probe[h] = _mm256_add_ps(probe[h], x);
            }
        }
        for (int h = 0; h < 4; ++h) {
            _mm256_storeu_ps(out + j + 8 * h, acc[h]);
            bad = _mm256_or_ps(bad, _mm256_sub_ps(probe[h], probe[h]));
        }
    }
    int ok = all_zero(bad);
    return weighted_sum_portable(rows, w, n, j, d, out) & ok;
}
__attribute__((target("avx2,fma"))) static double deviation_avx2(const float *x, const float *ref, float *total,
                                                                  int64_t d) {
    V acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    int64_t j = 0;
    for (; j + 16 <= d; j += 16) {
        for (int h = 0; h < 2; ++h) {
            V dev = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8 * h), _mm256_loadu_ps(ref + j + 8 * h));
            _mm256_storeu_ps(total + j + 8 * h, _mm256_add_ps(_mm256_loadu_ps(total + j + 8 * h), dev));
            acc[h] = _mm256_fmadd_ps(dev, dev, acc[h]);
        }
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(acc[0], acc[1]));
    double sq = 0.0;
    for (int k = 0; k < 8; ++k) sq += lanes[k];
    return sq + deviation_portable(x, ref, total, j, d);
}
#undef V
#endif

static int simd_allowed = 1; /* tests switch it off to check the portable path against the AVX2 one */

static int use_avx2(void) {
#ifdef HAVE_AVX2
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return known && simd_allowed;
#else
    return 0;
#endif
}

static int trimmed_mean_kernel(const float *const *rows, int n, int f, int64_t d, float *out) {
#ifdef HAVE_AVX2
    if (use_avx2()) return trimmed_mean_avx2(rows, n, f, d, out);
#endif
    return trimmed_mean_portable(rows, n, f, 0, d, out);
}

static int weighted_sum_kernel(const float *const *rows, const float *w, int n, int64_t d, float *out) {
#ifdef HAVE_AVX2
    if (use_avx2()) return weighted_sum_avx2(rows, w, n, d, out);
#endif
    return weighted_sum_portable(rows, w, n, 0, d, out);
}

static double deviation_kernel(const float *x, const float *ref, float *total, int64_t d) {
#ifdef HAVE_AVX2
    if (use_avx2()) return deviation_avx2(x, ref, total, d);
#endif
    return deviation_portable(x, ref, total, 0, d);
}

/* Reads a sequence of buffer addresses (Python ints) into `pointers`; returns the count or -1. */
static Py_ssize_t read_pointers(PyObject *seq, const float **pointers) {
    PyObject *fast = PySequence_Fast(seq, "rows must be a sequence of addresses");
    if (fast == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n < 1 || n > MAX_ROWS) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "between 1 and %d rows are supported, got %zd", MAX_ROWS, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; ++i) {
        void *p = PyLong_AsVoidPtr(PySequence_Fast_GET_ITEM(fast, i));
        if (p == NULL) {
            Py_DECREF(fast);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "null row address");
            return -1;
        }
        pointers[i] = (const float *)p;
    }
    Py_DECREF(fast);
    return n;
}

/* The output buffer's address (a Python int); NULL with an exception set when it is not one. */
static float *read_output(PyObject *obj) {
    float *out = (float *)PyLong_AsVoidPtr(obj);
    if (out == NULL && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "null output");
    return out;
}

static PyObject *py_trimmed_mean(PyObject *self, PyObject *args) {
    PyObject *seq, *out_obj;
    Py_ssize_t d;
    int f;
    if (!PyArg_ParseTuple(args, "OniO", &seq, &d, &f, &out_obj)) return NULL;
    const float *pointers[MAX_ROWS];
    Py_ssize_t n = read_pointers(seq, pointers);
    if (n < 0) return NULL;
    if (f < 1 || f > MAX_F || n < 2 * f + 1 || d < 0) {
        PyErr_Format(PyExc_ValueError, "trimmed_mean needs 1 <= f <= %d and n >= 2f + 1 (n=%zd, f=%d)", MAX_F, n, f);
        return NULL;
    }
    float *out = read_output(out_obj);
    if (out == NULL) return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = trimmed_mean_kernel(pointers, (int)n, f, (int64_t)d, out);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ok);
}

static PyObject *py_weighted_sum(PyObject *self, PyObject *args) {
    PyObject *seq, *weights_obj, *out_obj;
    Py_ssize_t d;
    if (!PyArg_ParseTuple(args, "OOnO", &seq, &weights_obj, &d, &out_obj)) return NULL;
    const float *pointers[MAX_ROWS];
    float weights[MAX_ROWS];
    Py_ssize_t n = read_pointers(seq, pointers);
    if (n < 0) return NULL;
    PyObject *fast = PySequence_Fast(weights_obj, "weights must be a sequence of floats");
    if (fast == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(fast) != n || d < 0) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "weighted_sum needs one weight per row");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; ++i) {
        weights[i] = (float)PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i));
    }
    Py_DECREF(fast);
    if (PyErr_Occurred()) return NULL;
    float *out = read_output(out_obj);
    if (out == NULL) return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = weighted_sum_kernel(pointers, weights, (int)n, (int64_t)d, out);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(ok);
}

static PyObject *py_deviation(PyObject *self, PyObject *args) {
    PyObject *x_obj, *ref_obj, *total_obj;
    Py_ssize_t d;
    if (!PyArg_ParseTuple(args, "OOOn", &x_obj, &ref_obj, &total_obj, &d)) return NULL;
    const float *x = (const float *)PyLong_AsVoidPtr(x_obj);
    const float *ref = (const float *)PyLong_AsVoidPtr(ref_obj);
    float *total = (float *)PyLong_AsVoidPtr(total_obj);
    if (x == NULL || ref == NULL || total == NULL || d < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "deviation needs three buffers and d >= 0");
        return NULL;
    }
    double sq;
    Py_BEGIN_ALLOW_THREADS
    sq = deviation_kernel(x, ref, total, (int64_t)d);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(sq);
}

static PyObject *py_set_simd(PyObject *self, PyObject *arg) {
    int flag = PyObject_IsTrue(arg);
    if (flag < 0) return NULL;
    simd_allowed = flag;
    return PyBool_FromLong(use_avx2());
}

static PyMethodDef methods[] = {
    {"deviation", py_deviation, METH_VARARGS,
     "deviation(x, ref, total, d) -> float: total += x - ref (float32 buffers by address); returns the "
     "squared norm of x - ref."},
    {"set_simd", py_set_simd, METH_O,
     "set_simd(flag) -> bool: allow the AVX2 kernels (default) or force the portable ones; returns whether "
     "AVX2 kernels now run."},
    {"trimmed_mean", py_trimmed_mean, METH_VARARGS,
     "trimmed_mean(rows, d, f, out) -> bool: exact coordinate-wise trimmed mean of float32 rows (addresses) "
     "into out; False if a row is not finite."},
    {"weighted_sum", py_weighted_sum, METH_VARARGS,
     "weighted_sum(rows, weights, d, out) -> bool: sum_i weights[i] * rows[i] into out; False if a row is "
     "not finite."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL) {
        PyModule_AddIntConstant(m, "MAX_F", MAX_F);
        PyModule_AddIntConstant(m, "MAX_ROWS", MAX_ROWS);
    }
    return m;
}
