"""The TensorRT runtime: deployed engines behind the Session interface, run with cuda-python
(a pool of execution contexts per engine, each with its own stream and reusable buffers)."""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.backends.base import BackendOptions, TensorInfo
from edged.backends.tensorrt.library import (
    current_engine_target,
    engine_stale_reasons,
    error_reason,
    import_trt,
    make_logger,
    trt_module_info,
)
from edged.errors import BackendError


def check_input_shape(name: str, shape: tuple[int, ...], rng: tuple[tuple[int, ...], tuple[int, ...]] | None,
                      static: tuple[int, ...] | None = None) -> None:
    """BackendError unless `shape` lies inside the engine's profile (min, max) or equals its static shape."""
    if rng is not None:
        lo, hi = rng
        if len(shape) == len(lo) and all(a <= d <= b for d, a, b in zip(shape, lo, hi)):
            return
        raise BackendError(
            f"Input {name!r} has shape {list(shape)}, outside the engine's profile "
            f"{list(lo)} to {list(hi)}; split the request or rebuild the RMIR with wider shape ranges."
        )
    if static is not None and tuple(shape) != tuple(static):
        raise BackendError(f"Input {name!r} has shape {list(shape)}, but the engine takes {list(static)}.")


_ONNX_TYPE = {"float32": "float", "float64": "double"}


def _tensor_info(item: list[Any]) -> TensorInfo:
    name, dtype, shape = item
    dims = tuple(d if isinstance(d, int) else str(d) for d in shape)
    return TensorInfo(name, f"tensor({_ONNX_TYPE.get(dtype, dtype)})", dims)


@dataclass
class _Io:
    """One engine tensor: its numpy type, whether it is an input, its profile and where it lives."""

    name: str
    dtype: np.dtype[Any]
    is_input: bool
    on_host: bool
    static: tuple[int, ...] | None
    profile: tuple[tuple[int, ...], tuple[int, ...]] | None


def _make_output_allocator(trt: Any) -> Any:
    """An IOutputAllocator for outputs whose shape is known only after running (data-dependent)."""
    from edged.backends import cuda

    class _OutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, cuda.DeviceBuffer] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            return self.buffers.setdefault(tensor_name, cuda.DeviceBuffer()).ensure(size)

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int,
                                    stream: int) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shapes[tensor_name] = tuple(shape)

        def close(self) -> None:
            for buffer in self.buffers.values():
                buffer.close()

    return _OutputAllocator()


class _Slot:
    """One execution context with its own stream and reusable device and pinned host buffers."""

    def __init__(self, trt: Any, engine: Any, io: list[_Io]) -> None:
        from edged.backends import cuda

        self._cuda = cuda
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BackendError("TensorRT could not create an execution context (is the GPU out of memory?).")
        self.io = io
        self.stream = cuda.Stream()
        self.device = {t.name: cuda.DeviceBuffer() for t in io}
        self.host = {t.name: cuda.PinnedBuffer() for t in io}
        self.allocator: Any = None
        if any(not t.is_input and t.static is None and -1 in tuple(engine.get_tensor_shape(t.name))
               for t in io):
            self.allocator = _make_output_allocator(trt)

    def run(self, inputs: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
        cuda, ctx = self._cuda, self.context
        for t in self.io:
            if not t.is_input:
                continue
            if t.name not in inputs:
                raise BackendError(f"The network needs input {t.name!r}, which the call did not give.")
            array = np.ascontiguousarray(inputs[t.name], dtype=t.dtype)
            check_input_shape(t.name, array.shape, t.profile, t.static)
            if not ctx.set_input_shape(t.name, array.shape):
                raise BackendError(f"TensorRT refused shape {list(array.shape)} for input {t.name!r}.")
            host = self.host[t.name].view(array.shape, array.dtype)
            host[...] = array
            if t.on_host:  # shape tensors are read by TensorRT from host memory
                ctx.set_tensor_address(t.name, self.host[t.name].ptr)
            else:
                ptr = self.device[t.name].ensure(array.nbytes)
                cuda.copy_to_device_async(ptr, host, self.stream)
                ctx.set_tensor_address(t.name, ptr)
        shapes: dict[str, tuple[int, ...]] = {}
        for t in self.io:
            if t.is_input:
                continue
            shape = tuple(ctx.get_tensor_shape(t.name))
            if any(d < 0 for d in shape):
                ctx.set_output_allocator(t.name, self.allocator)
                continue
            shapes[t.name] = shape
            nbytes = int(np.prod(shape, dtype=np.int64)) * t.dtype.itemsize
            ctx.set_tensor_address(t.name, self.device[t.name].ensure(nbytes))
        if not ctx.execute_async_v3(self.stream.ptr):
            self.stream.synchronize()
            raise BackendError("TensorRT failed to run the network (see the log for its message).")
        views = {}
        for name in wanted:
            t = next(x for x in self.io if x.name == name)
            if name in shapes:
                src = self.device[name].ptr
                shape = shapes[name]
            else:
                self.stream.synchronize()  # the allocator learns the shape while the engine runs
                shape = self.allocator.shapes[name]
                src = self.allocator.buffers[name].ptr
            view = self.host[name].view(shape, t.dtype)
            cuda.copy_to_host_async(view, src, self.stream)
            views[name] = view
        self.stream.synchronize()
        return {name: view.copy() for name, view in views.items()}

    def close(self) -> None:
        for device in self.device.values():
            device.close()
        for host in self.host.values():
            host.close()
        if self.allocator is not None:
            self.allocator.close()
        self.stream.close()


@dataclass
class _Engine:
    """One deserialized engine, its tensors and a pool of execution contexts."""

    when: dict[str, bool]
    engine: Any
    io: list[_Io]
    limit: int
    free: queue.LifoQueue[_Slot] = field(default_factory=queue.LifoQueue)
    made: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, trt: Any) -> _Slot:
        try:
            return self.free.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            if self.made < self.limit:
                self.made += 1
                try:
                    return _Slot(trt, self.engine, self.io)
                except BaseException:
                    self.made -= 1
                    raise
        return self.free.get()  # every context is busy: wait for one

    def release(self, slot: _Slot) -> None:
        self.free.put(slot)


