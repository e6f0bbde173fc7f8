# What other Cython code sees of framepipe.ext._preprocess.
from libc.stdint cimport int32_t, uint8_t, uint16_t


cdef class ResizePlan:
    cdef readonly int src_height, src_width, dst_height, dst_width
    cdef readonly int new_height, new_width, pad_top, pad_left
    cdef readonly double ratio_x, ratio_y
    cdef readonly bint letterbox
    # per destination column: byte offsets of the left/right taps in a packed BGR row and the
    # packed fixed-point weights (left | right << 16); per destination row: the two source
    # rows and the weight of the lower one
    cdef int32_t* x_ofs0
    cdef int32_t* x_ofs1
    cdef int32_t* x_weight
    # the source columns some destination pixel reads with a non-zero weight: a row that has
    # to be converted first (YUV, strided BGR) converts only these
    cdef int32_t* src_columns
    cdef int n_src_columns
    cdef int32_t* y_row0
    cdef int32_t* y_row1
    cdef float* y_weight


cdef class Normalisation:
    cdef readonly double scale
    cdef readonly tuple mean
    cdef readonly tuple std
    cdef readonly bint to_rgb
    cdef readonly double pad_value
    # per output plane: the source channel (BGR index), gain and offset, and the padding value
    cdef int channel[3]
    cdef float gain[3]
    cdef float offset[3]
    cdef float pad_out[3]
