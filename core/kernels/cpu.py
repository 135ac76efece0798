"""Fast CPU paths: our AVX2 C++ kernels (int8_cpu.cpp) and torch._int_mm.

The C++ file is compiled once with the system C++ compiler into a shared library kept
in a cache folder (keyed by a hash of the source, the flags and the compiler), then
called through ctypes with the tensors' data pointers. Without a compiler, without
AVX2/FMA/F16C, or with ``COMPRESSLAB_NO_NATIVE=1``, :func:`native_available` is False
and :mod:`core.kernels.ops` uses the plain-torch paths instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.quant.actquant import quantize_per_tensor_static, quantize_per_token

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("int8_cpu.cpp")
FLAGS = ("-O3", "-std=c++17", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-shared", "-fPIC")
# Added where the CPU has them: the weight-only kernels' AVX-512 versions are compiled in
# (the AVX2 ones stay for every other CPU); the build key includes them, so a cache
# folder shared by several machines keeps one library per instruction set.
AVX512_FLAGS = {"avx512f": "-mavx512f", "avx512bw": "-mavx512bw", "avx512vl": "-mavx512vl"}
# With AVX-512, VNNI too where the CPU has it: the native W8A8 kernel then multiplies
# bytes with vpdpbusd (64 products an instruction) instead of vpmaddwd on int16 (16).
VNNI_FLAG = {"avx512_vnni": "-mavx512vnni"}
ABI_VERSION = 5
_REQUIRED_CPU_FLAGS = ("avx2", "fma", "f16c")

_i64, _f32, _int = ctypes.c_int64, ctypes.c_float, ctypes.c_int
_p = ctypes.c_void_p


def cache_dir() -> Path:
    env = os.environ.get("COMPRESSLAB_KERNEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "compresslab" / "kernels"


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel needs, as the OS reports them (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_supported() -> bool:
    return all(f in cpu_flags() for f in _REQUIRED_CPU_FLAGS)


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def compile_flags() -> tuple[str, ...]:
    """FLAGS, plus the AVX-512 ones where this CPU has all of AVX512_FLAGS."""
    have = cpu_flags()
    extra = tuple(AVX512_FLAGS.values()) if all(f in have for f in AVX512_FLAGS) else ()
    if extra and all(f in have for f in VNNI_FLAG) and not _env_off("COMPRESSLAB_NO_VNNI"):
        extra += tuple(VNNI_FLAG.values())
    if _env_off("COMPRESSLAB_NO_AVX512"):
        extra = ()
    return (*FLAGS, *extra)


def _env_off(name: str) -> bool:
    return os.environ.get(name, "") in {"1", "true", "yes"}


def _build_key(cxx: str, source: Path = SOURCE, flags: tuple[str, ...] | None = None) -> str:
    try:
        version = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    flags = compile_flags() if flags is None else flags
    raw = source.read_bytes() + " ".join(flags).encode() + version.encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def _compile(
    cxx: str,
    target: Path,
    source: Path = SOURCE,
    flags: tuple[str, ...] | None = None,
    libs: tuple[str, ...] = (),
) -> None:
    """Compile to a temporary name, then rename: concurrent workers never load half a file.
    ``libs`` come after the source (linkers drop a library named before its first use)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    flags = compile_flags() if flags is None else flags
    try:
        subprocess.run(
            [cxx, *flags, str(source), *libs, "-o", tmp],
            check=True,
            capture_output=True,
            timeout=300,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _declare(lib: ctypes.CDLL) -> None:
    lib.cl_abi_version.restype = _int
    lib.cl_vector_bits.restype = _int
    lib.cl_quantize_rows.argtypes = [_p, _i64, _i64, _f32, _p, _p, _int]
    lib.cl_quantize_rows_i8.argtypes = [_p, _i64, _i64, _f32, _p, _p, _int]
    lib.cl_int32_epilogue.argtypes = [_p, _p, _p, _p, _p, _i64, _i64, _int]
    lib.cl_w8a8_linear.argtypes = [_p, _p, _p, _p, _p, _p, _p, _i64, _i64, _i64, _int]
    lib.cl_w8a8_linear_f32.argtypes = [_p, _f32, _p, _p, _p, _p, _i64, _i64, _i64, _int, _int]
    lib.cl_read_bytes.argtypes = [_p, _i64, _int]
    lib.cl_read_bytes.restype = _i64
    lib.cl_w8a8_vnni.restype = _int
    lib.cl_llm_int8_linear.restype = _i64
    lib.cl_llm_int8_linear.argtypes = [_p, _f32, *(_p,) * 4, *(_i64,) * 3, _int, _int]
    lib.cl_outlier_columns.restype = _i64
    lib.cl_outlier_columns.argtypes = [_p, _i64, _i64, _f32, _p]
    lib.cl_llm_int8_split.argtypes = [_p, _i64, _i64, _p, _i64, _p, _p, _i64, _p, _p, _p, _int]
    lib.cl_w8a8_scratch_needed.argtypes = [_i64, _i64]
    lib.cl_w8a8_scratch_needed.restype = _i64
    lib.cl_int8_weight_only_linear.argtypes = [_p, _p, _p, _p, _p, _i64, _i64, _i64, _int]
    lib.cl_dequantize_int8.argtypes = [_p, _p, _p, _i64, _i64, _int]
    lib.cl_dequantize_int4.argtypes = [_p, _p, _p, _p, _i64, _i64, _i64, _i64, _int]
    lib.cl_gptq_columns.argtypes = [*(_p,) * 4, *(_i64,) * 4, *(_p,) * 3, _f32, _f32, _int]
    lib.cl_int4_weight_only_linear.argtypes = [
        *(_p,) * 6,
        *(_i64,) * 5,
        _int,
    ]


@functools.cache
def load_library() -> ctypes.CDLL | None:
    """The compiled kernel library, or None (with the reason logged) where it cannot run."""
    if os.environ.get("COMPRESSLAB_NO_NATIVE", "") in {"1", "true", "yes"}:
        return None
    if not cpu_supported():
        log.info("native int8 kernels off: this CPU lacks one of %s", _REQUIRED_CPU_FLAGS)
        return None
    cxx = _compiler()
    if cxx is None:
        log.warning("native int8 kernels off: no C++ compiler found; using plain torch")
        return None
    target = cache_dir() / f"int8_cpu_{_build_key(cxx)}.so"
    try:
        if not target.is_file():
            log.info("compiling %s -> %s (once)", SOURCE.name, target)
            _compile(cxx, target)
        lib = ctypes.CDLL(str(target))
        _declare(lib)
        if lib.cl_abi_version() != ABI_VERSION:
            raise RuntimeError(f"ABI {lib.cl_abi_version()} != {ABI_VERSION}")
        return lib
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        log.warning("native int8 kernels off: %s %s", e, detail.decode(errors="replace")[-500:])
        return None


# ---------------------------------------------------------------- the kernels as torch ops

TORCH_OPS_SOURCE = Path(__file__).with_name("torch_ops.cpp")


def torch_ops_flags() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """How torch_ops.cpp is built: (compiler flags, libraries), against this torch's
    headers and libraries, with its C++ ABI (torch.utils.cpp_extension's paths, without
    importing it)."""
    root = Path(torch.__file__).resolve().parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = (
        "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{root / 'include'}", f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
    )  # fmt: skip
    return flags, (f"-L{root / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{root / 'lib'}")


@functools.cache
def torch_ops() -> Any | None:
    """``torch.ops.compresslab_native``: the native kernels as torch operators (compiled
    once per torch version, about 10 s), or None where they cannot be built or loaded
    (the ctypes calls serve then), or ``COMPRESSLAB_NO_TORCH_OPS=1``."""
    cxx = _compiler()
    if _env_off("COMPRESSLAB_NO_TORCH_OPS") or cxx is None:
        return None
    flags, libs = torch_ops_flags()
    key = _build_key(cxx, TORCH_OPS_SOURCE, (*flags, *libs, torch.__version__))
    target = cache_dir() / f"torch_ops_{key}.so"
    try:
        if not target.is_file():
            log.info("compiling %s -> %s (once)", TORCH_OPS_SOURCE.name, target)
            _compile(cxx, target, TORCH_OPS_SOURCE, flags, libs)
        torch.ops.load_library(str(target))
        ops = torch.ops.compresslab_native
        ops.set_policy(DECODE_M, DECODE_PARALLEL_MIN_WEIGHTS, PARALLEL_MIN_WORK)
        return ops
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        log.info("native torch ops off (ctypes calls serve): %s %s", e, detail[-300:])
        return None


_OPS_KERNELS: list[ctypes.CDLL | None] = [None]  # the library torch_ops' kernels come from


def _ops() -> Any | None:
    """The torch ops, their kernels those of the library loaded now (tests load another
    instruction set's), or None."""
    lib = load_library()
    ops = torch_ops() if lib is not None else None
    if ops is not None and _OPS_KERNELS[0] is not lib:
        names = ("cl_int8_weight_only_linear", "cl_int4_weight_only_linear")
        names += ("cl_w8a8_linear_f32", "cl_llm_int8_linear")
        ops.set_kernels(*[ctypes.cast(getattr(lib, f), ctypes.c_void_p).value for f in names])
        _OPS_KERNELS[0] = lib
    return ops


@functools.cache
def build_id() -> str:
    """Which kernel library runs here: the hash of its source, flags and compiler ("none"
    without one). Part of a tuned table's key: new kernels are timed again."""
    cxx = _compiler()
    return _build_key(cxx) if native_available() and cxx else "none"


def native_available() -> bool:
    return load_library() is not None


def native_vector_bits() -> int:
    """512 where the weight-only kernels run with AVX-512, 256 (AVX2), 0 (no native)."""
    lib = load_library()
    return 0 if lib is None else int(lib.cl_vector_bits())


def native_w8a8_vnni() -> bool:
    """Whether the native W8A8 kernel multiplies bytes with AVX-512 VNNI here."""
    lib = load_library()
    return lib is not None and bool(lib.cl_w8a8_vnni())


def native_w8a8_kernel() -> str:
    """Which native W8A8 kernel runs here: "avx512-vnni", "avx2-madd" or "none"."""
    if not native_available():
        return "none"
    return "avx512-vnni" if native_w8a8_vnni() else "avx2-madd"


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _f32c(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.detach().float().contiguous()


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a contiguous ``dtype`` tensor, without a dispatcher call when it is one
    already (decode calls every linear once per token: each call costs microseconds)."""
    if t.dtype == dtype and t.is_contiguous():
        return t
    return t.to(dtype).contiguous()


def _lib() -> ctypes.CDLL:
    lib = load_library()
    if lib is None:
        raise RuntimeError("native kernels are not available on this machine")
    return lib


def _rows_and_out(x: torch.Tensor, n: int) -> tuple[torch.Tensor, int, int, torch.Tensor]:
    """``x`` (..., K) as contiguous float32, its rows M (all leading dims), K, and the
    (..., N) float32 output: the native calls take batched inputs as they are, without
    the two reshapes around them (about 1 us each, as much as a small layer's kernel)."""
    x = _f32c(x)
    k = x.shape[-1]
    return x, x.numel() // max(k, 1), k, torch.empty((*x.shape[:-1], n), dtype=torch.float32)


def quantize_rows(
    x2: torch.Tensor, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Native per-row (or static) int8 quantization; codes come back as int16 (M, K)."""
    x2 = _f32c(x2)
    m, k = x2.shape
    q = torch.empty((m, k), dtype=torch.int16)
    s = torch.empty(m, dtype=torch.float32)
    st = 0.0 if static_scale is None else float(static_scale)
    _lib().cl_quantize_rows(
        x2.data_ptr(), m, k, st, q.data_ptr(), s.data_ptr(), _threads(16 * m * k)
    )
    return q, s


PARALLEL_MIN_WORK = 1 << 21  # multiply-adds below which one thread is faster


def _threads(work: int = PARALLEL_MIN_WORK) -> int:
    """torch's thread count for big calls; one thread for small ones, whose OpenMP fork and
    barrier cost more than they save (and stall whenever a sibling thread is descheduled
    on a busy machine)."""
    return max(1, torch.get_num_threads()) if work >= PARALLEL_MIN_WORK else 1


DECODE_M = 4  # up to this many rows a matmul streams its weight once: memory-bound
DECODE_PARALLEL_MIN_WEIGHTS = 1 << 18  # weights from which a decode call uses every thread


def _matmul_threads(m: int, n: int, k: int) -> int:
    """Threads for an (m, k) x (k, n) kernel: by multiply-adds, except decode-sized calls,
    which are bound by reading the weight: from 256 Ki weights (a 512 x 512 layer) every
    core's share of the memory bandwidth pays for the fork (measured here: a 768 x 768
    int4 layer at M = 1, streamed from memory, 28 us on one thread, 16 us on two)."""
    if m <= DECODE_M and n * k >= DECODE_PARALLEL_MIN_WEIGHTS:
        return max(1, torch.get_num_threads())
    return _threads(m * n * k)


def w8a8_linear_native(
    x2: torch.Tensor,
    w_int8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    act_mode: str,
    x_scale: torch.Tensor | None,
) -> torch.Tensor:
    """x2 (..., K) float -> (..., N) float32: activation quantization and the native integer
    GEMM (VNNI bytes or AVX2 int16 madds; exact int32 sums) with its dequantize + bias
    epilogue, in one native call."""
    n = w_int8.shape[0]
    static = float(x_scale) if act_mode == "static" and x_scale is not None else 0.0
    if (ops := _ops()) is not None:
        return ops.w8a8_linear(x2, static, w_int8, w_scale, bias)
    x2, m, k, out = _rows_and_out(x2, n)
    w, ws, b = _int8_rows(w_int8, w_scale, bias)
    _lib().cl_w8a8_linear_f32(
        x2.data_ptr(),
        static,
        w.data_ptr(),
        ws.data_ptr(),
        _ptr(b),
        out.data_ptr(),
        m,
        n,
        k,
        _threads(16 * m * k),
        _matmul_threads(m, n, k),
    )
    return out


def _int8_rows(w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """An int8-rows weight's side of the int8 kernels' arguments: weight, scales, bias."""
    return _as(w_int8, torch.int8), _f32c(w_scale), _f32c(bias)


def llm_int8_native(
    x2: torch.Tensor,
    threshold: float,
    w_int8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """LLM.int8() in one native call (needs :func:`native_w8a8_vnni`): the columns of
    ``x2`` (..., K) with some |x| > ``threshold`` are multiplied in float with their
    dequantized weight columns, summed in the same pass over the weight as the W8A8
    product of every other column (per-token scales, outliers zeroed)."""
    if (ops := _ops()) is not None:
        return ops.llm_int8(x2, float(threshold), w_int8, w_scale, bias)
    n = w_int8.shape[0]
    x, m, k, out = _rows_and_out(x2, n)
    w, ws, b = _int8_rows(w_int8, w_scale, bias)
    done = _lib().cl_llm_int8_linear(
        x.data_ptr(),
        float(threshold),
        w.data_ptr(),
        ws.data_ptr(),
        _ptr(b),
        out.data_ptr(),
        m,
        n,
        k,
        _threads(16 * m * k),
        _matmul_threads(m, n, k),
    )
    if done < 0:
        raise RuntimeError("the fused LLM.int8() kernel needs AVX-512 VNNI")
    return out


def llm_int8_split(
    x2: torch.Tensor, threshold: float, w_int8: torch.Tensor, w_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """LLM.int8()'s split for paths whose int8 product runs elsewhere, in two native calls:
    (x2 with its outlier columns zeroed, their values (M, C), the weight's columns
    dequantized (N, C)); None where no column of ``x2`` (M, K) has |x| > ``threshold``."""
    x = _f32c(x2)
    m, k = x.shape
    n = w_int8.shape[0]
    lib = _lib()
    cols = torch.empty(k, dtype=torch.int64)
    c = lib.cl_outlier_columns(x.data_ptr(), m, k, float(threshold), cols.data_ptr())
    if c == 0:
        return None
    xr = torch.empty((m, k), dtype=torch.float32)
    xo = torch.empty((m, c), dtype=torch.float32)
    wo = torch.empty((n, c), dtype=torch.float32)
    w, ws, _ = _int8_rows(w_int8, w_scale, None)
    lib.cl_llm_int8_split(
        x.data_ptr(), m, k, cols.data_ptr(), c, w.data_ptr(), ws.data_ptr(), n,
        xr.data_ptr(), xo.data_ptr(), wo.data_ptr(), _threads(n * c * 16),
    )  # fmt: skip
    return xr, xo, wo


def w8a8_gemm_native(
    q: torch.Tensor,
    x_scale: torch.Tensor,
    w_int8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """The integer GEMM alone on already quantized int16 codes (M, K) (for tests/bench)."""
    lib = _lib()
    m, k = q.shape
    n = w_int8.shape[0]
    ws, b, xs = _f32c(w_scale), _f32c(bias), _f32c(x_scale.reshape(-1))
    out = torch.empty((m, n), dtype=torch.float32)
    scratch = torch.empty((m, n), dtype=torch.int32) if lib.cl_w8a8_scratch_needed(m, k) else None
    lib.cl_w8a8_linear(
        q.contiguous().data_ptr(),
        xs.data_ptr(),
        w_int8.contiguous().data_ptr(),
        ws.data_ptr(),
        _ptr(b),
        _ptr(scratch),
        out.data_ptr(),
        m,
        n,
        k,
        _matmul_threads(m, n, k),
    )
    return out


def _raw(call: tuple) -> list:
    """A kernel call's arguments for ctypes: tensors as their data pointers (None: null)."""
    return [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in call]


def _int8_weight_only_call(
    x2: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> tuple[Callable[..., None], tuple, torch.Tensor]:
    """The int8 weight-only C kernel, its arguments (tensors converted, threads last) and
    the output they write."""
    n = w_int8.shape[0]
    x2, m, k, out = _rows_and_out(x2, n)
    call = (x2, *_int8_rows(w_int8, w_scale, bias), out, m, n, k, _matmul_threads(m, n, k))
    return _lib().cl_int8_weight_only_linear, call, out


def int8_weight_only_native(
    x2: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    if (ops := _ops()) is not None:
        return ops.int8_weight_only(x2, w_int8, w_scale, bias)
    fn, call, out = _int8_weight_only_call(x2, w_int8, w_scale, bias)
    fn(*_raw(call))
    return out


INT4_GROUP_MULTIPLE = 32  # the native int4 kernel reads 32 codes (16 bytes) per step


def _int4_weight_only_call(
    x2: torch.Tensor,
    w_packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
) -> tuple[Callable[..., None], tuple, torch.Tensor]:
    """The int4 weight-only C kernel, its arguments and the output they write."""
    if group_size % INT4_GROUP_MULTIPLE:
        raise ValueError(
            f"the native int4 kernel needs a group size that is a multiple of {INT4_GROUP_MULTIPLE}"
        )
    n, half = w_packed.shape
    x2, m, k, out = _rows_and_out(x2, n)
    w, sc = _as(w_packed, torch.uint8), _as(scale, torch.float16)
    z, b = _as(zero, torch.uint8), _f32c(bias)
    call = (x2, w, sc, z, b, out, m, n, k, half * 2, int(group_size), _matmul_threads(m, n, k))
    return _lib().cl_int4_weight_only_linear, call, out


def int4_weight_only_native(
    x2: torch.Tensor,
    w_packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    if group_size % INT4_GROUP_MULTIPLE == 0 and (ops := _ops()) is not None:
        return ops.int4_weight_only(x2, w_packed, scale, zero, int(group_size), bias)
    fn, call, out = _int4_weight_only_call(x2, w_packed, scale, zero, group_size, bias)
    fn(*_raw(call))
    return out


def read_bytes_call(nbytes: int) -> Callable[[], int]:
    """One read over a buffer of ``nbytes`` with every thread, each a contiguous part, as
    the kernels read their weights: the benchmark's bytes ceiling."""
    buf = torch.ones(nbytes, dtype=torch.uint8)
    fn, threads = _lib().cl_read_bytes, max(1, torch.get_num_threads())

    def run(keep: torch.Tensor = buf) -> int:  # keep: the buffer lives as long as run
        return fn(keep.data_ptr(), nbytes, threads)

    return run


def weight_only_kernel_call(op: str, x2: torch.Tensor, *args: object) -> Callable[[], torch.Tensor]:
    """The native weight-only kernel alone, for the benchmark: every argument prepared
    (converted, output allocated) once, so each call of the returned function runs just
    the C kernel (and returns its output, the same tensor each time), without the Python
    around it (which costs tens of microseconds when the interpreter's own memory has
    left the cache)."""
    builders = {
        "int8_weight_only_linear": _int8_weight_only_call,
        "int4_weight_only_linear": _int4_weight_only_call,
    }
    if op not in builders:
        raise ValueError(f"no weight-only kernel for {op!r}")
    fn, call, out = builders[op](x2, *args)
    raw = _raw(call)

    def run(keep: tuple = call) -> torch.Tensor:  # keep: the tensors live as long as run
        fn(*raw)
        return out

    return run


def _out_buffer(out: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=torch.float32)
    if tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 tensor of shape {shape}")
    return out


def dequantize_int8_native(
    w_int8: torch.Tensor, w_scale: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """(N, K) float32 = w_int8 * w_scale[:, None], in one parallel pass (into ``out``)."""
    w, ws = w_int8.contiguous(), _f32c(w_scale)
    n, k = w.shape
    out = _out_buffer(out, (n, k))
    _lib().cl_dequantize_int8(w.data_ptr(), ws.data_ptr(), out.data_ptr(), n, k, _threads(n * k))
    return out


def gptq_columns(
    W1: torch.Tensor,
    Q1: torch.Tensor,
    E1: torch.Tensor,
    H1: torch.Tensor,
    i0: int,
    i1: int,
    s: torch.Tensor,
    z: torch.Tensor | None,
    pruned: torch.Tensor | None,
    qmin: float,
    qmax: float,
) -> None:
    """GPTQ's column loop over columns i0..i1-1 of a transposed block, in place (see
    cl_gptq_columns; core/quant/gptq.py runs the same loop in torch where this is off).
    W1, Q1, E1: (b, n) float32 contiguous; H1 (b, b); s, z (n,); pruned (b, n) bool."""
    b, n = W1.shape
    for t in (W1, Q1, E1):
        assert t.dtype == torch.float32 and t.is_contiguous() and t.shape == (b, n)
    h, sc = _f32c(H1), _f32c(s)
    zc = _f32c(z)
    pr = None if pruned is None else pruned.contiguous().view(torch.uint8)
    _lib().cl_gptq_columns(
        W1.data_ptr(),
        Q1.data_ptr(),
        E1.data_ptr(),
        h.data_ptr(),
        b,
        n,
        i0,
        i1,
        sc.data_ptr(),
        _ptr(zc),
        _ptr(pr),
        qmin,
        qmax,
        _threads((i1 - i0) * b * n // 2),
    )


def dequantize_int4_native(
    w_packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    group_size: int,
    k: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, k) float32 = (code - zero) * scale, as ref.dequantize_int4, in one parallel pass
    (into ``out``)."""
    w, sc = w_packed.contiguous(), scale.to(torch.float16).contiguous()
    z = zero.to(torch.uint8).contiguous()
    n, half = w.shape
    out = _out_buffer(out, (n, k))
    _lib().cl_dequantize_int4(
        w.data_ptr(),
        sc.data_ptr(),
        z.data_ptr(),
        out.data_ptr(),
        n,
        k,
        half * 2,
        group_size,
        _threads(n * k),
    )
    return out


# ---------------------------------------------------------------- torch._int_mm

INT_MM_MIN_M = 17  # CUDA's _int_mm needs M > 16 and K, N multiples of 8
INT_MM_MULTIPLE = 8


@functools.cache
def int_mm_takes_any_shape() -> bool:
    """Whether this torch's CPU ``_int_mm`` takes M = 1, 3 and K, N not multiples of 8
    exactly (torch >= 2.2 does; older builds had CUDA's limits); probed once."""
    a = torch.arange(-9, 12, dtype=torch.int8).reshape(3, 7)
    b = torch.arange(-17, 18, dtype=torch.int8).reshape(7, 5)
    try:
        got = torch._int_mm(a[:1], b)
        return bool(torch.equal(got.long(), a[:1].long() @ b.long()))
    except (RuntimeError, NotImplementedError):
        return False


def _int_mm_padded(q: torch.Tensor, w_int8: torch.Tensor) -> torch.Tensor:
    """q (M, K) int8 @ w_int8 (N, K).T -> int32 (M, N); zero rows and columns are added
    where this ``_int_mm`` needs them (zeros add nothing to the exact sums)."""
    m, k = q.shape
    n = w_int8.shape[0]
    if q.device.type == "cpu" and int_mm_takes_any_shape():
        return torch._int_mm(q, w_int8.t())
    kp = -k % INT_MM_MULTIPLE
    q = torch.nn.functional.pad(q, (0, kp, 0, max(INT_MM_MIN_M - m, 0) + (-m % INT_MM_MULTIPLE)))
    w = torch.nn.functional.pad(w_int8, (0, kp, 0, -n % INT_MM_MULTIPLE))
    return torch._int_mm(q, w.t())[:m, :n]


def quantize_per_token_fast(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """core.quant.actquant.quantize_per_token, bit for bit: int8 codes (M, K) and float32
    scales (M, 1), in one native pass where it runs, else torch with fewer temporaries."""
    if native_available():
        x = _f32c(x2)
        m, k = x.shape
        q = torch.empty((m, k), dtype=torch.int8)
        s = torch.empty((m, 1), dtype=torch.float32)
        _lib().cl_quantize_rows_i8(
            x.data_ptr(), m, k, 0.0, q.data_ptr(), s.data_ptr(), _threads(16 * m * k)
        )
        return q, s
    x = x2 if x2.dtype == torch.float32 else x2.float()
    scale = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True).div_(127.0)
    scale = torch.where(scale > 0, scale, 1.0)
    q = torch.div(x, scale).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


def int32_epilogue(
    acc: torch.Tensor,
    s: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    in_place: bool = False,
) -> torch.Tensor:
    """float(acc) * s (per row or one) * w_scale (per column) + bias, in ref's order;
    ``in_place``: the result reuses acc's memory (acc is consumed)."""
    m, n = acc.shape
    ws, b = _f32c(w_scale), _f32c(bias)
    if native_available() and acc.device.type == "cpu":
        xs = _f32c(s.reshape(-1).expand(m).contiguous())
        acc = acc.contiguous()
        # in place: each float32 result overwrites the int32 sum it came from (same size),
        # so no second (M, N) buffer is allocated and first touched
        out = acc.view(torch.float32) if in_place else torch.empty((m, n), dtype=torch.float32)
        _lib().cl_int32_epilogue(
            acc.data_ptr(),
            xs.data_ptr(),
            ws.data_ptr(),
            _ptr(b),
            out.data_ptr(),
            m,
            n,
            _threads(8 * m * n),
        )
        return out
    y = acc.float().mul_(s).mul_(ws.reshape(1, -1))
    return y if b is None else y.add_(b)


def w8a8_linear_int_mm(
    x2: torch.Tensor,
    w_int8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    act_mode: str,
    x_scale: torch.Tensor | None,
) -> torch.Tensor:
    """int8 x int8 -> int32 through ``torch._int_mm`` (oneDNN, VNNI / AMX where the CPU
    has them): per-token (or static) activation quantization before (one native pass),
    and the ``acc * x_scale * w_scale + bias`` epilogue after (one native pass)."""
    if act_mode == "static":
        assert x_scale is not None
        q = quantize_per_tensor_static(x2, x_scale)
        s = x_scale.float().reshape(1, 1)
    elif x2.device.type == "cpu":
        q, s = quantize_per_token_fast(x2)
    else:
        q, s = quantize_per_token(x2)
    acc = _int_mm_padded(q, w_int8)
    return int32_epilogue(acc, s, w_scale, bias, in_place=acc.is_contiguous())
