"""The fused per-token int8 linear (`row_int8_linear.cpp`), built once per machine and loaded as a torch op.

Why a compiled op: around each of the int8 MiniLM's 36 GEMMs, `RowInt8Linear`'s Python forward runs ~12
element-wise ops (quantize each token row, then dequantize and add the bias), each a pass over memory plus
its dispatch: ~23% of the encoder's time at streamed batch sizes (torch profiler, 1 thread, EPYC-512). The
op does the same arithmetic in two passes, with outputs equal to the last bit, so it only changes speed.

It is built with the system C++ compiler (`g++`) against the installed torch, for this CPU
(``-march=native``), into ``~/.cache/streamsense/kernels`` under a name that encodes the source, torch's
version and the CPU's flags, so a changed machine or torch gets its own build. `streamsense models build`
builds it; a process that finds no build compiles it on first use (~10 s on EPYC-512). Without a compiler, or
if the build fails, `RowInt8Linear` runs its torch ops (same results, slower) and a warning says why.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("row_int8_linear.cpp")
KERNEL_DIR = Path("~/.cache/streamsense/kernels")
BUILD_TIMEOUT_S = 300
# -ffp-contract=off: no fused multiply-adds, so each float operation rounds as torch's does (bit-equal outputs);
# -fno-strict-aliasing: the dequantization writes floats over the int32 GEMM result it reads, in place
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-strict-aliasing", "-fopenmp-simd", "-std=c++17",
         "-fPIC", "-shared")
_loading = threading.Lock()  # one build and one load per process, whichever thread asks first


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path() -> Path:
    """Where this machine's build lives: one file per (source, compiler flags, torch version, CPU flags), i.e.
    per everything that decides the binary, so a changed input never loads a stale build."""
    inputs = (SOURCE.read_bytes(), " ".join(FLAGS).encode(), torch.__version__.encode(), _cpu_flags().encode())
    key = hashlib.sha256(b"\0".join(inputs)).hexdigest()[:16]
    return KERNEL_DIR.expanduser() / f"row_int8_linear-{key}.so"


def build(out: Path, compiler: str | None = None) -> None:
    """Compile the op into ``out`` (written beside it, then renamed: concurrent builders never see half a file)
    with ``compiler`` (default: ``g++``, else ``c++``, from PATH)."""
    from torch.utils import cpp_extension

    compiler = compiler or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler (g++) on PATH")
    torch_lib = Path(torch.__file__).parent / "lib"
    abi = int(torch.compiled_with_cxx11_abi())
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        partial = Path(tmp) / out.name
        command = [
            compiler, *FLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            *(f"-I{p}" for p in cpp_extension.include_paths()),
            str(SOURCE), "-o", str(partial),
            f"-L{torch_lib}", "-lc10", "-ltorch", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-2000:]}")
        partial.rename(out)


@functools.cache
def fused_linear_available() -> bool:
    """True once the op is loaded (building it first if this machine has no build yet); False, with one
    warning, where it cannot be built or loaded."""
    path = library_path()
    with _loading:
        try:
            if not path.is_file():
                log.info("building the fused int8 linear op for this CPU (once, ~10-30 s): %s", path)
                build(path)
            torch.ops.load_library(str(path))
        except Exception as exc:  # no compiler, headers or disk: the Python ops give the same results
            log.warning("int8 linears run as torch ops (fused op unavailable: %s: %s)", type(exc).__name__, exc)
            return False
    return True
