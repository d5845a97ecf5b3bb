// npuquant's native kernels as torch operators (torch.ops.npuquant.*, CPU dispatch key).
//
// Built against the LibTorch stable ABI (torch/csrc/stable), so one binary serves every torch
// from the floor in TORCH_TARGET_VERSION on. Each wrapper is thin: it checks dtypes, sizes and
// that every tensor lies inside its storage (sizes, strides, storage offset, overflow) before a
// kernel touches memory, then hands pointers, strides and storage extents to the C kernels,
// which check their layouts again. The schemas are defined here; the fake (meta) kernels and the
// pure-torch references for other devices are registered from Python (npuquant/_ops.py).
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "npq.h"

using torch::stable::Tensor;
using ST = torch::headeronly::ScalarType;

namespace {

// ------------------------------------------------------------------------------------- errors

template <class... A>
[[noreturn]] void fail(const char *op, A &&...parts) {
    std::ostringstream s;
    s << "npuquant::" << op << ": ";
    (s << ... << parts);
    throw std::runtime_error(s.str());
}

void check_status(int rc, const char *op) {
    if (rc != NPQ_OK) fail(op, npq_status_message(rc), " (status ", rc, ")");
}

std::string shape_str(const Tensor &t) {
    std::ostringstream s;
    s << "[";
    for (int64_t d = 0; d < t.dim(); d++) s << (d ? ", " : "") << t.size(d);
    s << "]";
    return s.str();
}

const char *dtype_name(ST t) {
    switch (t) {
    case ST::Float: return "float32";
    case ST::Half: return "float16";
    case ST::BFloat16: return "bfloat16";
    case ST::Char: return "int8";
    case ST::Byte: return "uint8";
    case ST::Short: return "int16";
    case ST::Int: return "int32";
    case ST::Long: return "int64";
    default: return "another dtype";
    }
}

int npq_dtype_of(ST t) {
    switch (t) {
    case ST::Float: return NPQ_F32;
    case ST::Half: return NPQ_F16;
    case ST::BFloat16: return NPQ_BF16;
    case ST::Char: return NPQ_I8;
    case ST::Byte: return NPQ_U8;
    case ST::Short: return NPQ_I16;
    case ST::Int: return NPQ_I32;
    case ST::Long: return NPQ_I64;
    default: return -1;
    }
}

int threads() { return (int)torch::stable::get_num_threads(); }

// The kernels' parallel loops on torch's own intra-op pool (npq_set_parallel_backend): one pool for
// the whole process, so a model's torch ops and our kernels never fight over the cores, and the
// pool's threads are already awake between back-to-back calls.
void torch_parallel_backend(int64_t parts, npq_range_fn fn, void *ctx) {
    torch::stable::parallel_for(0, parts, 1, [fn, ctx](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; i++) fn(ctx, i, i + 1);
    });
}

const bool backend_installed = (npq_set_parallel_backend(torch_parallel_backend), true);

// ------------------------------------------------------------------------------ tensor checks

// Elements of t's storage from t's first element on.
int64_t extent_of(const Tensor &t) {
    int64_t bytes = 0;
    aoti_torch_get_storage_size(t.get(), &bytes);
    int64_t es = (int64_t)t.element_size();
    return bytes / es - t.storage_offset();
}

// Every element t addresses lies inside its storage (an empty tensor addresses none).
void check_in_storage(const Tensor &t, const char *op, const char *name) {
    if (t.numel() == 0) return;
    int64_t last = 0, step;
    bool overflow = t.storage_offset() < 0;
    for (int64_t d = 0; d < t.dim(); d++) {
        int64_t st = t.stride(d);
        if (st < 0) fail(op, name, " has a negative stride, which npuquant's kernels do not take");
        overflow |= __builtin_mul_overflow(t.size(d) - 1, st, &step) || __builtin_add_overflow(last, step, &last);
    }
    if (overflow || last >= extent_of(t))
        fail(op, name, " of shape ", shape_str(t), " reaches outside its storage (storage offset ",
             t.storage_offset(), ", storage holds ", extent_of(t) + t.storage_offset(), " elements)");
}

void check_cpu(const Tensor &t, const char *op, const char *name) {
    if (!t.defined()) fail(op, name, " is required, but got None");
    if (!t.is_cpu()) fail(op, name, " must be a CPU tensor for the native kernels");
}

// A checked input: on the CPU, of one of the given dtypes, inside its storage.
void check_input(const Tensor &t, const char *op, const char *name, std::initializer_list<ST> dtypes) {
    check_cpu(t, op, name);
    bool ok = false;
    for (ST d : dtypes) ok |= t.scalar_type() == d;
    if (!ok) {
        std::string want;
        for (ST d : dtypes) want += (want.empty() ? "" : " or ") + std::string(dtype_name(d));
        fail(op, name, " must be ", want, ", but got ", dtype_name(t.scalar_type()));
    }
    check_in_storage(t, op, name);
}

// A float32 contiguous copy of a parameter tensor (scale, offset, ...) when it is not one already.
// The float output dtypes the kernels encode.
void check_float_out(const char *op, ST out_dtype) {
    if (out_dtype != ST::Float && out_dtype != ST::Half && out_dtype != ST::BFloat16)
        fail(op, "out_dtype must be float32, float16 or bfloat16, but got ", dtype_name(out_dtype));
}

Tensor as_f32(const Tensor &t) {
    Tensor f = t.scalar_type() == ST::Float ? t : torch::stable::to(t, ST::Float);
    return f.is_contiguous() ? f : torch::stable::contiguous(f);
}

std::vector<int64_t> sizes_of(const Tensor &t) {
    std::vector<int64_t> s((size_t)t.dim());
    for (int64_t d = 0; d < t.dim(); d++) s[(size_t)d] = t.size(d);
    return s;
}

int32_t shim_dtype(ST t) {
    switch (t) {
    case ST::Float: return aoti_torch_dtype_float32();
    case ST::Half: return aoti_torch_dtype_float16();
    case ST::BFloat16: return aoti_torch_dtype_bfloat16();
    case ST::Char: return aoti_torch_dtype_int8();
    case ST::Byte: return aoti_torch_dtype_uint8();
    case ST::Short: return aoti_torch_dtype_int16();
    case ST::Int: return aoti_torch_dtype_int32();
    case ST::Long: return aoti_torch_dtype_int64();
    default: fail("empty", "unsupported dtype");
    }
}

// A new contiguous CPU tensor, straight from the C shim (torch::stable::empty goes through the
// boxed dispatcher and costs several microseconds per call: too much for a one-row layer).
Tensor new_empty(const std::vector<int64_t> &shape, ST dtype) {
    std::vector<int64_t> strides(shape.size());
    int64_t step = 1;
    for (size_t d = shape.size(); d-- > 0;) {
        strides[d] = step;
        step *= shape[d] > 1 ? shape[d] : 1;
    }
    AtenTensorHandle h = nullptr;
    if (aoti_torch_empty_strided((int64_t)shape.size(), shape.data(), strides.data(), shim_dtype(dtype),
                                 aoti_torch_device_type_cpu(), 0, &h) != 0 || !h)
        fail("empty", "allocation failed");
    return Tensor(h);
}

// t as rows of its last dim numbered by its leading dims, as the kernels take it (npq_layout).
// Leading dims that are contiguous with each other merge, so any rank fits NPQ_MAX_LEAD unless
// its strides are very irregular, in which case the caller makes a contiguous copy.
struct Rows {
    int nd = 0;
    int64_t size[NPQ_MAX_LEAD] = {0}, stride[NPQ_MAX_LEAD] = {0};
    int64_t inner = 1, inner_stride = 1;
};

