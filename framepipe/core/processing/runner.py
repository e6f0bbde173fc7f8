"""ONNX Runtime session for one model: providers, threads, warm-up, IOBinding.

Providers are tried in the order TensorRT -> CUDA -> CPU, keeping those that are requested
and that this onnxruntime build offers. When a GPU provider cannot start (no driver, missing
CUDA libraries, no device) the session falls back to the CPU provider. That is a warning only
when it matters: a GPU provider was asked for (``providers``, FRAMEPIPE_PROVIDERS), or a GPU
device is present (``/dev/nvidia*``) and its provider failed. Otherwise (onnxruntime-gpu, which
is installed everywhere, on a machine without a GPU) one INFO line says which provider runs.

Threads are sized for many pipelines per machine: each session gets ``intra_op_threads``
(default 1) and its pool threads do not spin while idle, so N pipelines on N cores do not
steal each other's time.

On the CPU provider, inputs are bound in place (no copy) and each output is bound to a
buffer the runner owns and reuses for the same input shape, so a run allocates nothing.

Several threads may call :meth:`OnnxRunner.run` on one runner at once (ONNX Runtime's
``run`` is thread-safe and releases the GIL): K concurrent single-frame runs on one session,
1 intra-op thread each, is how the inference service uses the cores of a CPU. The output
buffers are per calling thread, so the arrays a run returns stay valid until the next run
*on the same thread*, and each thread reaches a steady state that allocates nothing.
"""

from __future__ import annotations

import glob
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from framepipe.protocol.errors import InternalError, InvalidPayloadError

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDER_ORDER = (TENSORRT, CUDA, CPU)
PROVIDER_ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "gpu": CUDA, "cpu": CPU}
DEFAULT_PROVIDERS = (CUDA, CPU)  # TensorRT builds engines for minutes: only when asked for
_OUTPUT_SHAPES_KEPT = 8  # per thread: batch sizes 1..8 of one input size

_ONNX_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


def gpu_device_present() -> bool:
    """An NVIDIA device node exists (a driver is loaded): a GPU provider is expected to start."""
    return bool(glob.glob("/dev/nvidia*"))


def resolve_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """Requested providers (aliases allowed) that are available, in TensorRT -> CUDA -> CPU
    order; the CPU provider always closes the list."""
    wanted: list[str] = []
    for name in requested if requested is not None else DEFAULT_PROVIDERS:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in PROVIDER_ORDER:
            allowed = ", ".join(sorted(PROVIDER_ALIASES))
            raise InvalidPayloadError(
                f"providers: unknown execution provider {name!r} (one of: {allowed})"
            )
        wanted.append(full)
    chosen = [p for p in PROVIDER_ORDER if p in wanted and p in available]
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int | str | None, ...]
    dtype: type[np.generic]


class _ThreadOutputs(threading.local):
    """Output buffers of one calling thread, by input shape (most recently used last)."""

    def __init__(self) -> None:
        self.by_shape: OrderedDict[tuple[int, ...], list[npt.NDArray[np.float32]]] = OrderedDict()


