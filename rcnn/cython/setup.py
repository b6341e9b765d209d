"""Build the rcnn extensions in place: ``cd rcnn/cython && python setup.py build_ext --inplace``.

``bbox``, ``anchors`` and ``cpu_nms`` are always built. ``gpu_nms`` is attempted only when a CUDA toolkit is
found (``$CUDAHOME``/``$CUDA_HOME``, else ``nvcc`` on PATH); if it cannot be built the reason is printed as
"skipping gpu_nms: ..." and the CPU extensions are still built, so a CPU-only machine always builds.
``RCNN_GPU_NMS`` overrides the default ``auto``: ``0`` never builds gpu_nms, ``1`` makes a failure fatal.
The kernel is compiled for the oldest architecture the installed nvcc supports, with PTX so that newer
GPUs JIT-compile it.
"""
import os
import re
import shutil
import subprocess
import sysconfig

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
C_FLAGS = ["-Wno-cpp", "-Wno-unused-function"]
GPU_MODE = os.environ.get("RCNN_GPU_NMS", "auto")
if GPU_MODE not in ("auto", "0", "1"):
    raise SystemExit(f"RCNN_GPU_NMS must be auto, 0 or 1, got {GPU_MODE!r}")


def find_cuda():
    """Return (nvcc path, directory holding libcudart_static.a); raise LookupError with the reason."""
    home = os.environ.get("CUDAHOME") or os.environ.get("CUDA_HOME")
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.isfile(nvcc):
        raise LookupError(f"nvcc not found ({nvcc or 'not on PATH'}; set CUDAHOME or put nvcc on PATH)")
    if not home:
        # nvcc may be a wrapper script outside the toolkit; its dry run names the real toolkit root
        dry_run = subprocess.run([nvcc, "--dryrun", "-c", "nms_kernel.cu"], capture_output=True, text=True)
        match = re.search(r"^#\$ TOP=(.+)$", dry_run.stdout + dry_run.stderr, re.MULTILINE)
        home = match.group(1).strip() if match else os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib")):
        if os.path.isfile(os.path.join(home, sub, "libcudart_static.a")):
            return nvcc, os.path.join(home, sub)
    raise LookupError(f"libcudart_static.a not found under {os.path.normpath(home)} (set CUDAHOME)")


def oldest_gpu_arch(nvcc):
    """Lowest ``compute_XX`` the installed nvcc supports (CUDA 13 dropped everything below 75)."""
    listing = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True)
    archs = sorted(int(n) for n in re.findall(r"compute_(\d+)", listing.stdout))
    if listing.returncode != 0 or not archs:
        raise LookupError(f"{nvcc} --list-gpu-arch failed: {listing.stderr.strip() or 'no architectures'}")
    return archs[0]


def in_place_up_to_date(ext):
    """Whether the module next to the sources is newer than its sources, their dependencies and this file."""
    module = os.path.join(HERE, ext.name + sysconfig.get_config_var("EXT_SUFFIX"))
    inputs = [*ext.sources, *ext.depends, os.path.abspath(__file__)]
    if not os.path.isfile(module) or os.path.getmtime(module) < max(os.path.getmtime(p) for p in inputs):
        return False
    print(f"{ext.name} is up to date")
    return True


class BuildExtensions(build_ext):
    """build_ext that compiles nms_kernel.cu with nvcc and never lets gpu_nms break the CPU build."""

    def build_extensions(self):
        # `make` deletes build/, so compare against the in-place modules to avoid recompiling on every run
        pending = [ext for ext in self.extensions if self.force or not in_place_up_to_date(ext)]
        gpu = [ext for ext in pending if ext.name == "gpu_nms"]
        self.extensions = [ext for ext in pending if ext.name != "gpu_nms"]
        super().build_extensions()
        for ext in gpu:
            try:
                self.build_gpu_extension(ext)
            except Exception as error:  # any failure here must only cost the optional GPU extension
                if GPU_MODE == "1":
                    raise
                print(f"skipping gpu_nms: {error}")
            else:
                self.extensions.append(ext)  # so that --inplace copies it next to the sources

    def build_gpu_extension(self, ext):
        nvcc, cudart_dir = find_cuda()
        arch = oldest_gpu_arch(nvcc)
        os.makedirs(self.build_temp, exist_ok=True)
        kernel_object = os.path.join(self.build_temp, "nms_kernel.o")
        command = [nvcc, "-c", "nms_kernel.cu", "-o", kernel_object, "-O3", "--fmad=false",
                   f"-gencode=arch=compute_{arch},code=[sm_{arch},compute_{arch}]", "-Xcompiler", "-fPIC"]
        print(" ".join(command))
        compiled = subprocess.run(command, capture_output=True, text=True)
        if compiled.returncode != 0:
            raise RuntimeError(f"nvcc failed: {compiled.stderr.strip()[-2000:]}")
        ext.extra_objects = [kernel_object]
        ext.library_dirs = [cudart_dir]
        self.build_extension(ext)


def extensions():
    """The Extension list: the CPU ones, plus gpu_nms unless RCNN_GPU_NMS=0."""
    def cpu_extension(name):
        return Extension(name, [f"{name}.pyx"], include_dirs=[np.get_include()], extra_compile_args=C_FLAGS)

    modules = [cpu_extension(name) for name in ("bbox", "anchors", "cpu_nms")]
    if GPU_MODE == "0":
        print("skipping gpu_nms: RCNN_GPU_NMS=0")
    else:
        modules.append(Extension("gpu_nms", ["gpu_nms.pyx"], depends=["gpu_nms.hpp", "nms_kernel.cu"],
                                 language="c++", include_dirs=[np.get_include()], extra_compile_args=C_FLAGS,
                                 libraries=["cudart_static", "rt", "dl", "pthread"]))
    return cythonize(modules, language_level=3)


os.chdir(HERE)
setup(name="rcnn_cython", ext_modules=extensions(), cmdclass={"build_ext": BuildExtensions})