class TrtSession:
    """Deployed TensorRT engines behind the backend-neutral Session interface.

    Each engine keeps up to `trt_contexts` execution contexts; concurrent calls each take one
    (the ASR batcher puts concurrent streams into one call). Inputs are copied through pinned
    buffers on the context's own stream, shapes are set per call within the profile.
    """

    def __init__(self, path: Path, options: BackendOptions) -> None:
        try:
            desc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendError(f"{path} is unreadable ({exc}); redeploy the model.") from None
        built_for = desc.get("built_for", {})
        info = trt_module_info()
        if info is None:
            raise BackendError(f"{path.name} is a TensorRT engine, but no TensorRT module is installed; "
                               f"install TensorRT or redeploy with backend=cpu.")
        here = current_engine_target(info)
        stale = engine_stale_reasons(built_for, here)
        if stale:
            raise BackendError(f"The engine {path.name} is stale ({'; '.join(stale)}); run `edged init` "
                               f"(or `edged deploy -f`) to rebuild it.")
        self._trt = trt = import_trt(info.name)
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self.inputs = tuple(_tensor_info(i) for i in desc["inputs"])
        self.outputs = tuple(_tensor_info(o) for o in desc["outputs"])
        self._output_names = [o.name for o in self.outputs]
        self._engines = [self._load_engine(path.parent / e["plan"], e.get("when", {}), options)
                         for e in desc["engines"]]
        self._switches = sorted({k for e in self._engines for k in e.when})

    def _load_engine(self, plan: Path, when: dict[str, bool], options: BackendOptions) -> _Engine:
        data = plan.read_bytes()
        if hasattr(self._runtime, "get_engine_validity"):  # TensorRT-RTX checks the header first
            validity, diagnostics = self._runtime.get_engine_validity(data)
            if validity == self._trt.EngineValidity.INVALID:
                why = [n.lower().replace("_", " ") for n, v in self._trt.EngineInvalidityDiagnostics.__members__.items()
                       if int(diagnostics) & int(v)]
                raise BackendError(f"TensorRT-RTX cannot run the engine {plan.name} here"
                                   f"{' (' + ', '.join(why) + ')' if why else ' (no usable GPU?)'}; "
                                   f"run `edged init` to redeploy it.")
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f"TensorRT cannot load the engine {plan.name}: "
                               f"{error_reason(self._logger, 'no reason given')}; redeploy the model.")
        trt, io = self._trt, []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(engine.get_tensor_shape(name))
            profile = None
            if is_input and any(d < 0 for d in shape):
                lo, _, hi = engine.get_tensor_profile_shape(name, 0)
                profile = (tuple(lo), tuple(hi))
            io.append(_Io(
                name=name,
                dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                is_input=is_input,
                on_host=engine.get_tensor_location(name) == trt.TensorLocation.HOST,
                static=shape if all(d >= 0 for d in shape) else None,
                profile=profile,
            ))
        return _Engine(when, engine, io, max(1, options.trt_contexts))

    def _pick(self, inputs: dict[str, np.ndarray]) -> _Engine:
        if not self._switches:
            return self._engines[0]
        try:
            values = {k: bool(np.asarray(inputs[k]).reshape(-1)[0]) for k in self._switches}
        except (KeyError, IndexError):
            raise BackendError(f"The network needs input(s) {', '.join(self._switches)}.") from None
        for engine in self._engines:
            if all(engine.when.get(k) == v for k, v in values.items()):
                return engine
        raise BackendError(f"No engine was built for {values}; redeploy the model.")

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the network on named inputs; returns the named `outputs` (default: every output)."""
        names = self._output_names if outputs is None else list(outputs)
        engine = self._pick(inputs)
        known = {t.name for t in engine.io if not t.is_input}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BackendError(f"The network has no output(s) {', '.join(unknown)}.")
        slot = engine.acquire(self._trt)
        try:
            return slot.run(inputs, names)
        finally:
            engine.release(slot)