bool rows_of(const Tensor &t, bool one_row_if_contiguous, Rows &r) {
    if (t.dim() == 0) {
        r.nd = 0, r.inner = 1, r.inner_stride = 1;
        return true;
    }
    if (one_row_if_contiguous && t.is_contiguous()) {
        r.nd = 0, r.inner = t.numel(), r.inner_stride = 1;
        return true;
    }
    r.inner = t.size(t.dim() - 1);
    r.inner_stride = t.stride(t.dim() - 1);
    int nd = 0;
    for (int64_t d = 0; d + 1 < t.dim(); d++) {
        int64_t sz = t.size(d), st = t.stride(d);
        if (sz == 1) continue;  // a size-1 dim adds nothing
        if (nd > 0 && r.stride[nd - 1] == st * sz) {  // merges with the previous dim
            r.size[nd - 1] *= sz;
            r.stride[nd - 1] = st;
            continue;
        }
        if (nd == NPQ_MAX_LEAD) return false;
        r.size[nd] = sz, r.stride[nd] = st, nd++;
    }
    r.nd = nd;
    return true;
}

Rows rows_or_copy(Tensor &t, bool one_row_if_contiguous) {
    Rows r;
    if (!rows_of(t, one_row_if_contiguous, r)) {
        t = torch::stable::contiguous(t);
        rows_of(t, one_row_if_contiguous, r);
    }
    return r;
}

const void *cptr(const std::optional<Tensor> &t) { return t.has_value() ? t->data_ptr() : nullptr; }

// ---------------------------------------------------------------------------------- runtime

int64_t cpu_features() { return (int64_t)npq_cpu_features(); }
int64_t isa() { return npq_isa(); }
int64_t best_isa() { return npq_best_isa(); }
int64_t set_isa_limit(int64_t level) { return npq_set_isa_limit(level < 0 ? -1 : (int)level); }
// One line per kernel: "name picked row,row,..." (its variants best first), under the current cap.
std::string kernels() {
    std::string text;
    for (int i = 0; i < npq_kernel_count(); i++) {
        const npq_kernel *k = npq_kernel_at(i);
        text += std::string(k->kernel) + " " + npq_pick(k)->name + " ";
        for (int r = 0; r < k->count; r++) text += std::string(r ? "," : "") + k->rows[r].name;
        text += "\n";
    }
    return text;
}

int64_t set_bf16_nan(int64_t bits) {
    npq_set_bf16_nan((uint16_t)bits);
    return bits;
}

Tensor pool_selftest(int64_t n, int64_t chunk, int64_t nthreads) {
    const char *op = "pool_selftest";
    if (n < 0) fail(op, "n must be >= 0");
    Tensor out = new_empty({n}, ST::Long);
    for (int64_t i = 0; i < n; i++) ((int64_t *)out.data_ptr())[i] = -1;  // the dynamic test adds i*i + 1
    if (chunk > 0)
        npq_pool_selftest_dynamic((int64_t *)out.data_ptr(), n, chunk, (int)nthreads);
    else
        npq_pool_selftest((int64_t *)out.data_ptr(), n, (int)nthreads);
    return out;
}

// ------------------------------------------------------------------------ affine dequantization

// out = cast((x + offset[p]) * scale[p]) over x seen as (rows, cols) = (leading dims, last dim; x8
// for packed int4). The scale's shape is the granularity: (row_blocks, col_blocks) splits the view
// into equal blocks, element (r, c) taking block (r / (rows / row_blocks), c / (cols / col_blocks));
// a 1-D scale of n is (1, n). No int arguments: each costs ~1 us in a boxed call.
Tensor dequant_affine(Tensor x, Tensor scale, std::optional<Tensor> offset, ST out_dtype, bool half_steps) {
    const char *op = "dequant_affine";
    check_input(x, op, "x", {ST::Char, ST::Short, ST::Int});
    check_float_out(op, out_dtype);
    if (half_steps && (out_dtype != ST::Half || scale.scalar_type() != ST::Half))
        fail(op, "half_steps (float16 arithmetic) needs float16 scale, offset and out_dtype, but got ",
             dtype_name(scale.scalar_type()), " scale and out_dtype ", dtype_name(out_dtype));
    const bool packed = x.scalar_type() == ST::Int;
    if (packed && x.dim() == 0) fail(op, "an int32 (packed int4) x must have at least 1 dimension");
    check_input(scale, op, "scale", {ST::Float, ST::BFloat16, ST::Half});
    if (offset) {
        if (offset->defined() && offset->scalar_type() != scale.scalar_type())
            fail(op, "offset must have scale's dtype (", dtype_name(scale.scalar_type()), "), but got ",
                 dtype_name(offset->scalar_type()));
        check_input(*offset, op, "offset", {scale.scalar_type()});
        if (offset->numel() != scale.numel())  // read in scale's shape
            fail(op, "offset must have scale's ", scale.numel(), " elements, but has shape ", shape_str(*offset));
    }
    std::vector<int64_t> shape = sizes_of(x);
    if (packed) shape.back() *= 8;
    Tensor out = new_empty(shape, out_dtype);
    if (out.numel() == 0) return out;
    if (scale.dim() > 2) fail(op, "scale must have at most 2 dimensions, but has shape ", shape_str(scale));
    const int64_t cols = shape.empty() ? 1 : shape.back(), rows = out.numel() / cols;
    const int64_t row_blocks = scale.dim() == 2 ? scale.size(0) : 1;
    const int64_t col_blocks = scale.dim() == 2 ? scale.size(1) : scale.numel();
    if (row_blocks <= 0 || col_blocks <= 0 || rows % row_blocks != 0 || cols % col_blocks != 0)
        fail(op, "scale of shape ", shape_str(scale), " does not split x, seen as ", rows, " x ", cols,
             ", into equal blocks");
    Tensor s = as_f32(scale);
    std::optional<Tensor> o;
    if (offset) o = as_f32(*offset);
    const int64_t n_param = row_blocks * col_blocks;
    Rows r = rows_or_copy(x, n_param == 1);  // one parameter: the rows may merge into one
    npq_dequant_args a = {x.data_ptr(), packed ? NPQ_I4 : x.scalar_type() == ST::Short ? NPQ_I16 : NPQ_I8,
                          extent_of(x), r.nd, r.size, r.stride, r.inner, r.inner_stride,
                          (const float *)s.data_ptr(), (const float *)cptr(o), n_param, rows / row_blocks,
                          row_blocks > 1 ? col_blocks : 0, cols / col_blocks, col_blocks > 1 ? 1 : 0,
                          out.data_ptr(), npq_dtype_of(out_dtype), half_steps ? 1 : 0};
    check_status(npq_dequant(&a, threads()), op);
    return out;
}

// ----------------------------------------------------------------------------- dynamic quant

std::tuple<Tensor, Tensor, Tensor> dynamic_quant(Tensor x, std::optional<Tensor> smooth_scales,
                                                 std::optional<Tensor> group_index, bool asymmetric, bool int4) {
    const char *op = "dynamic_quant";
    check_input(x, op, "x", {ST::Float, ST::Half, ST::BFloat16});
    if (x.dim() < 1) fail(op, "x must have at least 1 dimension");
    const int64_t cols = x.size(x.dim() - 1);
    if (int4 && cols % 8 != 0) fail(op, "int4 output needs the last dim of x to be a multiple of 8, but it is ", cols);
    std::vector<int64_t> lead = sizes_of(x);
    lead.pop_back();
    std::vector<int64_t> yshape = lead;
    yshape.push_back(int4 ? cols / 8 : cols);
    Tensor y = new_empty(yshape, int4 ? ST::Int : ST::Char);
    Tensor scale = new_empty(lead, ST::Float);
    Tensor offset = new_empty(asymmetric ? lead : std::vector<int64_t>{0}, ST::Float);
    int64_t groups = 1;
    std::optional<Tensor> gi, sm;
    if (group_index) {
        check_input(*group_index, op, "group_index", {ST::Int, ST::Long});
        if (!smooth_scales) fail(op, "group_index needs smooth_scales");
        groups = group_index->numel();
        gi = torch::stable::contiguous(torch::stable::to(*group_index, ST::Int));
    }
    if (smooth_scales) {
        check_input(*smooth_scales, op, "smooth_scales", {ST::Float, ST::Half, ST::BFloat16});
        if (smooth_scales->numel() != groups * cols)
            fail(op, "smooth_scales must hold ", groups, " x ", cols, " values, but has shape ",
                 shape_str(*smooth_scales));
        Tensor s = smooth_scales->scalar_type() == x.scalar_type() ? *smooth_scales
                                                                     : torch::stable::to(*smooth_scales, x.scalar_type());
        sm = torch::stable::contiguous(s);
    }
    if (y.numel() == 0 && scale.numel() == 0) return {y, scale, offset};
    Rows r = rows_or_copy(x, false);
    int rc = npq_dynamic_quant(x.data_ptr(), npq_dtype_of(x.scalar_type()), extent_of(x), r.nd, r.size, r.stride,
                               r.inner, r.inner_stride, cptr(sm), (const int32_t *)cptr(gi), gi ? groups : 0,
                               y.data_ptr(), (float *)scale.data_ptr(),
                               asymmetric ? (float *)offset.data_ptr() : nullptr, int4 ? 1 : 0, threads());
    check_status(rc, op);
    return {y, scale, offset};
}

