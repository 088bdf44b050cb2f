"""Builds commcomp._C: the CPU backend always, the CUDA backend when torch has CUDA and nvcc
exists. COMMCOMP_USE_CUDA=0|1 overrides the detection. Install after torch with
``pip install --no-build-isolation -e .`` (the library: torch and numpy), or
``pip install --no-build-isolation -e ".[examples,test]"`` for what examples/, benchmarks/ and
tests/ need too. The pins live in requirements/*.txt."""
import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    forced = os.environ.get("COMMCOMP_USE_CUDA")
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"COMMCOMP_USE_CUDA must be 0 or 1, got {forced!r}")
        return forced == "1"
    return torch.version.cuda is not None and shutil.which("nvcc") is not None


def _requirements(name: str) -> list[str]:
    """The requirement lines of requirements/<name>.txt, following ``-r`` includes."""
    path = os.path.join(ROOT, "requirements", f"{name}.txt")
    found = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("-r "):
                found += _requirements(os.path.splitext(line[3:].strip())[0])
            elif line:
                found.append(line)
    return found


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


use_cuda = _want_cuda()
# CPU builds compile the schemas and the CPU backend only (its vector kernels, csrc/cpu/simd, pick
# their ISA per file with target pragmas and are chosen at run time: no -march here); the CUDA bindings
# (csrc/cuda/*_binding.cpp, next to the kernels they launch) need CUDA headers and are compiled
# only together with the kernels.
# csrc/composite/ holds ops implemented once for every device (CompositeExplicitAutograd).
sources = (_sources("csrc/ops.cpp") + _sources("csrc/composite/*.cpp") + _sources("csrc/cpu/*.cpp")
           + _sources("csrc/cpu/simd/*.cpp"))
# -ffp-contract=off: no FMA contraction, so the CPU matches CUDA's explicit _rn arithmetic.
cxx_flags = ["-O3", "-std=c++20", "-ffp-contract=off", "-fno-math-errno"]
extra = {"cxx": cxx_flags}
if use_cuda:
    sources += _sources("csrc/cuda/*_binding.cpp") + _sources("csrc/cuda/*.cu")
    extra["nvcc"] = ["-O3", "-std=c++17", "--fmad=false", "-lineinfo"]
    extension = CUDAExtension("commcomp._C", sources, extra_compile_args=extra,
                              define_macros=[("COMMCOMP_WITH_CUDA", "1")])
else:
    extension = CppExtension("commcomp._C", sources, extra_compile_args=extra)
print(f"commcomp: building {'CPU + CUDA' if use_cuda else 'CPU only'} backend from {len(sources)} sources")

setup(
    name="commcomp",
    version="0.1.0",
    description="Communication compression and robust aggregation for PyTorch distributed training",
    packages=find_packages(include=["commcomp", "commcomp.*"]),
    python_requires=">=3.10",
    install_requires=_requirements("library"),
    extras_require={"examples": _requirements("examples"), "test": _requirements("test")},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
