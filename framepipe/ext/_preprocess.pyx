# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused frame -> model-input preprocessing.

One pass per destination row, without the GIL and without intermediate images: read a BGR
uint8 frame in place (any strides; packed HxWx3 rows are read directly) or a YUV 4:2:0 frame
(I420 or NV12, as PyAV and cv2 lay them out; any size; limited or full range, BT.601 or
BT.709, converted exactly as FFmpeg does), resize it with bilinear interpolation (the
half-pixel-centre rule of ``cv2.resize(..., INTER_LINEAR)``), aspect-preserving with padding
(letterbox) or stretched, reorder BGR -> RGB, normalise ``(x * scale - mean) / std`` and write
planar CHW float32 or float16 into a caller-provided NCHW buffer at a batch index.

The index and weight tables depend only on (source shape, destination shape, letterbox) and
live in a :class:`ResizePlan`, built once and reused for every frame of that shape. Plans and
normalisations are immutable, so one may be shared by several threads.

Per destination row: each of the two source rows is resampled horizontally (two taps per
destination pixel, 11-bit fixed-point weights as cv2 uses, SSE2), cached while the next
destination row reads the same source row (upscaling); when downscaling, both rows are
resampled and blended in one pass instead. The pixels are then blended vertically in float,
transposed to planes, normalised and stored (kernels in _preprocess_kernels.h). Only source
columns that are actually read are converted when a row needs converting (YUV, strided BGR).
"""

from libc.math cimport floor, rint
from libc.stdint cimport int32_t, uint8_t, uint16_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

import numpy as np


cdef extern from "_preprocess_half.h" nogil:
    uint16_t fp_float_to_half(float value)


cdef extern from "_preprocess_kernels.h" nogil:
    int FP_HWEIGHT_ONE
    void fp_hresample_row(const uint8_t* row, Py_ssize_t row_bytes, int n, const int32_t* ofs0,
                          const int32_t* ofs1, const int32_t* weights, float* out4)
    void fp_prefetch_row(const uint8_t* row, Py_ssize_t nbytes)
    void fp_hresample_rows2(const uint8_t* r0, const uint8_t* r1, Py_ssize_t row_bytes, int n,
                            const int32_t* ofs0, const int32_t* ofs1, const int32_t* weights,
                            float wy, float* out4)
    void fp_vblend_store(const float* h0, const float* h1, float wy, int n, const int* channel,
                         const float* gain, const float* offset, float* d0, float* d1, float* d2)
    void fp_yuv_row_to_bgr(const uint8_t* y, const uint8_t* u, const uint8_t* v, int uv_step,
                           int width, const int* coef, uint8_t* out)


cdef enum SourceKind:
    SOURCE_BGR = 0
    SOURCE_I420 = 1
    SOURCE_NV12 = 2


cdef struct Source:
    int kind
    int width
    int height
    const uint8_t* base          # BGR: pixel (0, 0); YUV: the Y plane
    Py_ssize_t row_stride        # BGR: bytes between rows; YUV: bytes between Y rows (= width)
    Py_ssize_t pixel_stride
    Py_ssize_t channel_stride
    bint packed                  # BGR rows are packed B,G,R,B,G,R... (read in place)
    const uint8_t* u_plane       # I420: U plane; NV12: the interleaved UV plane
    const uint8_t* v_plane       # I420 only
    Py_ssize_t chroma_stride
    # YUV -> RGB as FFmpeg's swscale does it (see _set_coefficients)
    int y_offset
    int cy, cub, cug, cvg, cvr


cdef struct Output:
    float* f32                   # plane 0 of the image in the batch (float32 output), or NULL
    uint16_t* f16                # plane 0 of the image in the batch (float16 output), or NULL
    Py_ssize_t plane_size        # dst_height * dst_width
    int width                    # dst_width


cdef void _compute_axis(int src_size, int dst_size, int32_t* idx0, int32_t* idx1, float* weight) noexcept nogil:
    # cv2.resize INTER_LINEAR: centre-aligned sampling, clamped at the borders.
    cdef double scale = <double>src_size / <double>dst_size
    cdef double f
    cdef int i, s
    for i in range(dst_size):
        f = (i + 0.5) * scale - 0.5
        s = <int>floor(f)
        f -= s
        if s < 0:
            s = 0
            f = 0.0
        if s >= src_size - 1:
            s = src_size - 1
            f = 0.0
        idx0[i] = s
        idx1[i] = s + 1 if s + 1 < src_size else s
        weight[i] = <float>f


cdef class ResizePlan:
    """Index and weight tables for one (source shape, destination shape, mode)."""

    def __cinit__(self, int src_height, int src_width, int dst_height, int dst_width, bint letterbox=True):
        self.x_ofs0 = NULL
        self.x_ofs1 = NULL
        self.x_weight = NULL
        self.y_row0 = NULL
        self.y_row1 = NULL
        self.y_weight = NULL
        self.src_columns = NULL
        self.n_src_columns = 0
        if src_height <= 0 or src_width <= 0:
            raise ValueError(f"source size must be positive, got {src_width}x{src_height}")
        if dst_height <= 0 or dst_width <= 0:
            raise ValueError(f"destination size must be positive, got {dst_width}x{dst_height}")
        cdef double r
        self.src_height = src_height
        self.src_width = src_width
        self.dst_height = dst_height
        self.dst_width = dst_width
        self.letterbox = letterbox
        if letterbox:
            r = min(<double>dst_height / src_height, <double>dst_width / src_width)
            self.new_width = max(1, min(dst_width, <int>rint(src_width * r)))
            self.new_height = max(1, min(dst_height, <int>rint(src_height * r)))
        else:
            self.new_width = dst_width
            self.new_height = dst_height
        self.pad_left = (dst_width - self.new_width) // 2
        self.pad_top = (dst_height - self.new_height) // 2
        self.ratio_x = <double>self.new_width / src_width
        self.ratio_y = <double>self.new_height / src_height

        self.x_ofs0 = <int32_t*>malloc(self.new_width * sizeof(int32_t))
        self.x_ofs1 = <int32_t*>malloc(self.new_width * sizeof(int32_t))
        self.x_weight = <int32_t*>malloc(self.new_width * sizeof(int32_t))
        self.y_row0 = <int32_t*>malloc(self.new_height * sizeof(int32_t))
        self.y_row1 = <int32_t*>malloc(self.new_height * sizeof(int32_t))
        self.y_weight = <float*>malloc(self.new_height * sizeof(float))
        if (self.x_ofs0 == NULL or self.x_ofs1 == NULL or self.x_weight == NULL
                or self.y_row0 == NULL or self.y_row1 == NULL or self.y_weight == NULL):
            raise MemoryError()
        cdef float* xw = <float*>malloc(self.new_width * sizeof(float))
        if xw == NULL:
            raise MemoryError()
        _compute_axis(src_width, self.new_width, self.x_ofs0, self.x_ofs1, xw)
        _compute_axis(src_height, self.new_height, self.y_row0, self.y_row1, self.y_weight)
        cdef int i, w1
        for i in range(self.new_width):
            # column index -> byte offset in a packed BGR row; weight -> 11-bit fixed point
            self.x_ofs0[i] *= 3
            self.x_ofs1[i] *= 3
            w1 = <int>(xw[i] * FP_HWEIGHT_ONE + 0.5)
            self.x_weight[i] = (FP_HWEIGHT_ONE - w1) | (w1 << 16)
        free(xw)
        cdef uint8_t* needed = <uint8_t*>calloc(src_width, 1)
        self.src_columns = <int32_t*>malloc(src_width * sizeof(int32_t))
        if needed == NULL or self.src_columns == NULL:
            free(needed)
            raise MemoryError()
        for i in range(self.new_width):
            needed[self.x_ofs0[i] // 3] = 1
            if (self.x_weight[i] >> 16) != 0:
                needed[self.x_ofs1[i] // 3] = 1
        for i in range(src_width):
            if needed[i]:
                self.src_columns[self.n_src_columns] = i
                self.n_src_columns += 1
        free(needed)

    def __dealloc__(self):
        free(self.x_ofs0)
        free(self.x_ofs1)
        free(self.x_weight)
        free(self.y_row0)
        free(self.y_row1)
        free(self.y_weight)
        free(self.src_columns)

    def __repr__(self):
        return (
            f"ResizePlan({self.src_width}x{self.src_height} -> {self.dst_width}x{self.dst_height}, "
            f"content {self.new_width}x{self.new_height} at ({self.pad_left}, {self.pad_top}), "
            f"letterbox={bool(self.letterbox)})"
        )

    def __reduce__(self):
        return (ResizePlan, (self.src_height, self.src_width, self.dst_height, self.dst_width, self.letterbox))


cdef class Normalisation:
    """``out[c] = (pixel[c] * scale - mean[c]) / std[c]``, channels in output order."""

    def __cinit__(self, double scale=1.0 / 255.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                  bint to_rgb=True, double pad_value=114.0):
        mean_t = tuple(float(m) for m in mean)
        std_t = tuple(float(s) for s in std)
        if len(mean_t) != 3 or len(std_t) != 3:
            raise ValueError("mean and std need one value per channel (3)")
        if any(s == 0.0 for s in std_t):
            raise ValueError("std must not contain 0")
        self.scale = scale
        self.mean = mean_t
        self.std = std_t
        self.to_rgb = to_rgb
        self.pad_value = pad_value
        cdef int k
        for k in range(3):
            self.channel[k] = 2 - k if to_rgb else k
            self.gain[k] = <float>(scale / std_t[k])
            self.offset[k] = <float>(-mean_t[k] / std_t[k])
            self.pad_out[k] = <float>((pad_value * scale - mean_t[k]) / std_t[k])

    def __repr__(self):
        return (f"Normalisation(scale={self.scale!r}, mean={self.mean!r}, std={self.std!r}, "
                f"to_rgb={bool(self.to_rgb)}, pad_value={self.pad_value!r})")

    def __reduce__(self):
        return (Normalisation, (self.scale, self.mean, self.std, self.to_rgb, self.pad_value))


cdef inline uint8_t _clip_u8(int v) noexcept nogil:
    return <uint8_t>(0 if v < 0 else (255 if v > 255 else v))


cdef enum:
    PREFETCH_ROWS = 1  # destination rows ahead whose source rows are prefetched

cdef inline int _round16(long long f) noexcept nogil:
    """A 16.16 fixed-point value to the nearest integer, within int16."""
    cdef long long r = (f + (1 << 15)) >> 16
    return <int>(-0x7FFF if r < -0x7FFF else (0x7FFF if r > 0x7FFF else r))


cdef inline long long _div_trunc(long long a, long long b) noexcept nogil:
    return a // b if a >= 0 else -((-a) // b)


cdef void _set_coefficients(Source* s, bint full_range, bint bt709) noexcept nogil:
    """The integer YUV -> RGB of FFmpeg's swscale for a yuv420p frame (what PyAV
    ``to_ndarray("bgr24")`` gives), so a model sees the pixels it would see after FFmpeg's
    conversion, bit for bit (tests/unit/test_yuv_frames.py checks it against PyAV).

    Per pixel, 16-bit lanes: Y, U and V are scaled by 8, offset, and each multiplied by its
    coefficient keeping the high 16 bits (floored) — R = y + v*vr, G = y + u*ug + v*vg,
    B = y + u*ub — then clamped to 0..255. The coefficients (16.16 values rounded to 13
    fractional bits) are the limited-range-scaled BT.601 / BT.709 matrix, scaled back by
    224/255 for full range; limited range also stretches Y by 255/219 from 16."""
    cdef long long crv, cbu, cgu, cgv, cy, oy
    if bt709:
        crv = 117489
        cbu = 138438
        cgu = -13975
        cgv = -34925
    else:
        crv = 104597
        cbu = 132201
        cgu = -25675
        cgv = -53279
    cy = 1 << 16
    oy = 0
    if full_range:
        crv = _div_trunc(crv * 224, 255)
        cbu = _div_trunc(cbu * 224, 255)
        cgu = _div_trunc(cgu * 224, 255)
        cgv = _div_trunc(cgv * 224, 255)
    else:
        cy = cy * 255 // 219
        oy = 16 << 16
    s.cy = _round16(cy << 13)
    s.cvr = _round16(crv << 13)
    s.cub = _round16(cbu << 13)
    s.cug = _round16(cgu << 13)
    s.cvg = _round16(cgv << 13)
    s.y_offset = _round16(oy << 3)


cdef void _yuv_row_to_bgr(const Source* src, int sy, uint8_t* out) noexcept nogil:
    """Source row ``sy`` of a 4:2:0 frame, every column, as packed BGR (SSE2: 16 pixels a
    step; the whole row costs less than converting the columns a resize reads one by one)."""
    cdef const uint8_t* urow = src.u_plane + (sy >> 1) * src.chroma_stride
    cdef const uint8_t* vrow
    cdef int step
    cdef int coef[6]
    if src.kind == SOURCE_I420:
        vrow = src.v_plane + (sy >> 1) * src.chroma_stride
        step = 1
    else:
        vrow = urow + 1
        step = 2
    coef[0] = src.y_offset
    coef[1] = src.cy
    coef[2] = src.cub
    coef[3] = src.cug
    coef[4] = src.cvg
    coef[5] = src.cvr
    fp_yuv_row_to_bgr(src.base + sy * src.row_stride, urow, vrow, step, src.width, coef, out)


cdef void _strided_row_to_bgr(const Source* src, int sy, const int32_t* columns, int n, uint8_t* out) noexcept nogil:
    cdef const uint8_t* row = src.base + sy * src.row_stride
    cdef const uint8_t* px
    cdef int x, j
    for j in range(n):
        x = columns[j]
        px = row + x * src.pixel_stride
        out[3 * x] = px[0]
        out[3 * x + 1] = px[src.channel_stride]
        out[3 * x + 2] = px[2 * src.channel_stride]


cdef const uint8_t* _source_row(const Source* src, ResizePlan plan, int sy, uint8_t* scratch) noexcept nogil:
    """A packed BGR row of the source: in place when it is packed, else converted into scratch."""
    if src.kind == SOURCE_BGR and src.packed:
        return src.base + sy * src.row_stride
    if src.kind == SOURCE_BGR:
        _strided_row_to_bgr(src, sy, plan.src_columns, plan.n_src_columns, scratch)
    else:
        _yuv_row_to_bgr(src, sy, scratch)
    return scratch


cdef void _fill(float* dst, Py_ssize_t n, float value) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = value


cdef void _fill_half(uint16_t* dst, Py_ssize_t n, uint16_t value) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = value


cdef void _fill_padding(ResizePlan plan, Normalisation norm, const Output* out) noexcept nogil:
    cdef int k, y
    cdef Py_ssize_t W = out.width
    cdef int top = plan.pad_top
    cdef int bottom = plan.pad_top + plan.new_height
    cdef int left = plan.pad_left
    cdef int right = plan.pad_left + plan.new_width
    cdef uint16_t h
    cdef float* base
    cdef uint16_t* hbase
    for k in range(3):
        if out.f32 != NULL:
            base = out.f32 + k * out.plane_size
            _fill(base, top * W, norm.pad_out[k])
            _fill(base + bottom * W, (plan.dst_height - bottom) * W, norm.pad_out[k])
            if left > 0 or right < W:
                for y in range(top, bottom):
                    _fill(base + y * W, left, norm.pad_out[k])
                    _fill(base + y * W + right, W - right, norm.pad_out[k])
        else:
            hbase = out.f16 + k * out.plane_size
            h = fp_float_to_half(norm.pad_out[k])
            _fill_half(hbase, top * W, h)
            _fill_half(hbase + bottom * W, (plan.dst_height - bottom) * W, h)
            if left > 0 or right < W:
                for y in range(top, bottom):
                    _fill_half(hbase + y * W, left, h)
                    _fill_half(hbase + y * W + right, W - right, h)


cdef const float* _resampled_row(const Source* src, ResizePlan plan, int sy, float* hrows,
                                 int* cached, int avoid_slot, int* used_slot, uint8_t* scratch) noexcept nogil:
    """Source row ``sy`` resampled horizontally (4 floats per destination pixel), from one of
    two cached slots; a slot is reused while consecutive destination rows read the same row."""
    cdef int slot
    cdef Py_ssize_t slot_size = 4 * <Py_ssize_t>plan.new_width
    for slot in range(2):
        if cached[slot] == sy:
            used_slot[0] = slot
            return hrows + slot * slot_size
    slot = 1 if avoid_slot == 0 else 0
    cdef const uint8_t* row = _source_row(src, plan, sy, scratch)
    fp_hresample_row(row, 3 * <Py_ssize_t>src.width, plan.new_width, plan.x_ofs0, plan.x_ofs1,
                     plan.x_weight, hrows + slot * slot_size)
    cached[slot] = sy
    used_slot[0] = slot
    return hrows + slot * slot_size


cdef int _run(const Source* src, ResizePlan plan, Normalisation norm, const Output* out, bint fill_padding) noexcept nogil:
    """The fused pass. Returns 0, or -1 when scratch memory could not be allocated."""
    cdef int new_w = plan.new_width
    cdef float* hrows = <float*>malloc(3 * 4 * <Py_ssize_t>new_w * sizeof(float))
    cdef float* blended
    cdef bint packed = src.kind == SOURCE_BGR and src.packed
    cdef bint downscale = plan.new_height <= src.height
    cdef float* planes = <float*>malloc(3 * <Py_ssize_t>new_w * sizeof(float))
    # Halving or more, no two destination rows share a source row: a converted (4:2:0 or
    # strided) pair is blended in one horizontal pass, as a packed pair is.
    cdef bint pairs = not packed and plan.src_height >= 2 * plan.new_height
    cdef Py_ssize_t row_scratch = 3 * <Py_ssize_t>src.width + 16
    cdef uint8_t* scratch = <uint8_t*>calloc(2 * row_scratch, 1)
    cdef const uint8_t* row0
    cdef const uint8_t* row1
    if hrows == NULL or planes == NULL or scratch == NULL:
        free(hrows)
        free(planes)
        free(scratch)
        return -1
    blended = hrows + 2 * 4 * <Py_ssize_t>new_w  # slots 0, 1: cached rows; 2: a blended pair
    cdef int cached[2]
    cached[0] = -1
    cached[1] = -1
    cdef int slot0, slot1, k, x, y
    cdef const float* h0
    cdef const float* h1
    cdef float wy
    cdef float gain[3]
    for k in range(3):
        gain[k] = norm.gain[k] / FP_HWEIGHT_ONE
    cdef float* d0
    cdef float* d1
    cdef float* d2
    cdef Py_ssize_t W = out.width
    cdef Py_ssize_t out_offset

    if fill_padding:
        _fill_padding(plan, norm, out)

    cdef int ahead
    for y in range(plan.new_height):
        wy = plan.y_weight[y]
        if packed and y + PREFETCH_ROWS < plan.new_height:
            # the rows of a destination row a little ahead (each source row once)
            ahead = plan.y_row0[y + PREFETCH_ROWS]
            if ahead != plan.y_row0[y + PREFETCH_ROWS - 1] and ahead != plan.y_row1[y + PREFETCH_ROWS - 1]:
                fp_prefetch_row(src.base + ahead * src.row_stride, 3 * <Py_ssize_t>src.width)
            ahead = plan.y_row1[y + PREFETCH_ROWS]
            if plan.y_weight[y + PREFETCH_ROWS] != 0.0 and ahead != plan.y_row1[y + PREFETCH_ROWS - 1]:
                fp_prefetch_row(src.base + ahead * src.row_stride, 3 * <Py_ssize_t>src.width)
        if wy != 0.0 and packed and downscale:
            # two fresh rows per destination row: blend them in the horizontal pass
            fp_hresample_rows2(src.base + plan.y_row0[y] * src.row_stride,
                               src.base + plan.y_row1[y] * src.row_stride,
                               3 * <Py_ssize_t>src.width, new_w, plan.x_ofs0, plan.x_ofs1,
                               plan.x_weight, wy, blended)
            h0 = blended
            h1 = blended
            wy = 0.0
        elif wy != 0.0 and pairs:
            row0 = _source_row(src, plan, plan.y_row0[y], scratch)
            row1 = _source_row(src, plan, plan.y_row1[y], scratch + row_scratch)
            fp_hresample_rows2(row0, row1, 3 * <Py_ssize_t>src.width, new_w, plan.x_ofs0,
                               plan.x_ofs1, plan.x_weight, wy, blended)
            h0 = blended
            h1 = blended
            wy = 0.0
        else:
            h0 = _resampled_row(src, plan, plan.y_row0[y], hrows, cached, -1, &slot0, scratch)
            if wy == 0.0:
                h1 = h0
            else:
                h1 = _resampled_row(src, plan, plan.y_row1[y], hrows, cached, slot0, &slot1, scratch)
        out_offset = (plan.pad_top + y) * W + plan.pad_left
        if out.f32 != NULL:
            d0 = out.f32 + out_offset
            d1 = d0 + out.plane_size
            d2 = d1 + out.plane_size
        else:
            d0 = planes
            d1 = planes + new_w
            d2 = planes + 2 * new_w
        fp_vblend_store(h0, h1, wy, new_w, norm.channel, gain, norm.offset, d0, d1, d2)
        if out.f16 != NULL:
            for x in range(new_w):
                out.f16[out_offset + x] = fp_float_to_half(d0[x])
                out.f16[out_offset + out.plane_size + x] = fp_float_to_half(d1[x])
                out.f16[out_offset + 2 * out.plane_size + x] = fp_float_to_half(d2[x])
    free(hrows)
    free(planes)
    free(scratch)
    return 0


cdef object _output(object out, ResizePlan plan, Py_ssize_t batch_index, Output* result):
    """Check the output buffer and point ``result`` at image ``batch_index`` in it. Returns
    the memoryview that keeps the buffer alive for the duration of the call."""
    cdef float[:, :, :, ::1] f32_view
    cdef uint16_t[:, :, :, ::1] f16_view
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
    arr = out if out.ndim == 4 else (out.reshape((1,) + out.shape) if out.ndim == 3 else None)
    if arr is None:
        raise ValueError(f"out must be CHW or NCHW, got {out.ndim} dimensions")
    if arr.shape[1] != 3 or arr.shape[2] != plan.dst_height or arr.shape[3] != plan.dst_width:
        raise ValueError(
            f"out has shape {tuple(out.shape)}, the plan writes (3, {plan.dst_height}, {plan.dst_width})"
        )
    if not 0 <= batch_index < arr.shape[0]:
        raise IndexError(f"batch_index {batch_index} out of range for a batch of {arr.shape[0]}")
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise ValueError("out must be a writeable C-contiguous array")
    result.plane_size = <Py_ssize_t>plan.dst_height * plan.dst_width
    result.width = plan.dst_width
    result.f32 = NULL
    result.f16 = NULL
    if arr.dtype == np.float32:
        f32_view = arr
        result.f32 = &f32_view[batch_index, 0, 0, 0]
        return f32_view
    if arr.dtype == np.float16:
        f16_view = arr.view(np.uint16)
        result.f16 = &f16_view[batch_index, 0, 0, 0]
        return f16_view
    raise TypeError(f"out must be float32 or float16, got {arr.dtype}")


def preprocess_bgr(const uint8_t[:, :, :] frame, out, ResizePlan plan not None,
                   Normalisation norm not None, Py_ssize_t batch_index=0, bint fill_padding=True):
    """Write one BGR uint8 HxWx3 frame (any strides) into ``out[batch_index]`` (CHW or NCHW,
    float32 or float16, C-contiguous). Returns ``plan`` (ratio and padding for mapping back)."""
    if frame.shape[0] != plan.src_height or frame.shape[1] != plan.src_width or frame.shape[2] != 3:
        raise ValueError(
            f"frame has shape ({frame.shape[0]}, {frame.shape[1]}, {frame.shape[2]}), the plan expects ({plan.src_height}, {plan.src_width}, 3)"
        )
    cdef Output o
    keep = _output(out, plan, batch_index, &o)
    cdef Source s
    s.kind = SOURCE_BGR
    s.width = plan.src_width
    s.height = plan.src_height
    s.base = &frame[0, 0, 0]
    s.row_stride = frame.strides[0]
    s.pixel_stride = frame.strides[1]
    s.channel_stride = frame.strides[2]
    s.packed = frame.strides[1] == 3 and frame.strides[2] == 1
    s.u_plane = NULL
    s.v_plane = NULL
    s.chroma_stride = 0
    cdef int rc
    with nogil:
        rc = _run(&s, plan, norm, &o, fill_padding)
    if rc != 0:
        raise MemoryError()
    return plan


cdef object _yuv_source(object frame, int w, int h, bint nv12, bint full_range, bint bt709,
                        Source* s):
    """Describe a 4:2:0 frame: one C-contiguous uint8 array holding the Y plane then the
    chroma (``ceil(h/2) x ceil(w/2)`` per chroma plane), flat or shaped (h*3/2, w)."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        raise TypeError(f"a YUV 4:2:0 frame is uint8 bytes, got {arr.dtype}")
    if not arr.flags.c_contiguous:
        raise ValueError("a YUV 4:2:0 frame must be one C-contiguous array (its planes in a row)")
    cdef Py_ssize_t cw = (w + 1) // 2
    cdef Py_ssize_t ch = (h + 1) // 2
    cdef Py_ssize_t need = <Py_ssize_t>w * h + 2 * cw * ch
    if arr.size != need:
        raise ValueError(
            f"frame has shape {arr.shape} ({arr.size} bytes), a {w}x{h} YUV 4:2:0 frame is {need} bytes"
            + (f" or shape ({h * 3 // 2}, {w})" if h % 2 == 0 and w % 2 == 0 else "")
        )
    cdef const uint8_t[::1] flat = arr.reshape(-1)
    s.kind = SOURCE_NV12 if nv12 else SOURCE_I420
    s.width = w
    s.height = h
    s.base = &flat[0]
    s.row_stride = w
    s.pixel_stride = 1
    s.channel_stride = 1
    s.packed = False
    s.u_plane = s.base + <Py_ssize_t>h * w
    if nv12:
        s.v_plane = NULL
        s.chroma_stride = 2 * cw
    else:
        s.v_plane = s.u_plane + ch * cw
        s.chroma_stride = cw
    _set_coefficients(s, full_range, bt709)
    return flat  # the caller keeps it while the pointers are in use


