"""Two things the Python binding does not expose, reached through the engine's exported C API.

**Unhandled promise rejections.** The shared library exports
``JS_SetHostPromiseRejectionTracker``. We install a ctypes callback that forwards every
"rejected without handler" / "handler added later" notification to a private JS function of the
prelude, which keeps the set of currently unhandled promises in a Map. At the end of an
invocation the prelude reports what is left (SPEC §8: a logic failure, UnhandledRejection).

**The prelude, compiled once per worker.** Parsing the prelude costs ~0.8 ms, most of an
invocation. The worker compiles it once (``JS_Eval`` with ``COMPILE_ONLY``), keeps the bytecode
(``JS_WriteObject``), and loads it into each fresh context (``JS_ReadObject`` +
``JS_EvalFunction``, ~0.15 ms). Each context still gets its own closures and state: only the
immutable bytecode is reused.

**Out-of-memory errors that are `null`.** When the heap is so full that the engine cannot even
allocate its "out of memory" error, it throws ``null``. A rejection with reason ``null`` while
the heap is at its limit (``JS_ComputeMemoryUsage``, measured in the tracker callback, before the
failing frame's memory is freed) is recorded, so the run fails as ``limit="memory"`` and not as
a script that threw ``null``.

**Swallowed out-of-memory errors.** When the heap is exhausted while the engine queues a
promise reaction, it drops the reaction and leaves the exception pending on the context (the
awaiting code would then look like it awaits forever). ``JS_HasException`` after a drain tells
the two apart, so the run fails as ``limit="memory"``, not as "never settled".

This reads private memory layouts of the binding (``_quickjs.Context`` = PyObject_HEAD,
JSRuntime*, JSContext*; ``_quickjs.Object`` = PyObject_HEAD, RuntimeData*, JSValue), so it is
enabled only for the exact binding version it was written against, on 64-bit little-endian
CPython, and every pointer read is cross-checked before use. Otherwise it stays off and
unhandled rejections are simply not reported (documented behaviour, never a crash).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import platform
import sys
from typing import Any

_BINDING_VERSION = "0.17.0.2"
_ENGINE_VERSION = b"0.17.0"
_HEAD = 16  # sizeof(PyObject_HEAD) on 64-bit CPython without Py_TRACE_REFS
_TAG_BOOL = 1
_TAG_NULL = 2
_TAG_UNDEFINED = 3
_TAG_EXCEPTION = 6
_TAG_OBJECT = -1
_EVAL_COMPILE_ONLY = 1 << 5
_OBJ_BYTECODE = 1 << 0
#: ``JSMemoryUsage`` is a struct of int64 counters (26 today); room to spare.
_MEMORY_USAGE_FIELDS = 64
#: A ``null`` rejection with the heap at least this full is the engine's out-of-memory.
_HEAP_FULL = 0.9
#: The cached prelude stores its dispatch function here; the driver takes it and deletes it
#: before any user code exists.
DISPATCH_GLOBAL = "__kfDispatch"


class _JSValue(ctypes.Structure):
    # !JS_NAN_BOXING layout (64-bit): union of 8 bytes, then a 64-bit tag.
    _fields_ = (("u", ctypes.c_uint64), ("tag", ctypes.c_int64))


_TRACKER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, _JSValue, _JSValue, ctypes.c_bool,
                            ctypes.c_void_p)


def _platform_problem() -> str | None:
    if sys.implementation.name != "cpython":
        return "not CPython"
    if sys.maxsize <= 2**32 or sys.byteorder != "little":
        return "not a 64-bit little-endian platform"
    if hasattr(sys, "getobjects"):
        return "a Py_TRACE_REFS build"
    if platform.machine().lower() not in {"x86_64", "amd64", "aarch64", "arm64"}:
        return f"untested machine {platform.machine()}"
    try:
        version = importlib.metadata.version("quickjs-ng")
    except importlib.metadata.PackageNotFoundError:
        return "quickjs-ng metadata not found"
    if version != _BINDING_VERSION:
        return f"quickjs-ng {version} is not {_BINDING_VERSION}"
    return None


class EngineHooks:
    """One per worker process; attached to each fresh context in turn."""

    def __init__(self) -> None:
        self.problem = _platform_problem()
        self._lib: Any = None
        self._fn = _JSValue(0, _TAG_UNDEFINED)
        self._recorder: Any = None  # keeps the JS function (and its JSValue) alive
        self._js_context: int | None = None
        self._prelude: bytes | None = None
        self._callback = _TRACKER(self._on_rejection)
        #: Set when a promise rejected with ``null`` while the heap was at its limit.
        self.out_of_memory_seen = False
        if self.problem is None:
            self.problem = self._load()

    @property
    def available(self) -> bool:
        return self.problem is None

    def _load(self) -> str | None:
        try:
            import _quickjs

            lib = ctypes.CDLL(_quickjs.__file__)
            lib.JS_GetVersion.restype = ctypes.c_char_p
            if lib.JS_GetVersion() != _ENGINE_VERSION:
                return "unexpected engine version"
            lib.JS_GetRuntime.argtypes = [ctypes.c_void_p]
            lib.JS_GetRuntime.restype = ctypes.c_void_p
            lib.JS_IsFunction.argtypes = [ctypes.c_void_p, _JSValue]
            lib.JS_IsFunction.restype = ctypes.c_bool
            lib.JS_SetHostPromiseRejectionTracker.argtypes = [
                ctypes.c_void_p, _TRACKER, ctypes.c_void_p]
            lib.JS_SetHostPromiseRejectionTracker.restype = None
            lib.JS_Call.argtypes = [ctypes.c_void_p, _JSValue, _JSValue, ctypes.c_int,
                                    ctypes.POINTER(_JSValue)]
            lib.JS_Call.restype = _JSValue
            lib.JS_FreeValue.argtypes = [ctypes.c_void_p, _JSValue]
            lib.JS_FreeValue.restype = None
            lib.JS_GetException.argtypes = [ctypes.c_void_p]
            lib.JS_GetException.restype = _JSValue
            lib.JS_HasException.argtypes = [ctypes.c_void_p]
            lib.JS_HasException.restype = ctypes.c_bool
            lib.JS_Eval.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                    ctypes.c_char_p, ctypes.c_int]
            lib.JS_Eval.restype = _JSValue
            lib.JS_WriteObject.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                           _JSValue, ctypes.c_int]
            lib.JS_WriteObject.restype = ctypes.c_void_p
            lib.JS_ReadObject.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                          ctypes.c_int]
            lib.JS_ReadObject.restype = _JSValue
            lib.JS_EvalFunction.argtypes = [ctypes.c_void_p, _JSValue]
            lib.JS_EvalFunction.restype = _JSValue
            lib.JS_UpdateStackTop.argtypes = [ctypes.c_void_p]
            lib.JS_UpdateStackTop.restype = None
            lib.js_free.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.js_free.restype = None
            lib.JS_ComputeMemoryUsage.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.JS_ComputeMemoryUsage.restype = None
        except (OSError, AttributeError, ImportError) as exc:
            return f"cannot load the engine's symbols: {exc}"
        self._lib = lib
        return None

    def _pointers(self, context: Any) -> tuple[int, int] | None:
        """``(JSRuntime*, JSContext*)`` of a ``quickjs.Context``, cross-checked."""
        if self._lib is None:
            return None
        runtime = ctypes.c_void_p.from_address(id(context) + _HEAD).value
        js_context = ctypes.c_void_p.from_address(id(context) + _HEAD + 8).value
        if not runtime or not js_context or self._lib.JS_GetRuntime(js_context) != runtime:
            self.problem = "the binding's memory layout is not the expected one"
            self._lib = None
            return None
        return runtime, js_context

    def _clear_exception(self, js_context: int) -> None:
        self._lib.JS_FreeValue(js_context, self._lib.JS_GetException(js_context))

    def prepare_prelude(self, context: Any, source: str) -> None:
        """Compile ``source`` (which must assign :data:`DISPATCH_GLOBAL`) in a scratch context."""
        pointers = self._pointers(context)
        if pointers is None:
            return
        lib, (_, js_context) = self._lib, pointers
        data = source.encode()
        fn = lib.JS_Eval(js_context, data, len(data), b"<input>", _EVAL_COMPILE_ONLY)
        if fn.tag == _TAG_EXCEPTION:
            self._clear_exception(js_context)
            return
        size = ctypes.c_size_t()
        buffer = lib.JS_WriteObject(js_context, ctypes.byref(size), fn, _OBJ_BYTECODE)
        lib.JS_FreeValue(js_context, fn)
        if not buffer:
            self._clear_exception(js_context)
            return
        self._prelude = ctypes.string_at(buffer, size.value)
        lib.js_free(js_context, buffer)

    def load_prelude(self, context: Any) -> bool:
        """Run the compiled prelude in a fresh context; False if the caller must eval it."""
        pointers = self._pointers(context) if self._prelude is not None else None
        if pointers is None or self._prelude is None:
            return False
        lib, (runtime, js_context) = self._lib, pointers
        lib.JS_UpdateStackTop(runtime)
        fn = lib.JS_ReadObject(js_context, self._prelude, len(self._prelude), _OBJ_BYTECODE)
        if fn.tag == _TAG_EXCEPTION:
            self._clear_exception(js_context)
            return False
        result = lib.JS_EvalFunction(js_context, fn)  # takes ownership of fn
        if result.tag == _TAG_EXCEPTION:
            self._clear_exception(js_context)
            return False
        lib.JS_FreeValue(js_context, result)
        return True

    def attach(self, context: Any, recorder: Any) -> bool:
        """Track rejections of ``context`` (a fresh ``quickjs.Context``) into ``recorder``."""
        pointers = self._pointers(context)
        if pointers is None:
            return False
        runtime, js_context = pointers
        owner = ctypes.c_void_p.from_address(id(recorder) + _HEAD).value
        value = _JSValue.from_buffer_copy(ctypes.string_at(id(recorder) + _HEAD + 8, 16))
        if (
            owner != id(context)
            or value.tag != _TAG_OBJECT
            or not self._lib.JS_IsFunction(js_context, value)
        ):
            self.problem = "the binding's memory layout is not the expected one"
            self._lib = None
            return False
        self._recorder = recorder
        self._fn = value
        self._js_context = js_context
        self.out_of_memory_seen = False
        self._lib.JS_SetHostPromiseRejectionTracker(runtime, self._callback, None)
        return True

    def pending_exception(self) -> bool:
        """Whether the engine left an exception pending (see the module docstring)."""
        if self._lib is None or self._js_context is None:
            return False
        return bool(self._lib.JS_HasException(self._js_context))

    def _heap_full(self, ctx: int) -> bool:
        usage = (ctypes.c_int64 * _MEMORY_USAGE_FIELDS)()
        self._lib.JS_ComputeMemoryUsage(self._lib.JS_GetRuntime(ctx), usage)
        size, limit = usage[0], usage[1]  # malloc_size, malloc_limit
        return limit > 0 and size >= limit * _HEAP_FULL

    def detach(self) -> None:
        """Forget the context (it is about to be freed with its runtime)."""
        self._recorder = None
        self._js_context = None
        self._fn = _JSValue(0, _TAG_UNDEFINED)

    def _on_rejection(self, ctx: int, promise: _JSValue, reason: _JSValue, handled: bool,
                      _opaque: int) -> None:
        # Runs inside the engine; must never raise. The recorder is prelude code that uses
        # only captured primordials, so no script code runs here.
        try:
            lib = self._lib
            if lib is None or self._recorder is None:
                return
            if reason.tag == _TAG_NULL and not handled and self._heap_full(ctx):
                self.out_of_memory_seen = True
            argv = (_JSValue * 3)(promise, reason, _JSValue(1 if handled else 0, _TAG_BOOL))
            result = lib.JS_Call(ctx, self._fn, _JSValue(0, _TAG_UNDEFINED), 3, argv)
            if result.tag == _TAG_EXCEPTION:
                # Out of memory or the CPU interrupt: drop this record; an interrupt fires
                # again at the engine's next check, so nothing is lost but the record.
                lib.JS_FreeValue(ctx, lib.JS_GetException(ctx))
            else:
                lib.JS_FreeValue(ctx, result)
        except BaseException:  # noqa: S110 - a C callback cannot propagate anything
            pass