// ------------------------------------------------------------------------------------- int4

Tensor unpack_int4(Tensor packed) {
    const char *op = "unpack_int4";
    check_input(packed, op, "packed", {ST::Int});
    if (packed.dim() < 1) fail(op, "packed must have at least 1 dimension");
    std::vector<int64_t> shape = sizes_of(packed);
    shape.back() *= 8;
    Tensor out = new_empty(shape, ST::Char);
    if (out.numel() == 0) return out;
    Rows r = rows_or_copy(packed, true);
    int rc = npq_unpack_int4((const int32_t *)packed.data_ptr(), extent_of(packed), r.nd, r.size, r.stride, r.inner,
                             r.inner_stride, (int8_t *)out.data_ptr(), threads());
    check_status(rc, op);
    return out;
}

Tensor pack_int4(Tensor values, std::string name) {
    const char *op = "pack_int4";
    check_input(values, op, name.c_str(), {ST::Char, ST::Byte, ST::Short, ST::Int, ST::Long});
    if (values.dim() < 1) fail(op, name, " must have at least 1 dimension");
    std::vector<int64_t> shape = sizes_of(values);
    if (shape.back() % 8 != 0) fail(op, "the last dim of ", name, " must be a multiple of 8, but it is ", shape.back());
    shape.back() /= 8;
    Tensor out = new_empty(shape, ST::Int);
    if (out.numel() == 0) return out;
    Rows r = rows_or_copy(values, true);
    int64_t lo = 0, hi = 0;
    int rc = npq_pack_int4(values.data_ptr(), npq_dtype_of(values.scalar_type()), extent_of(values), r.nd, r.size,
                           r.stride, r.inner, r.inner_stride, (int32_t *)out.data_ptr(), &lo, &hi, threads());
    check_status(rc, op);
    if (lo < -8 || hi > 7) {
        // torch_npu's words (see npuquant.ops.int4), without the op prefix: the same error as the reference's.
        std::ostringstream s;
        s << name << " must hold int4 values in [-8, 7], but found values in [" << lo << ", " << hi << "]";
        throw std::runtime_error(s.str());
    }
    return out;
}


// ---------------------------------------------------------------------------------- int8 GEMM

// At most this many rows go through the natural-layout GEMV (weights read in place, nothing
// packed); larger M packs the weight per call, a small fraction of the GEMM's own work.
constexpr int64_t GEMV_MAX_M = 8;

// A logical int8 (B, rows, cols) operand: data, sizes and element strides (stride 0 broadcasts).
struct Mat {
    const int8_t *p = nullptr;
    int64_t b = 1, r = 0, c = 0, sb = 0, sr = 0, sc = 0;
};

Mat mat_of(const Tensor &t) {  // a checked 3-D int8 tensor
    return {(const int8_t *)t.data_ptr(), t.size(0), t.size(1), t.size(2), t.stride(0), t.stride(1), t.stride(2)};
}

// Epilogue operands, float32 / int32 contiguous (see csrc/gemm_s8.c's header for the order).
struct Epilogue {
    std::optional<Tensor> scale, pertoken, row_offset, bias_i32, add;
    int64_t bias_i32_bstride = 0, add_nstride = 0, add_bstride = 0;
};

const void *ptr_or_null(const std::optional<Tensor> &t) { return t ? t->data_ptr() : nullptr; }

// Runs epilogue(a @ w) into out, a (B, m, k), w (B, k, n) (B of a and w equal; either may broadcast).
// g carries the caller's epilogue fields and out_kind; the operands are filled in here: up to
// GEMV_MAX_M rows a row-major weight is read in place, larger inputs pack it for this call.
// nthreads > 0 caps the threads (the grouped GEMM runs one expert per thread); 0: torch's setting.
void run_gemm(const char *op, const Mat &a, const Mat &w, npq_gemm_args &g, void *out, int nthreads = 0) {
    const int nt = nthreads > 0 ? nthreads : threads();
    const int64_t batch = a.b, m = a.r, k = a.c, n = w.c;
    const bool a_shared = batch == 1 || a.sb == 0, w_shared = batch == 1 || w.sb == 0;
    std::vector<int64_t> a_boff(a_shared ? 1 : (size_t)batch), a_bidx((size_t)batch), w_bidx((size_t)batch);
    for (int64_t b = 0; b < batch; b++) {
        if (!a_shared) a_boff[(size_t)b] = b * a.sb;
        a_bidx[(size_t)b] = a_shared ? 0 : b;
        w_bidx[(size_t)b] = w_shared ? 0 : b;
    }
    g.batch = batch, g.m = m, g.n = n, g.k = k;
    g.a = a.p, g.a_sm = a.sr, g.a_sk = a.sc;
    g.a_nbatch = (int64_t)a_boff.size(), g.a_boff = a_boff.data(), g.a_bidx = a_bidx.data();
    g.w_bidx = w_bidx.data();
    std::optional<Tensor> packed, colsum;
    static const int8_t no_weights = 0;  // k == 0: nothing is read, but the kernel wants a pointer
    if (k == 0 || (m <= GEMV_MAX_M && (w.sr == 1 || k == 1))) {
        g.wn = k ? w.p : &no_weights, g.wn_sn = w.sc, g.wn_sk = w.sr, g.wn_bstride = w_shared ? 0 : w.sb;
        g.w_nbatch = w_shared ? 1 : batch;
    } else {
        const int64_t wb = w_shared ? 1 : batch, per = npq_gemm_packed_bytes(k, n), panels = npq_gemm_panels(n);
        packed = new_empty({wb, per}, ST::Byte);
        colsum = new_empty({wb, panels * 16}, ST::Int);
        for (int64_t b = 0; b < wb; b++) {
            int rc = npq_gemm_pack_b(k ? w.p + b * w.sb : nullptr, k, n, w.sr, w.sc,
                                     (uint8_t *)packed->data_ptr() + b * per,
                                     (int32_t *)colsum->data_ptr() + b * panels * 16, nt);
            check_status(rc, op);
        }
        g.w = (const uint8_t *)packed->data_ptr(), g.w_nbatch = wb, g.colsum = (const int32_t *)colsum->data_ptr();
    }
    g.out = out;
    check_status(npq_gemm_s8(&g, nt), op);
}

// out (B, m, n) = epilogue(a @ w) with the epilogue's operands given as tensors.
Tensor gemm(const char *op, const Mat &a, const Mat &w, ST out_dtype, const Epilogue &e) {
    Tensor out = new_empty({a.b, a.r, w.c}, out_dtype);
    if (out.numel() == 0) return out;
    npq_gemm_args g;
    memset(&g, 0, sizeof g);
    g.out_kind = npq_dtype_of(out_dtype);
    g.bias_i32 = (const int32_t *)ptr_or_null(e.bias_i32), g.bias_i32_bstride = e.bias_i32_bstride;
    g.scale = (const float *)ptr_or_null(e.scale), g.scale_nstride = e.scale && e.scale->numel() > 1 ? 1 : 0;
    g.pertoken = (const float *)ptr_or_null(e.pertoken);
    g.row_offset = (const float *)ptr_or_null(e.row_offset);
    g.add = (const float *)ptr_or_null(e.add), g.add_nstride = e.add_nstride, g.add_bstride = e.add_bstride;
    run_gemm(op, a, w, g, out.data_ptr());
    return out;
}

