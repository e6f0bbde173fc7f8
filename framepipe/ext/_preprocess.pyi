"""Fused frame -> model-input preprocessing (see _preprocess.pyx)."""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

class ResizePlan:
    """Index and weight tables for one (source shape, destination shape, mode); immutable."""

    src_height: int
    src_width: int
    dst_height: int
    dst_width: int
    new_height: int
    new_width: int
    pad_top: int
    pad_left: int
    ratio_x: float
    ratio_y: float
    letterbox: bool
    def __init__(
        self,
        src_height: int,
        src_width: int,
        dst_height: int,
        dst_width: int,
        letterbox: bool = True,
    ) -> None: ...

class Normalisation:
    """``out[c] = (pixel[c] * scale - mean[c]) / std[c]``, channels in output order."""

    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    to_rgb: bool
    pad_value: float
    def __init__(
        self,
        scale: float = ...,
        mean: Sequence[float] = ...,
        std: Sequence[float] = ...,
        to_rgb: bool = True,
        pad_value: float = 114.0,
    ) -> None: ...

def preprocess_bgr(
    frame: npt.NDArray[np.uint8],
    out: npt.NDArray[np.float32] | npt.NDArray[np.float16],
    plan: ResizePlan,
    norm: Normalisation,
    batch_index: int = 0,
    fill_padding: bool = True,
) -> ResizePlan: ...
def preprocess_yuv420(
    frame: npt.NDArray[np.uint8],
    out: npt.NDArray[np.float32] | npt.NDArray[np.float16],
    plan: ResizePlan,
    norm: Normalisation,
    batch_index: int = 0,
    nv12: bool = False,
    fill_padding: bool = True,
    full_range: bool = False,
    bt709: bool = False,
) -> ResizePlan: ...
def yuv420_to_bgr(
    frame: npt.NDArray[np.uint8],
    width: int,
    height: int,
    out: npt.NDArray[np.uint8],
    nv12: bool = False,
    full_range: bool = False,
    bt709: bool = False,
) -> None: ...
