# cdef kernels of bitnet_kernels (all noexcept nogil; threading inside, ISA from the module's dispatch state).
# Shapes are the caller's promise: the Python wrappers in bitnet_kernels.cpu check them.
from libc.stdint cimport int8_t, uint8_t, int16_t, uint16_t, int32_t, int64_t

cdef void quantize_act_k(const float* x, int64_t T, int64_t K, int8_t* q, float* s, int32_t* qsum) noexcept nogil
cdef void i2s_dot_k(const uint8_t* w, int64_t N, int64_t K, const int8_t* q, const int32_t* qsum,
                    const float* s, float ws, int64_t T, int32_t* yi, float* yf) noexcept nogil
cdef void i2s_linear_multi_k(int m, const uint8_t** w, const int64_t* N, int64_t K, const float* x, int64_t T,
                             float** y) noexcept nogil
cdef void i2s_linear_k(const uint8_t* w, int64_t N, int64_t K, const float* x, int64_t T, float* y) noexcept nogil
cdef void q8k_quantize_k(const float* x, int64_t T, int64_t K, int8_t* q, float* d, int16_t* bsums) noexcept nogil
cdef void tq_linear_k(const uint8_t* w, int qtype, int64_t N, int64_t K, const float* x, int64_t T,
                      float* y, bint lane_order=*) noexcept nogil
cdef void f16_gemv_k(const uint16_t* w, int64_t N, int64_t K, const float* x, int64_t T, float* y) noexcept nogil
cdef void q8_head_prepare_k(const uint16_t* w, int64_t N, int64_t K, int8_t* q, float* scale) noexcept nogil
cdef void q8_head_gemv_k(const int8_t* w, const float* scale, int64_t N, int64_t K, const float* x, int64_t T,
                         float* y) noexcept nogil
cdef void rmsnorm_k(const float* x, const float* w, int64_t T, int64_t K, float eps, float* y) noexcept nogil
cdef void rope_neox_k(float* x, const int32_t* pos, int64_t T, int64_t H, int64_t D, float base,
                      int64_t n_rot) noexcept nogil
cdef void attention_k(const float* q, const uint16_t* k, const uint16_t* v, int64_t T, int64_t H, int64_t Hkv,
                      int64_t S, int64_t D, int64_t pos0, int64_t n_kv, float* out) noexcept nogil
cdef void softmax_k(float* x, int64_t T, int64_t N) noexcept nogil
cdef void relu2_mul_k(const float* g, const float* u, float* y, int64_t n) noexcept nogil
cdef void silu_mul_k(const float* g, const float* u, float* y, int64_t n) noexcept nogil