// A float32 contiguous per-column vector of length 1 or n (scale, offset), checked.
Tensor column_param(const Tensor &t, const char *op, const char *name, int64_t n) {
    check_input(t, op, name, {ST::Float, ST::BFloat16, ST::Half});
    if (t.dim() != 1 || (t.size(0) != 1 && t.size(0) != n))
        fail(op, name, " must be 1-D of length 1 or n (", n, "), but has shape ", shape_str(t));
    return as_f32(t);
}

Tensor row_param(const Tensor &t, const char *op, const char *name, int64_t m) {
    check_input(t, op, name, {ST::Float});
    if (t.numel() != m) fail(op, name, " must hold one value per row (", m, "), but has shape ", shape_str(t));
    return torch::stable::contiguous(t);
}

void check_out_dtype(ST out_dtype, const char *op) {
    if (out_dtype != ST::Char && out_dtype != ST::Half && out_dtype != ST::BFloat16 && out_dtype != ST::Int &&
        out_dtype != ST::Float)
        fail(op, "out_dtype must be int8, float16, bfloat16, int32 or float32, but got ", dtype_name(out_dtype));
}

// npu_quant_matmul on normalised arguments (ops.quant_matmul._normalise): x1 (B, m, k), x2 (B, k, n)
// int8; scale float32 (1 | n), the effective one; offset (1 | n) for int8 output; pertoken (m);
// bias (1 | B, n): int32 joins the accumulator, a float one is added after the scales.
Tensor quant_matmul(Tensor x1, Tensor x2, Tensor scale, std::optional<Tensor> offset,
                    std::optional<Tensor> pertoken_scale, std::optional<Tensor> bias, ST out_dtype) {
    const char *op = "quant_matmul";
    check_input(x1, op, "x1", {ST::Char});
    check_input(x2, op, "x2", {ST::Char});
    check_out_dtype(out_dtype, op);
    if (x1.dim() != 3 || x2.dim() != 3) fail(op, "x1 and x2 must be 3-D (B, m, k) and (B, k, n)");
    if (x1.size(0) != x2.size(0) || x1.size(2) != x2.size(1))
        fail(op, "x1 ", shape_str(x1), " and x2 ", shape_str(x2), " do not multiply");
    const int64_t batch = x1.size(0), m = x1.size(1), n = x2.size(2);
    Epilogue e;
    if (out_dtype != ST::Int) e.scale = column_param(scale, op, "scale", n);
    if (pertoken_scale && out_dtype != ST::Int) e.pertoken = row_param(*pertoken_scale, op, "pertoken_scale", m);
    if (bias) {
        check_input(*bias, op, "bias", {ST::Int, ST::Float, ST::Half, ST::BFloat16});
        if (bias->dim() != 2 || (bias->size(0) != 1 && bias->size(0) != batch) || bias->size(1) != n)
            fail(op, "bias must be (1, n) or (B, n) = (", batch, ", ", n, "), but has shape ", shape_str(*bias));
        const int64_t bstride = bias->size(0) == 1 ? 0 : n;
        if (bias->scalar_type() == ST::Int) {
            e.bias_i32 = torch::stable::contiguous(*bias), e.bias_i32_bstride = bstride;
        } else {
            if (out_dtype == ST::Int) fail(op, "int32 output takes an int32 bias only");
            e.add = as_f32(*bias), e.add_nstride = 1, e.add_bstride = bstride;
        }
    }
    if (offset && out_dtype != ST::Int) {
        if (e.add) fail(op, "offset and a float bias cannot be combined");
        e.add = column_param(*offset, op, "offset", n), e.add_nstride = e.add->numel() > 1 ? 1 : 0;
    }
    return gemm(op, mat_of(x1), mat_of(x2), out_dtype, e);
}

// The A8W8 matmul for asymmetric activations (ops.quant_matmul.asymmetric): x (m, k) int8,
// x_scale / x_offset (m,), weight (k, n) int8, w_scale (1 | n), bias (n,) float.
Tensor quant_matmul_asymmetric(Tensor x, Tensor x_scale, Tensor x_offset, Tensor weight, Tensor w_scale,
                               std::optional<Tensor> bias, ST out_dtype) {
    const char *op = "quant_matmul_asymmetric";
    check_input(x, op, "x_q", {ST::Char});
    check_input(weight, op, "weight", {ST::Char});
    check_float_out(op, out_dtype);
    if (x.dim() != 2 || weight.dim() != 2 || x.size(1) != weight.size(0))
        fail(op, "x_q ", shape_str(x), " and weight ", shape_str(weight), " must be (m, k) and (k, n)");
    const int64_t m = x.size(0), n = weight.size(1);
    Epilogue e;
    e.scale = column_param(w_scale, op, "w_scale", n);
    e.pertoken = row_param(x_scale, op, "x_scale", m);
    e.row_offset = row_param(x_offset, op, "x_offset", m);
    if (bias) {
        check_input(*bias, op, "bias", {ST::Float, ST::Half, ST::BFloat16});
        if (bias->numel() != n) fail(op, "bias must be 1-D of length n (", n, "), but has shape ", shape_str(*bias));
        e.add = as_f32(*bias), e.add_nstride = 1;
    }
    Mat a{(const int8_t *)x.data_ptr(), 1, m, x.size(1), 0, x.stride(0), x.stride(1)};
    Mat w{(const int8_t *)weight.data_ptr(), 1, weight.size(0), n, 0, weight.stride(0), weight.stride(1)};
    Tensor out = gemm(op, a, w, out_dtype, e);
    return torch::stable::view(out, {m, n});
}

// ------------------------------------------------------------- grouped int8 matmul (MoE experts)