class OnnxRunner:
    """One inference session; :meth:`run` may be called from several threads at once."""

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
    ) -> None:
        self.path = path
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        chosen = resolve_providers(providers, ort.get_available_providers())
        asked_for_gpu = providers is not None and any(
            PROVIDER_ALIASES.get(p.lower(), p) != CPU for p in providers
        )
        self.session = self._create(options, chosen, asked_for_gpu)
        self.providers: list[str] = list(self.session.get_providers())
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise InvalidPayloadError(
                f"{path.name}: framepipe runs image models with one input, this has {len(inputs)}"
            )
        self.input = self._info(inputs[0])
        self.outputs = [self._info(o) for o in self.session.get_outputs()]
        if len(self.input.shape) != 4:
            raise InvalidPayloadError(
                f"{path.name}: the input must be NCHW, got shape {self.input.shape}"
            )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        # Cleared for good (by whichever thread finds out) when an output cannot be bound.
        self._bind_outputs = self.providers[0] == CPU
        self._outputs = _ThreadOutputs()

    def _create(
        self, options: ort.SessionOptions, chosen: list[str], asked_for_gpu: bool
    ) -> ort.InferenceSession:
        gpu = [p for p in chosen if p != CPU]
        if not gpu:
            log.info("%s: running on %s", self.path.name, CPU)
            return ort.InferenceSession(str(self.path), options, providers=[CPU])
        # onnxruntime prints its own errors when a GPU library is missing: keep them quiet and
        # say it once, here, in one warning
        ort.set_default_logger_severity(4)
        try:
            session = ort.InferenceSession(str(self.path), options, providers=chosen)
            failure = None if session.get_providers()[0] != CPU else "no GPU provider could start"
        except Exception as exc:  # a provider failing to initialise is reported, never fatal
            session, failure = None, f"{type(exc).__name__}: {exc}".splitlines()[0]
        finally:
            ort.set_default_logger_severity(2)
        if failure is not None:
            if asked_for_gpu or gpu_device_present():
                log.warning(
                    "%s: %s unavailable (%s); running on %s",
                    self.path.name,
                    "/".join(gpu),
                    failure,
                    CPU,
                )
            if session is None or session.get_providers() != [CPU]:
                session = ort.InferenceSession(str(self.path), options, providers=[CPU])
        assert session is not None
        provider = session.get_providers()[0]
        if failure is not None and not (asked_for_gpu or gpu_device_present()):
            log.info("%s: running on %s (no GPU on this machine)", self.path.name, provider)
        elif failure is None:
            log.info("%s: running on %s", self.path.name, provider)
        return session

    @staticmethod
    def _info(arg: ort.NodeArg) -> TensorInfo:
        dtype = _ONNX_DTYPES.get(arg.type)
        if dtype is None:
            raise InvalidPayloadError(
                f"tensor {arg.name!r} has type {arg.type}; framepipe supports float and float16"
            )
        shape = tuple(
            d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None)
            for d in arg.shape
        )
        return TensorInfo(arg.name, shape, dtype)

    @property
    def fixed_batch(self) -> int | None:
        dim = self.input.shape[0]
        return dim if isinstance(dim, int) else None

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        h, w = self.input.shape[2], self.input.shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def warmup(self, height: int, width: int) -> None:
        batch = self.fixed_batch or 1
        self.run(np.zeros((batch, 3, height, width), self.input.dtype))

    @property
    def provider(self) -> str:
        """The execution provider the session runs on first (e.g. ``CPUExecutionProvider``)."""
        return self.providers[0]

    def run(self, batch: npt.NDArray[np.floating]) -> list[npt.NDArray[np.float32]]:
        """Run on an NCHW batch. The arrays returned may be reused by this thread's next call."""
        if batch.dtype != self.input.dtype:
            raise InternalError(
                f"input dtype {batch.dtype} but the model takes {np.dtype(self.input.dtype)}"
            )
        try:
            if self._bind_outputs:
                try:
                    return self._run_bound(np.ascontiguousarray(batch))
                except Exception:
                    # an output whose shape depends on the data (in-graph NMS) cannot be
                    # bound ahead: run plainly from now on
                    self._bind_outputs = False
                    self._outputs.by_shape.clear()
            return list(self.session.run(None, {self.input.name: batch}))
        except Exception as exc:
            raise InternalError(f"{self.path.name}: inference failed: {exc}") from exc

    def _run_bound(self, batch: npt.NDArray[np.floating]) -> list[npt.NDArray[np.float32]]:
        binding = self.session.io_binding()
        binding.bind_input(self.input.name, "cpu", 0, batch.dtype, batch.shape, batch.ctypes.data)
        kept = self._outputs.by_shape
        buffers = kept.get(batch.shape)
        if buffers is None:
            # first run of this shape: let onnxruntime allocate, then keep same-shaped buffers
            for out in self.outputs:
                binding.bind_output(out.name, "cpu")
            self.session.run_with_iobinding(binding)
            results: list[npt.NDArray[np.float32]] = binding.copy_outputs_to_cpu()
            if len(kept) >= _OUTPUT_SHAPES_KEPT:
                kept.popitem(last=False)
            kept[batch.shape] = [np.empty_like(r) for r in results]
            return results
        kept.move_to_end(batch.shape)
        for out, buf in zip(self.outputs, buffers, strict=True):
            binding.bind_output(out.name, "cpu", 0, buf.dtype, buf.shape, buf.ctypes.data)
        self.session.run_with_iobinding(binding)
        return buffers
