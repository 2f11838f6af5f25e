"""Build of the ``asrkd._C`` extension (fused temperature-softmax KL op).

The CPU kernel is always built.  The CUDA kernel is built when torch sees a GPU
or when ``FORCE_CUDA=1`` (so CI compiles it on a GPU-less machine).

Environment knobs:
  FORCE_CUDA=1             build the CUDA kernel even without a visible GPU
  ASRKD_NO_CUDA=1          never build the CUDA kernel
  CUDA_HOME                CUDA toolkit root; if unset it is derived from the nvcc on PATH,
                           following wrapper scripts to the real toolkit
  TORCH_CUDA_ARCH_LIST     e.g. "9.0"; required with FORCE_CUDA when no GPU is visible
  ASRKD_CPU_CAPABILITY     DEFAULT | AVX2 | AVX512: the x86 SIMD level the CPU kernel is
                           compiled for; defaults to the level torch uses on the build machine.
                           The package refuses (with a warning) to use an extension built
                           for a level the running CPU lacks.
"""

import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _real_cuda_home():
    """CUDA toolkit folder: CUDA_HOME, or the nvcc on PATH with wrapper scripts resolved.

    Some machines put a shell wrapper ``exec /usr/local/cuda-X/bin/nvcc "$@"`` on PATH;
    torch's own guess (dirname of dirname of that wrapper) is then wrong.
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        head = Path(nvcc).read_bytes()[:4096]
    except OSError:
        head = b""
    if head.startswith(b"#!"):
        m = re.search(rb"(/\S+/bin/nvcc)\b", head)
        if m:
            nvcc = os.path.realpath(m.group(1).decode())
    return str(Path(nvcc).parent.parent)


def _want_cuda():
    if os.environ.get("ASRKD_NO_CUDA") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    import torch

    return torch.cuda.is_available() and torch.version.cuda is not None


def _cpu_capability():
    cap = os.environ.get("ASRKD_CPU_CAPABILITY")
    if cap is None:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
    cap = cap.upper()
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return "DEFAULT"
    if cap not in ("DEFAULT", "AVX2", "AVX512"):
        raise SystemExit(f"ASRKD_CPU_CAPABILITY must be DEFAULT, AVX2 or AVX512, not {cap!r}")
    return cap


# Flags that make ATen's at::vec::Vectorized use the matching SIMD implementation,
# the same ones ATen compiles its own per-capability kernels with.
_CAP_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mlzcnt"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mlzcnt"],
}


def extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cap = _cpu_capability()
    sources = [
        str(p.relative_to(ROOT))
        for p in [
            ROOT / "csrc/kd_kl.cpp",
            *sorted((ROOT / "csrc/autograd").glob("*.cpp")),
            *sorted((ROOT / "csrc/cpu").glob("*.cpp")),
        ]
    ]
    # -fopenmp: at::parallel_for is a header template that only runs in parallel when the
    # including file is compiled with OpenMP (it binds to the libgomp torch already loaded).
    cxx = [
        "-O3",
        "-fopenmp",
        "-fvisibility=hidden",
        f"-DASRKD_CPU_CAPABILITY_{cap}",
        f"-DCPU_CAPABILITY={cap}",
        f"-DCPU_CAPABILITY_{cap}",
        *_CAP_FLAGS[cap],
    ]
    define_macros = []
    include_dirs = [str(ROOT / "csrc")]
    if _want_cuda():
        cuda_home = _real_cuda_home()
        if cuda_home is None:
            raise SystemExit("FORCE_CUDA=1 but no nvcc on PATH and CUDA_HOME unset")
        os.environ["CUDA_HOME"] = cuda_home
        import torch.utils.cpp_extension as ce

        ce.CUDA_HOME = cuda_home  # torch caches its guess at import time
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("FORCE_CUDA=1 without a GPU needs TORCH_CUDA_ARCH_LIST (e.g. 9.0)")
        # CUDA wheels (nvidia-*-cu13) keep headers such as cusparse.h here, not in the toolkit.
        for site in sys.path:
            inc = Path(site) / "nvidia" / "cu13" / "include"
            if inc.is_dir():
                include_dirs.append(str(inc))
                break
        sources += [str(p.relative_to(ROOT)) for p in sorted((ROOT / "csrc/cuda").glob("*.cu"))]
        define_macros.append(("ASRKD_WITH_CUDA", None))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        return [
            CUDAExtension(
                "asrkd._C",
                sources,
                include_dirs=include_dirs,
                define_macros=define_macros,
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                extra_link_args=["-fopenmp"],
            )
        ]
    return [
        CppExtension(
            "asrkd._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    ]


def cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=True)

    class BuildWithInfo(base):
        """Also writes _build_info.json beside the built module; asrkd.ops reads it before
        loading _C (an extension built for SIMD instructions this CPU lacks must not load)."""

        def run(self):
            super().run()
            import json

            import torch

            for ext in self.extensions:
                out = Path(self.get_ext_fullpath(ext.name)).parent / "_build_info.json"
                info = {
                    "cpu_capability": _cpu_capability(),
                    "cuda": "ASRKD_WITH_CUDA" in dict(ext.define_macros),
                    "torch": torch.__version__,
                }
                out.write_text(json.dumps(info) + "\n")

    return {"build_ext": BuildWithInfo}


# ASRKD_SKIP_EXT=1: install the Python package only (scripts/setup.sh then builds the
# extension in place, so that later C++ edits rebuild without reinstalling).
if os.environ.get("ASRKD_SKIP_EXT") == "1":
    setup()
else:
    setup(ext_modules=extensions(), cmdclass=cmdclass())
