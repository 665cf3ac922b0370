#!/usr/bin/env python3
"""Compile CUDA sources to PTX with NVRTC through ctypes (no nvcc needed).

Usage: nvrtc_compile.py --lib LIBNVRTC --arch compute_90 [-I DIR ...] --out DIR FILE.cu...

Writes DIR/<stem>.<arch>.ptx for each source and prints the NVRTC log of any
source that does not compile; exits 1 if one failed. Used by
scripts/compile-kernels.sh, the CI check of kernels/ on machines without a GPU.
"""

import argparse
import ctypes
import os
import sys


def check(lib, status, what):
    if status != 0:
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"{what}: {lib.nvrtcGetErrorString(status).decode()}")


def compile_one(lib, path, arch, includes):
    with open(path, "rb") as fh:
        source = fh.read()
    prog = ctypes.c_void_p()
    check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source,
                                      os.path.basename(path).encode(), 0, None, None),
          f"{path}: nvrtcCreateProgram")
    options = [f"--gpu-architecture={arch}", "--std=c++17", "-lineinfo"]
    options += [f"--include-path={d}" for d in includes]
    encoded = [o.encode() for o in options]
    argv = (ctypes.c_char_p * len(encoded))(*encoded)
    status = lib.nvrtcCompileProgram(prog, len(encoded), argv)

    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    log = log.value.decode(errors="replace").strip()

    ptx = None
    if status == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        check(lib, lib.nvrtcGetPTX(prog, buf), f"{path}: nvrtcGetPTX")
        ptx = buf.value
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return status, log, ptx


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lib", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("-I", dest="includes", action="append", default=[])
    p.add_argument("--out", required=True)
    p.add_argument("sources", nargs="+")
    a = p.parse_args()

    lib = ctypes.CDLL(a.lib)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    print(f"nvrtc {major.value}.{minor.value}, {a.arch}")

    failed = 0
    for path in a.sources:
        status, log, ptx = compile_one(lib, path, a.arch, a.includes)
        stem = os.path.splitext(os.path.basename(path))[0]
        if status != 0:
            failed += 1
            print(f"error: {path} does not compile for {a.arch}:\n{log}")
            continue
        if log:
            print(f"{path}: {log}")
        with open(os.path.join(a.out, f"{stem}.{a.arch}.ptx"), "wb") as fh:
            fh.write(ptx)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