// Flat float32 / int32 per-column parameters of every expert, back to back (the caller concatenates
// them): checked, made contiguous and of the right dtype.
Tensor flat_param(const Tensor &t, const char *op, const char *name, ST dtype, int64_t total) {
    check_input(t, op, name, {dtype});
    if (t.numel() != total)
        fail(op, name, " must hold ", total, " values (every expert's columns back to back), but has shape ",
             shape_str(t));
    return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

// One expert's GEMM of grouped_matmul_s8, and the experts run one per thread.
struct GroupedItem {
    Mat a, w;
    npq_gemm_args g;
    void *out;
};

struct GroupedJob {
    const char *op = nullptr;
    std::vector<GroupedItem> items;
    std::mutex lock;
    std::string error;  // the first failure (exceptions must not cross the C scheduler)
};

// Packing an expert's weight costs about as much as this many rows of its GEMM (for scheduling).
constexpr int64_t GROUPED_PACK_ROWS = 8;

void grouped_expert_range(void *ctx, int64_t begin, int64_t end) {
    GroupedJob *job = (GroupedJob *)ctx;
    for (int64_t i = begin; i < end; i++) {
        GroupedItem &it = job->items[(size_t)i];
        try {
            run_gemm(job->op, it.a, it.w, it.g, it.out, 1);
        } catch (const std::exception &ex) {
            std::lock_guard<std::mutex> guard(job->lock);
            if (job->error.empty()) job->error = ex.what();
        }
    }
}

// npu_grouped_matmul's A8W8 form on normalised arguments (npuquant.ops.grouped_matmul.native):
// expert e multiplies its rows of x by its weight, with its slice of the epilogue (run_gemm: the
// same GEMV / packed GEMM and epilogue as quant_matmul), one expert after the other, each on all
// threads. Arguments:
//   x: one int8 (M, K) whose rows group_sizes splits (int64 (E,) counts, sum <= M; rows past the
//      sum are zeros in the single output), or, without group_sizes, E int8 tensors (..., K_e).
//   weight: E int8 (K_e, N_e), or one (E, K, N); any non-negative strides.
//   scale (not read for int32 output) / offset (int8 output) float32, bias int32: every expert's
//   N_e values back to back. pertoken: float32 (M,), single x only.
//   single_out: one (rows, N) output (every N_e equal), else one output per expert
//   ((m_e, N_e), or x_e's leading dims with N_e).
std::vector<Tensor> grouped_matmul_s8(std::vector<Tensor> x, std::vector<Tensor> weight,
                                      std::optional<Tensor> group_sizes, std::optional<Tensor> scale,
                                      std::optional<Tensor> offset, std::optional<Tensor> pertoken,
                                      std::optional<Tensor> bias, ST out_dtype, bool single_out) {
    const char *op = "grouped_matmul_s8";
    check_out_dtype(out_dtype, op);
    if (weight.empty() || x.empty()) fail(op, "x and weight must hold at least one tensor each");
    for (size_t i = 0; i < weight.size(); i++) check_input(weight[i], op, "weight", {ST::Char});
    for (size_t i = 0; i < x.size(); i++) check_input(x[i], op, "x", {ST::Char});
    const bool one_weight = weight.size() == 1 && weight[0].dim() == 3;
    const int64_t experts = one_weight ? weight[0].size(0) : (int64_t)weight.size();
    std::vector<Mat> w((size_t)experts);
    int64_t total_n = 0;
    for (int64_t e = 0; e < experts; e++) {
        if (one_weight) {
            const Tensor &t = weight[0];
            w[(size_t)e] = {(const int8_t *)t.data_ptr() + e * t.stride(0), 1, t.size(1), t.size(2), 0, t.stride(1),
                            t.stride(2)};
        } else {
            const Tensor &t = weight[(size_t)e];
            if (t.dim() != 2) fail(op, "weight[", e, "] must be 2-D (k, n), but has shape ", shape_str(t));
            w[(size_t)e] = {(const int8_t *)t.data_ptr(), 1, t.size(0), t.size(1), 0, t.stride(0), t.stride(1)};
        }
        total_n += w[(size_t)e].c;
    }
    // Each expert's activations as a (rows, k) operand and its first output row.
    std::vector<Mat> a((size_t)experts);
    std::vector<int64_t> row0((size_t)experts);
    std::vector<Tensor> keep;  // contiguous copies of x tensors whose leading dims do not merge
    int64_t rows = 0;
    if (group_sizes) {
        if (x.size() != 1 || x[0].dim() != 2) fail(op, "with group_sizes, x must be one 2-D tensor");
        check_input(*group_sizes, op, "group_sizes", {ST::Long});
        if (group_sizes->numel() != experts)
            fail(op, "group_sizes must hold one count per expert (", experts, "), but has shape ",
                 shape_str(*group_sizes));
        Tensor gs = torch::stable::contiguous(*group_sizes);
        const int64_t *count = (const int64_t *)gs.data_ptr();
        const Tensor &t = x[0];
        for (int64_t e = 0; e < experts; e++) {
            if (count[e] < 0 || count[e] > t.size(0) - rows)
                fail(op, "group_sizes must be non-negative counts summing to at most ", t.size(0), " (the rows of x)");
            a[(size_t)e] = {(const int8_t *)t.data_ptr() + rows * t.stride(0), 1, count[e], t.size(1), 0, t.stride(0),
                            t.stride(1)};
            row0[(size_t)e] = rows;
            rows += count[e];
        }
        rows = t.size(0);
    } else {
        if ((int64_t)x.size() != experts) fail(op, "without group_sizes, x must hold one tensor per expert");
        for (int64_t e = 0; e < experts; e++) {
            Tensor t = x[(size_t)e];
            if (t.dim() < 2) fail(op, "x[", e, "] must have at least 2 dimensions");
            const int64_t k = t.size(t.dim() - 1), m = k ? t.numel() / k : 0;
            if (t.dim() > 2 && !t.is_contiguous()) {
                t = torch::stable::contiguous(t);
                keep.push_back(t);
            }
            const int64_t sm = t.dim() > 2 ? k : t.stride(0), sk = t.dim() > 2 ? 1 : t.stride(1);
            a[(size_t)e] = {(const int8_t *)t.data_ptr(), 1, m, k, 0, sm, sk};
            row0[(size_t)e] = rows;
            rows += m;
        }
    }
    for (int64_t e = 0; e < experts; e++)
        if (a[(size_t)e].c != w[(size_t)e].r)
            fail(op, "expert ", e, ": x has k = ", a[(size_t)e].c, " but its weight has k = ", w[(size_t)e].r);
    std::optional<Tensor> s, o, pt, b;
    if (out_dtype != ST::Int) {
        if (!scale) fail(op, "scale is required unless the output is int32");
        s = flat_param(*scale, op, "scale", ST::Float, total_n);
        if (offset) o = flat_param(*offset, op, "offset", ST::Float, total_n);
        if (pertoken) {
            if (!group_sizes) fail(op, "pertoken needs a single x split by group_sizes");
            pt = row_param(*pertoken, op, "pertoken", rows);
        }
    }
    if (bias) b = flat_param(*bias, op, "bias", ST::Int, total_n);
    if (o && out_dtype != ST::Char) fail(op, "offset is for int8 output only");
    const int64_t es = out_dtype == ST::Char ? 1 : (out_dtype == ST::Int || out_dtype == ST::Float) ? 4 : 2;
    std::vector<Tensor> outs;
    std::vector<char *> dst((size_t)experts);
    if (single_out) {
        const int64_t n = w[0].c;
        for (int64_t e = 1; e < experts; e++)
            if (w[(size_t)e].c != n) fail(op, "a single output needs every expert's n to be equal");
        Tensor y = new_empty({rows, n}, out_dtype);
        char *base = (char *)y.data_ptr();
        int64_t covered = 0;
        for (int64_t e = 0; e < experts; e++) {
            dst[(size_t)e] = base + row0[(size_t)e] * n * es;
            covered += a[(size_t)e].r;
        }
        if (rows > covered && n > 0) memset(base + covered * n * es, 0, (size_t)((rows - covered) * n * es));
        outs.push_back(y);
    } else {
        for (int64_t e = 0; e < experts; e++) {
            std::vector<int64_t> shape;
            if (group_sizes) {
                shape = {a[(size_t)e].r, w[(size_t)e].c};
            } else {
                shape = sizes_of(x[(size_t)e]);
                shape.back() = w[(size_t)e].c;
            }
            outs.push_back(new_empty(shape, out_dtype));
            dst[(size_t)e] = (char *)outs.back().data_ptr();
        }
    }
    GroupedJob job;
    job.op = op;
    int64_t col0 = 0, total = 0, largest = 0;
    for (int64_t e = 0; e < experts; e++) {
        const Mat &ae = a[(size_t)e], &we = w[(size_t)e];
        const int64_t n_e = we.c;
        if (ae.r > 0 && n_e > 0) {
            npq_gemm_args g;
            memset(&g, 0, sizeof g);
            g.out_kind = npq_dtype_of(out_dtype);
            if (s) g.scale = (const float *)s->data_ptr() + col0, g.scale_nstride = 1;
            if (pt) g.pertoken = (const float *)pt->data_ptr() + row0[(size_t)e];
            if (b) g.bias_i32 = (const int32_t *)b->data_ptr() + col0;
            if (o) g.add = (const float *)o->data_ptr() + col0, g.add_nstride = 1;
            job.items.push_back({ae, we, g, dst[(size_t)e]});
            const int64_t work = (ae.r + GROUPED_PACK_ROWS) * ae.c * n_e;  // the GEMM plus packing its weight
            total += work, largest = std::max(largest, work);
        }
        col0 += n_e;
    }
    const int nt = threads();
    const int64_t items = (int64_t)job.items.size();
    if (nt > 1 && items >= nt && largest * nt <= total + total / 4) {
        // balanced enough: one expert per thread at a time (one parallel region for the whole op)
        npq_parallel_for_dynamic(items, 1, 1, nt, grouped_expert_range, &job);
        if (!job.error.empty()) throw std::runtime_error(job.error);
    } else {
        for (GroupedItem &it : job.items) run_gemm(op, it.a, it.w, it.g, it.out);  // each on all threads
    }
    return outs;
}

// ------------------------------------------------------------------- fused quantized linear layers

std::vector<int64_t> linear_out_shape(const Tensor &x, int64_t n) {
    std::vector<int64_t> s = sizes_of(x);
    s.back() = n;
    return s;
}

// Per-thread scratch memory for what lives only inside one call (a layer's quantized activations,
// w4a16's dequantized tiles): no tensor is allocated for it. Never freed: it lives as long as its
// thread and must not be torn down after libtorch at exit.
enum { SCRATCH_ACTIVATIONS = 0, SCRATCH_TILE = 1 };

void *thread_scratch(int slot, size_t bytes) {
    thread_local void *buf[2] = {nullptr, nullptr};
    thread_local size_t cap[2] = {0, 0};
    if (bytes > cap[slot]) {
        void *p = nullptr;
        if (posix_memalign(&p, 64, bytes) != 0) fail("scratch", "out of memory (", bytes, " bytes)");
        free(buf[slot]);
        buf[slot] = p, cap[slot] = bytes;
    }
    return buf[slot];
}

// A layer's activations x (..., k) quantized per row into scratch: int8 (m, k), scale and offset (m,).
struct QuantRows {
    int8_t *q = nullptr;
    float *scale = nullptr, *offset = nullptr;
    int64_t m = 0, k = 0;
};

QuantRows quantize_rows(const char *op, Tensor &x, const std::optional<Tensor> &smooth, bool asymmetric) {
    check_input(x, op, "x", {ST::Float, ST::Half, ST::BFloat16});
    if (x.dim() < 1) fail(op, "x must have at least 1 dimension");
    QuantRows r;
    r.k = x.size(x.dim() - 1);
    r.m = 1;
    for (int64_t d = 0; d + 1 < x.dim(); d++) r.m *= x.size(d);
    const size_t es = x.scalar_type() == ST::Float ? 4 : 2;
    const size_t q_bytes = ((size_t)(r.m * r.k) + 63) & ~(size_t)63, s_bytes = ((size_t)r.m * 4 + 63) & ~(size_t)63;
    const size_t smooth_bytes = smooth ? (size_t)r.k * es : 0;
    char *base = (char *)thread_scratch(SCRATCH_ACTIVATIONS, q_bytes + 2 * s_bytes + smooth_bytes + 64);
    r.q = (int8_t *)base, r.scale = (float *)(base + q_bytes), r.offset = (float *)(base + q_bytes + s_bytes);
    const void *sm = nullptr;
    if (smooth) {  // the quantization op takes smooth scales in x's dtype: round them as .to(x.dtype) does
        check_input(*smooth, op, "smooth_scales", {ST::Float});
        if (smooth->numel() != r.k) fail(op, "smooth_scales must hold ", r.k, " values, but has shape ", shape_str(*smooth));
        Tensor s = torch::stable::contiguous(*smooth);
        void *dst = base + q_bytes + 2 * s_bytes;
        check_status(npq_cast_f32((const float *)s.data_ptr(), r.k, npq_dtype_of(x.scalar_type()), dst), op);
        sm = dst;
    }
    if (r.m == 0) return r;
    Rows rows = rows_or_copy(x, false);
    int rc = npq_dynamic_quant(x.data_ptr(), npq_dtype_of(x.scalar_type()), extent_of(x), rows.nd, rows.size,
                               rows.stride, rows.inner, rows.inner_stride, sm, nullptr, 0, r.q, r.scale,
                               asymmetric ? r.offset : nullptr, 0, threads());
    check_status(rc, op);
    return r;
}

void check_linear_weight(const Tensor &weight, int64_t k, const char *op) {
    check_input(weight, op, "weight", {ST::Char});
    if (weight.dim() != 2 || weight.size(1) != k)
        fail(op, "weight must be (out_features, ", k, "), but has shape ", shape_str(weight));
}

Mat weight_t(const Tensor &weight) {  // the (k, n) view of a (n, k) weight, as a GEMM operand
    return {(const int8_t *)weight.data_ptr(), 1, weight.size(1), weight.size(0), 0, weight.stride(1),
            weight.stride(0)};
}

// Borrowed float32 vectors for the epilogue: the caller's tensors or scratch, not owned.
struct RawEpilogue {
    const float *scale = nullptr, *pertoken = nullptr, *row_offset = nullptr, *add = nullptr;
    int64_t scale_nstride = 0, add_nstride = 0;
};

// out (..., n) = epilogue(q @ weight.T) for a layer, q the quantized rows in scratch.
Tensor layer_gemm(const char *op, const Tensor &x, const QuantRows &r, const Tensor &weight, const RawEpilogue &e,
                  ST out_dtype) {
    Tensor out = new_empty(linear_out_shape(x, weight.size(0)), out_dtype);
    if (out.numel() == 0) return out;
    npq_gemm_args g;
    memset(&g, 0, sizeof g);
    g.out_kind = npq_dtype_of(out_dtype);
    g.scale = e.scale, g.scale_nstride = e.scale_nstride;
    g.pertoken = e.pertoken, g.row_offset = e.row_offset;
    g.add = e.add, g.add_nstride = e.add_nstride;
    run_gemm(op, Mat{r.q, 1, r.m, r.k, 0, r.k, 1}, weight_t(weight), g, out.data_ptr());
    return out;
}

// The epilogue's per-column parameters of a layer: weight_scale (1 | n) and an optional bias (n,).
struct LayerParams {
    Tensor scale;
    std::optional<Tensor> bias;
};

LayerParams layer_params(const char *op, const Tensor &weight_scale, const std::optional<Tensor> &bias, int64_t n) {
    LayerParams p{column_param(weight_scale, op, "weight_scale", n), std::nullopt};
    if (bias) {
        check_input(*bias, op, "bias", {ST::Float, ST::Half, ST::BFloat16});
        if (bias->numel() != n) fail(op, "bias must be 1-D of length ", n, ", but has shape ", shape_str(*bias));
        p.bias = as_f32(*bias);
    }
    return p;
}

// x quantized per row (asymmetric: with a zero point), then one exact GEMV/GEMM and its epilogue:
//   w8a8:     out = (acc - offset * colsum(W)) * w_scale * x_scale (+ bias)
//   w8a8-sym: out = acc * w_scale * x_scale (+ bias)
// in float32, one cast to x's dtype.
Tensor linear_int8(const char *op, bool asymmetric, Tensor &x, const Tensor &weight, const Tensor &weight_scale,
                   const std::optional<Tensor> &smooth_scales, const std::optional<Tensor> &bias) {
    QuantRows r = quantize_rows(op, x, smooth_scales, asymmetric);
    check_linear_weight(weight, r.k, op);
    LayerParams p = layer_params(op, weight_scale, bias, weight.size(0));
    RawEpilogue e;
    e.scale = (const float *)p.scale.data_ptr(), e.scale_nstride = p.scale.numel() > 1 ? 1 : 0;
    e.pertoken = r.scale;
    if (asymmetric) e.row_offset = r.offset;
    if (p.bias) e.add = (const float *)p.bias->data_ptr(), e.add_nstride = 1;
    return layer_gemm(op, x, r, weight, e, x.scalar_type());
}

Tensor linear_w8a8(Tensor x, Tensor weight, Tensor weight_scale, std::optional<Tensor> smooth_scales,
                   std::optional<Tensor> bias) {
    return linear_int8("linear_w8a8", true, x, weight, weight_scale, smooth_scales, bias);
}

Tensor linear_w8a8_sym(Tensor x, Tensor weight, Tensor weight_scale, std::optional<Tensor> smooth_scales,
                       std::optional<Tensor> bias) {
    return linear_int8("linear_w8a8_sym", false, x, weight, weight_scale, smooth_scales, bias);
}

// torch.ops.aten.linear.out(x, weight, bias, out=out): x @ weight.T (+ bias), as F.linear computes it.
void call_linear_out(const Tensor &x, const Tensor &weight, const std::optional<Tensor> &bias, Tensor &out) {
    std::array<StableIValue, 4> stack{torch::stable::detail::from(x), torch::stable::detail::from(weight),
                                      torch::stable::detail::from(bias), torch::stable::detail::from(out)};
    int err = torch_call_dispatcher("aten::linear", "out", stack.data(), TORCH_ABI_VERSION);
    if (err) fail("linear_w4a16", "aten::linear.out failed");
    (void)torch::stable::detail::to<Tensor>(stack[0]);
}

// x (..., in_features) float; weight (n, Kp/8) int32 (8 int4 per word along K, Kp = groups * G
// >= in_features); weight_scale / weight_offset (n, groups) float32: w = (v + offset) * scale.
// Dequantizes tile_rows output rows at a time (the layer picks it) and multiplies them in x's dtype
// with their slice of the bias, as F.linear does.
Tensor linear_w4a16(Tensor x, Tensor weight, Tensor weight_scale, Tensor weight_offset, std::optional<Tensor> bias,
                    int64_t in_features, int64_t tile_rows) {
    const char *op = "linear_w4a16";
    check_input(x, op, "x", {ST::Float, ST::Half, ST::BFloat16});
    check_input(weight, op, "weight", {ST::Int});
    check_input(weight_scale, op, "weight_scale", {ST::Float});
    check_input(weight_offset, op, "weight_offset", {ST::Float});
    if (x.dim() < 1 || x.size(x.dim() - 1) != in_features)
        fail(op, "x must be (..., ", in_features, "), but has shape ", shape_str(x));
    if (weight.dim() != 2) fail(op, "weight must be 2-D (n, K/8), but has shape ", shape_str(weight));
    const int64_t n = weight.size(0), words = weight.size(1), kp = words * 8;
    if (kp < in_features) fail(op, "weight holds ", kp, " columns, fewer than in_features (", in_features, ")");
    if (weight_scale.dim() != 2 || weight_scale.size(0) != n || weight_scale.size(1) <= 0 ||
        words % weight_scale.size(1) != 0 || sizes_of(weight_offset) != sizes_of(weight_scale))
        fail(op, "weight_scale and weight_offset must be (n, groups) with groups dividing K/8 = ", words);
    const ST dt = x.scalar_type();
    const int64_t k = in_features, m = k ? x.numel() / k : 0;
    if (bias) {
        check_input(*bias, op, "bias", {dt});
        if (bias->dim() != 1 || bias->size(0) != n) fail(op, "bias must be 1-D of length ", n, ", but has shape ", shape_str(*bias));
    }
    Tensor x2 = torch::stable::contiguous(x);
    x2 = torch::stable::view(x2, {m, k});
    Tensor out = new_empty({m, n}, dt);
    if (tile_rows < 1) fail(op, "tile_rows must be positive, but got ", tile_rows);
    if (out.numel() > 0 && m <= GEMV_MAX_M && (words <= 1 || weight.stride(1) == 1)) {
        // decode: the fused int4 GEMV, no float tile at all
        if (!weight_scale.is_contiguous() || !weight_offset.is_contiguous())
            fail(op, "weight_scale and weight_offset must be contiguous");
        std::optional<Tensor> b32;
        if (bias) b32 = as_f32(*bias);
        int rc = npq_gemv_int4(x2.data_ptr(), npq_dtype_of(dt), m, k, k, (const int32_t *)weight.data_ptr(),
                               extent_of(weight), n, words, weight.stride(0), (const float *)weight_scale.data_ptr(),
                               (const float *)weight_offset.data_ptr(), weight_scale.size(1),
                               b32 ? (const float *)b32->data_ptr() : nullptr, out.data_ptr(), threads());
        check_status(rc, op);
    } else if (out.numel() > 0) {
        tile_rows = std::min(tile_rows, n);
        const size_t es = dt == ST::Float ? 4 : 2;
        // one tile buffer per thread, shared by every w4a16 layer: the matmul then reads the tile back
        // from the cache, layer after layer (a buffer per layer made it read DRAM, ~4x slower)
        void *buf = thread_scratch(SCRATCH_TILE, (size_t)(tile_rows * kp) * es);
        const int64_t groups = weight_scale.size(1);
        const float *s = (const float *)weight_scale.data_ptr(), *o = (const float *)weight_offset.data_ptr();
        const int64_t ss0 = weight_scale.stride(0), os0 = weight_offset.stride(0);
        if (!weight_scale.is_contiguous() || !weight_offset.is_contiguous())
            fail(op, "weight_scale and weight_offset must be contiguous");
        for (int64_t r0 = 0; r0 < n; r0 += tile_rows) {
            const int64_t rows = std::min(tile_rows, n - r0);
            const int64_t first = r0 * weight.stride(0);
            const int64_t lead_size[1] = {rows}, lead_stride[1] = {weight.stride(0)};
            npq_dequant_args a = {(const int32_t *)weight.data_ptr() + first, NPQ_I4, extent_of(weight) - first, 1,
                                  lead_size, lead_stride, words, weight.stride(1), s + r0 * ss0, o + r0 * os0,
                                  rows * groups, 1, groups, 8 * (words / groups), 1, buf, npq_dtype_of(dt)};
            int rc = npq_dequant(&a, threads());
            check_status(rc, op);
            // the tile's first k columns, (rows, k) with row stride kp: the linear's weight
            std::array<int64_t, 2> ts{rows, k}, tst{kp, 1};
            Tensor tile = torch::stable::from_blob(buf, {ts.data(), 2}, {tst.data(), 2},
                                                   torch::stable::Device(torch::headeronly::DeviceType::CPU), dt);
            Tensor cols = torch::stable::narrow(out, 1, r0, rows);
            std::optional<Tensor> tile_bias;
            if (bias) tile_bias = torch::stable::narrow(*bias, 0, r0, rows);
            call_linear_out(x2, tile, tile_bias, cols);
        }
    }
    std::vector<int64_t> shape = linear_out_shape(x, n);
    return torch::stable::view(out, torch::headeronly::IntHeaderOnlyArrayRef(shape.data(), shape.size()));
}

// ------------------------------------------------------------- exact int4 x int8 linear (w4a8)

// The w4a8 kernel (csrc/gemm_s4.c) on checked operands: q int8 (m, k) contiguous rows, q_scale (m,)
// float32; weight int32 (n, words) packed along K, unit column stride; weight_scale / weight_offset
// float32 (groups, n); bias (n,) float.
Tensor run_gemm_s4(const char *op, const int8_t *q, const float *q_scale, int64_t m, int64_t k, const Tensor &weight,
                   const Tensor &weight_scale, const Tensor &weight_offset, const std::optional<Tensor> &bias,
                   ST out_dtype, const std::vector<int64_t> &out_shape) {
    check_input(weight, op, "weight", {ST::Int});
    check_input(weight_scale, op, "weight_scale", {ST::Float});
    check_input(weight_offset, op, "weight_offset", {ST::Float});
    if (weight.dim() != 2) fail(op, "weight must be 2-D (n, K/8), but has shape ", shape_str(weight));
    const int64_t n = weight.size(0), words = weight.size(1);
    if (words * 8 < k) fail(op, "weight holds ", words * 8, " columns, fewer than the ", k, " of x");
    if (words > 1 && weight.stride(1) != 1) fail(op, "weight must have a unit column stride");
    if (weight_scale.dim() != 2 || weight_scale.size(1) != n || weight_scale.size(0) <= 0 ||
        words % weight_scale.size(0) != 0 || sizes_of(weight_offset) != sizes_of(weight_scale))
        fail(op, "weight_scale and weight_offset must be (groups, n) with groups dividing K/8 = ", words,
             ", but have shapes ", shape_str(weight_scale), " and ", shape_str(weight_offset));
    if (!weight_scale.is_contiguous() || !weight_offset.is_contiguous())
        fail(op, "weight_scale and weight_offset must be contiguous");
    std::optional<Tensor> b32;
    if (bias) {
        check_input(*bias, op, "bias", {ST::Float, ST::Half, ST::BFloat16});
        if (bias->dim() != 1 || bias->size(0) != n) fail(op, "bias must be 1-D of length ", n, ", but has shape ", shape_str(*bias));
        b32 = as_f32(*bias);
    }
    Tensor out = new_empty(out_shape, out_dtype);
    if (out.numel() == 0) return out;
    npq_gemm_s4_args a;
    memset(&a, 0, sizeof a);
    a.m = m, a.n = n, a.k = k, a.words = words, a.groups = weight_scale.size(0);
    a.x = q, a.x_row_stride = k, a.x_scale = q_scale;
    a.w = (const int32_t *)weight.data_ptr(), a.w_row_stride = weight.stride(0), a.w_extent = extent_of(weight);
    a.scale = (const float *)weight_scale.data_ptr(), a.offset = (const float *)weight_offset.data_ptr();
    a.bias = b32 ? (const float *)b32->data_ptr() : nullptr;
    a.out = out.data_ptr(), a.out_dtype = npq_dtype_of(out_dtype);
    check_status(npq_gemm_s4(&a, threads()), op);
    return out;
}

// The w4a8 product on quantized rows: x_q int8 (m, k), x_scale float32 (m,) -> (m, n) of out_dtype.
Tensor gemm_s4(Tensor x_q, Tensor x_scale, Tensor weight, Tensor weight_scale, Tensor weight_offset,
               std::optional<Tensor> bias, ST out_dtype) {
    const char *op = "gemm_s4";
    check_input(x_q, op, "x_q", {ST::Char});
    check_input(x_scale, op, "x_scale", {ST::Float});
    check_float_out(op, out_dtype);
    if (x_q.dim() != 2) fail(op, "x_q must be 2-D (m, k), but has shape ", shape_str(x_q));
    const int64_t m = x_q.size(0), k = x_q.size(1);
    if (x_scale.dim() != 1 || x_scale.size(0) != m)
        fail(op, "x_scale must be 1-D of length ", m, ", but has shape ", shape_str(x_scale));
    Tensor q = torch::stable::contiguous(x_q), s = torch::stable::contiguous(x_scale);
    if (weight.dim() != 2) fail(op, "weight must be 2-D (n, K/8), but has shape ", shape_str(weight));
    return run_gemm_s4(op, (const int8_t *)q.data_ptr(), (const float *)s.data_ptr(), m, k, weight, weight_scale,
                       weight_offset, bias, out_dtype, {m, weight.size(0)});
}

// The w4a8 layer: x (..., k) quantized per row, symmetric (npu_dynamic_quant), then gemm_s4 in x's dtype.
Tensor linear_w4a8(Tensor x, Tensor weight, Tensor weight_scale, Tensor weight_offset, std::optional<Tensor> bias) {
    const char *op = "linear_w4a8";
    QuantRows r = quantize_rows(op, x, std::nullopt, false);
    if (weight.dim() != 2) fail(op, "weight must be 2-D (n, K/8), but has shape ", shape_str(weight));
    return run_gemm_s4(op, r.q, r.scale, r.m, r.k, weight, weight_scale, weight_offset, bias, x.scalar_type(),
                       linear_out_shape(x, weight.size(0)));
}

}  // namespace