def preprocess_yuv420(frame, out, ResizePlan plan not None,
                      Normalisation norm not None, Py_ssize_t batch_index=0, bint nv12=False,
                      bint fill_padding=True, bint full_range=False, bint bt709=False):
    """Like :func:`preprocess_bgr` for a YUV 4:2:0 frame held in one C-contiguous uint8 array:
    I420 (Y, then U, then V planes; PyAV ``yuv420p``) or NV12 (Y, then interleaved UV), flat
    or shaped (H*3/2, W). Any size: odd ones have ``ceil(h/2) x ceil(w/2)`` chroma samples.
    Colours follow ``full_range`` (else limited: Y 16..235) and ``bt709`` (else BT.601),
    exactly as FFmpeg converts a yuv420p frame (see ``_set_coefficients``)."""
    cdef Source s
    keep_frame = _yuv_source(frame, plan.src_width, plan.src_height, nv12, full_range, bt709, &s)
    cdef Output o
    keep = _output(out, plan, batch_index, &o)
    cdef int rc
    with nogil:
        rc = _run(&s, plan, norm, &o, fill_padding)
    if rc != 0:
        raise MemoryError()
    return plan


def yuv420_to_bgr(frame, int width, int height, uint8_t[:, :, ::1] out, bint nv12=False,
                  bint full_range=False, bint bt709=False):
    """Convert a whole YUV 4:2:0 frame (laid out as for :func:`preprocess_yuv420`) to packed
    BGR in ``out`` (height x width x 3, C-contiguous): for image outputs and drawing, made
    only where someone asks for BGR."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if out.shape[0] != height or out.shape[1] != width or out.shape[2] != 3:
        raise ValueError(
            f"out has shape ({out.shape[0]}, {out.shape[1]}, {out.shape[2]}), a {width}x{height} BGR frame is ({height}, {width}, 3)"
        )
    cdef Source s
    keep_frame = _yuv_source(frame, width, height, nv12, full_range, bt709, &s)
    cdef int y
    cdef uint8_t* base = &out[0, 0, 0]
    cdef Py_ssize_t row = 3 * <Py_ssize_t>width
    with nogil:
        for y in range(height):
            _yuv_row_to_bgr(&s, y, base + y * row)
