"""A thin layer over cuda-python: GPU identity and memory, streams, device and pinned buffers.

cuda-python is imported inside each function, never at module import, so the CPU path neither
needs nor loads it. Every CUDA error becomes a BackendError naming the call that failed.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from edged.errors import BackendError

_MIB = 2**20


@dataclass(frozen=True)
class GpuIdentity:
    """What an engine is built for: found through the driver API without creating a context."""

    name: str
    compute_capability: str
    """'major.minor', e.g. '8.7' for Jetson Orin."""
    integrated: bool
    """True where the GPU shares the system memory (Jetson): its allocations count as RAM."""
    total_mb: int
    driver_version: str


@dataclass(frozen=True)
class GpuMemory:
    """Free and total device memory, in MiB, as CUDA reports them now."""

    free_mb: int
    total_mb: int


def _runtime() -> Any:
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python before 12.6
        except ImportError:
            raise BackendError(
                "cuda-python is not installed; install it with `pip install 'edged[gpu]'`."
            ) from None
    return runtime


def _driver() -> Any:
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python before 12.6
        except ImportError:
            raise BackendError(
                "cuda-python is not installed; install it with `pip install 'edged[gpu]'`."
            ) from None
    return driver


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result tuple `(error, *values)`; BackendError unless it succeeded."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA call {call} failed: {_error_text(err)}.")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _error_text(err: Any) -> str:
    name = getattr(err, "name", str(err))
    try:
        if name.startswith("cuda"):
            text = _runtime().cudaGetErrorString(err)[1]
        else:
            text = _driver().cuGetErrorString(err)[1]
        return f"{name} ({text.decode() if isinstance(text, bytes) else text})"
    except Exception:  # noqa: BLE001 - the error text is a courtesy; never mask the error itself
        return str(name)


@functools.lru_cache(maxsize=4)
def gpu_identity(device: int = 0) -> GpuIdentity:
    """Name, compute capability and memory of GPU `device` (driver API; no context is created)."""
    drv = _driver()
    try:
        check(drv.cuInit(0), "cuInit")
        count = check(drv.cuDeviceGetCount(), "cuDeviceGetCount")
        if device >= count:
            raise BackendError(f"CUDA sees {count} GPU(s), so there is no GPU number {device}.")
        dev = check(drv.cuDeviceGet(device), "cuDeviceGet")
        raw = check(drv.cuDeviceGetName(256, dev), "cuDeviceGetName")
        attr = drv.CUdevice_attribute
        cc = attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
        major = check(drv.cuDeviceGetAttribute(cc[0], dev), "cuDeviceGetAttribute")
        minor = check(drv.cuDeviceGetAttribute(cc[1], dev), "cuDeviceGetAttribute")
        integrated = check(drv.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_INTEGRATED, dev), "cuDeviceGetAttribute")
        total = check(drv.cuDeviceTotalMem(dev), "cuDeviceTotalMem")
        version = check(drv.cuDriverGetVersion(), "cuDriverGetVersion")
    except BackendError:
        raise
    except Exception as exc:  # noqa: BLE001 - no libcuda.so, a driver too old for these bindings, ...
        raise BackendError(f"The NVIDIA driver cannot be used: {str(exc).rstrip('.')}.") from None
    name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return GpuIdentity(
        name=name.strip(),
        compute_capability=f"{major}.{minor}",
        integrated=bool(integrated),
        total_mb=int(total) // _MIB,
        driver_version=f"{version // 1000}.{version % 1000 // 10}",
    )


def memory_info() -> GpuMemory:
    """Free and total memory of the current GPU (this creates the CUDA context if there is none)."""
    free, total = check(_runtime().cudaMemGetInfo(), "cudaMemGetInfo")
    return GpuMemory(int(free) // _MIB, int(total) // _MIB)


class Stream:
    """A non-blocking CUDA stream owned by one execution context."""

    def __init__(self) -> None:
        rt = _runtime()
        self._rt = rt
        self.handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        """The stream as the integer TensorRT's execute_async_v3 takes."""
        return int(self.handle)

    def synchronize(self) -> None:
        """Wait until all work queued on this stream is done."""
        check(self._rt.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        """Destroy the stream (idempotent)."""
        if self.handle is not None:
            self._rt.cudaStreamDestroy(self.handle)
            self.handle = None


class DeviceBuffer:
    """Device memory that grows on demand and is reused across calls."""

    def __init__(self) -> None:
        self._rt = _runtime()
        self.ptr = 0
        self.capacity = 0

    def ensure(self, nbytes: int) -> int:
        """A device pointer to at least `nbytes` (at least 256, so empty tensors get a real address)."""
        nbytes = max(int(nbytes), 256)
        if nbytes > self.capacity:
            self.close()
            self.ptr = int(check(self._rt.cudaMalloc(nbytes), "cudaMalloc"))
            self.capacity = nbytes
        return self.ptr

    def close(self) -> None:
        """Free the memory (idempotent)."""
        if self.ptr:
            self._rt.cudaFree(self.ptr)
            self.ptr, self.capacity = 0, 0


class PinnedBuffer:
    """Page-locked host memory, so copies to and from the GPU really run asynchronously."""

    def __init__(self) -> None:
        self._rt = _runtime()
        self.ptr = 0
        self.capacity = 0

    def ensure(self, nbytes: int) -> int:
        """A pinned host pointer to at least `nbytes`."""
        nbytes = max(int(nbytes), 256)
        if nbytes > self.capacity:
            self.close()
            self.ptr = int(check(self._rt.cudaMallocHost(nbytes), "cudaMallocHost"))
            self.capacity = nbytes
        return self.ptr

    def view(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A numpy array over the start of the buffer (valid until the next ensure() grows it)."""
        count = int(np.prod(shape, dtype=np.int64))
        self.ensure(count * dtype.itemsize)
        raw = (ctypes.c_byte * max(count * dtype.itemsize, 1)).from_address(self.ptr)
        return np.frombuffer(memoryview(raw).cast("B"), dtype=dtype, count=count).reshape(shape)

    def close(self) -> None:
        """Free the memory (idempotent)."""
        if self.ptr:
            self._rt.cudaFreeHost(self.ptr)
            self.ptr, self.capacity = 0, 0


def copy_to_device_async(dst: int, src: np.ndarray, stream: Stream) -> None:
    """Queue a copy of the contiguous host array `src` (pinned for real overlap) to device `dst`."""
    if src.nbytes:
        rt = _runtime()
        check(rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                 rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle), "cudaMemcpyAsync")


def copy_to_host_async(dst: np.ndarray, src: int, stream: Stream) -> None:
    """Queue a copy of device `src` into the contiguous host array `dst`."""
    if dst.nbytes:
        rt = _runtime()
        check(rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                 rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle), "cudaMemcpyAsync")


def malloc(nbytes: int) -> int:
    """Allocate device memory (for TensorRT's output allocator); free it with free()."""
    return int(check(_runtime().cudaMalloc(max(int(nbytes), 256)), "cudaMalloc"))


def free(ptr: int) -> None:
    """Free device memory from malloc()."""
    if ptr:
        _runtime().cudaFree(ptr)


__all__ = [
    "DeviceBuffer", "GpuIdentity", "GpuMemory", "PinnedBuffer", "Stream", "check",
    "copy_to_device_async", "copy_to_host_async", "free", "gpu_identity", "malloc", "memory_info",
]