STABLE_TORCH_LIBRARY(npuquant, m) {
    // runtime
    m.def("cpu_features() -> int");
    m.def("isa() -> int");
    m.def("best_isa() -> int");
    m.def("set_isa_limit(int level) -> int");
    m.def("set_bf16_nan(int bits) -> int");
    m.def("kernels() -> str");
    m.def("pool_selftest(int n, int chunk, int nthreads) -> Tensor");
    // kernels (normalised arguments; the public functions validate with torch_npu's messages first)
    m.def(
        "dequant_affine(Tensor x, Tensor scale, Tensor? offset, ScalarType out_dtype, bool half_steps=False) "
        "-> Tensor");
    m.def(
        "dynamic_quant(Tensor x, Tensor? smooth_scales, Tensor? group_index, bool asymmetric, bool int4) "
        "-> (Tensor, Tensor, Tensor)");
    m.def("unpack_int4(Tensor packed) -> Tensor");
    m.def("pack_int4(Tensor values, str name=\"values\") -> Tensor");
    m.def(
        "quant_matmul(Tensor x1, Tensor x2, Tensor scale, Tensor? offset, Tensor? pertoken_scale, Tensor? bias, "
        "ScalarType out_dtype) -> Tensor");
    m.def(
        "quant_matmul_asymmetric(Tensor x_q, Tensor x_scale, Tensor x_offset, Tensor weight, Tensor w_scale, "
        "Tensor? bias, ScalarType out_dtype) -> Tensor");
    m.def(
        "grouped_matmul_s8(Tensor[] x, Tensor[] weight, Tensor? group_sizes, Tensor? scale, Tensor? offset, "
        "Tensor? pertoken, Tensor? bias, ScalarType out_dtype, bool single_out) -> Tensor[]");
    // one operator per quantized layer (npuquant.nn)
    m.def("linear_w8a8(Tensor x, Tensor weight, Tensor weight_scale, Tensor? smooth_scales, Tensor? bias) -> Tensor");
    m.def(
        "linear_w8a8_sym(Tensor x, Tensor weight, Tensor weight_scale, Tensor? smooth_scales, Tensor? bias) "
        "-> Tensor");
    m.def(
        "linear_w4a16(Tensor x, Tensor weight, Tensor weight_scale, Tensor weight_offset, Tensor? bias, "
        "int in_features, int tile_rows) -> Tensor");
    m.def(
        "gemm_s4(Tensor x_q, Tensor x_scale, Tensor weight, Tensor weight_scale, Tensor weight_offset, Tensor? bias, "
        "ScalarType out_dtype) -> Tensor");
    m.def("linear_w4a8(Tensor x, Tensor weight, Tensor weight_scale, Tensor weight_offset, Tensor? bias) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(npuquant, CompositeExplicitAutograd, m) {
    m.impl("cpu_features", TORCH_BOX(&cpu_features));
    m.impl("isa", TORCH_BOX(&isa));
    m.impl("best_isa", TORCH_BOX(&best_isa));
    m.impl("set_isa_limit", TORCH_BOX(&set_isa_limit));
    m.impl("set_bf16_nan", TORCH_BOX(&set_bf16_nan));
    m.impl("kernels", TORCH_BOX(&kernels));
    m.impl("pool_selftest", TORCH_BOX(&pool_selftest));
}

STABLE_TORCH_LIBRARY_IMPL(npuquant, CPU, m) {
    m.impl("dequant_affine", TORCH_BOX(&dequant_affine));
    m.impl("dynamic_quant", TORCH_BOX(&dynamic_quant));
    m.impl("unpack_int4", TORCH_BOX(&unpack_int4));
    m.impl("pack_int4", TORCH_BOX(&pack_int4));
    m.impl("quant_matmul", TORCH_BOX(&quant_matmul));
    m.impl("quant_matmul_asymmetric", TORCH_BOX(&quant_matmul_asymmetric));
    m.impl("grouped_matmul_s8", TORCH_BOX(&grouped_matmul_s8));
    m.impl("linear_w8a8", TORCH_BOX(&linear_w8a8));
    m.impl("linear_w8a8_sym", TORCH_BOX(&linear_w8a8_sym));
    m.impl("linear_w4a16", TORCH_BOX(&linear_w4a16));
    m.impl("gemm_s4", TORCH_BOX(&gemm_s4));
    m.impl("linear_w4a8", TORCH_BOX(&linear_w4a8));
}
