"""Compile a Numba CUDA kernel that calls the linked CUDA C++ helper, without a GPU:

numba-cuda `compile_all(..., output='ltoir')` -> [LTO-IR of the kernel, LTO-IR of mma_helper.cu from NVRTC]
-> nvJitLink (-lto) -> linked PTX (-ptx) and linked cubin -> ptxas -v / cuobjdump -res-usage / nvdisasm.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numba.cuda.dispatcher as _disp
from numba.cuda.compiler import compile_all
from cuda.bindings import nvjitlink

VENV_NV = Path(sys.prefix) / 'lib' / f'python{sys.version_info[0]}.{sys.version_info[1]}' / 'site-packages/nvidia/cu13/bin'
# nvdisasm and cuobjdump: pip install --no-deps --target pkgs nvidia-cuda-nvdisasm==13.5.37 nvidia-cuda-cuobjdump
PKG_NV = Path(os.environ.get('GEOBOOK_NV_TOOLS', Path(__file__).resolve().parent / 'pkgs')) / 'nvidia/cu13/bin'
PTXAS = VENV_NV / 'ptxas'
NVDISASM = PKG_NV / 'nvdisasm'
CUOBJDUMP = PKG_NV / 'cuobjdump'


def _fake_device(cc):
    # device functions (cuda.jit(device=True)) called from a kernel are compiled for the current device's compute
    # capability; there is none without a GPU.
    _disp.get_current_device = lambda: type('FakeDevice', (), {'compute_capability': cc})()


def ltoir_pieces(pyfunc, sig, cc):
    _fake_device(cc)
    codes, _ = compile_all(pyfunc, sig, device=False, cc=cc, output='ltoir', abi='numba')
    out = []
    for c in codes:
        data = c.code if hasattr(c, "code_type") else c   # NVRTC output comes as a cuda.core ObjectCode
        out.append(bytes(data))
    return out


def nvjitlink_link(pieces, cc, want):
    """Link LTO-IR pieces for sm_XY; want='ptx' or 'cubin'. Returns (bytes-or-str, info log)."""
    arch = f'-arch=sm_{cc[0]}{cc[1]}'
    opts = [arch, '-lto'] + (['-ptx'] if want == 'ptx' else ['-Xptxas=-v'])
    h = nvjitlink.create(len(opts), opts)
    try:
        for i, p in enumerate(pieces):
            nvjitlink.add_data(h, nvjitlink.InputType.LTOIR, p, len(p), f'piece{i}')
        try:
            nvjitlink.complete(h)
        except Exception as e:
            n = nvjitlink.get_error_log_size(h)
            log = bytearray(n)
            nvjitlink.get_error_log(h, log)
            raise RuntimeError(f'nvJitLink failed: {e}\n{bytes(log).decode(errors="replace")}') from None
        n = nvjitlink.get_info_log_size(h)
        info = bytearray(n)
        nvjitlink.get_info_log(h, info)
        info = bytes(info).decode(errors='replace').rstrip('\x00')
        if want == 'ptx':
            n = nvjitlink.get_linked_ptx_size(h)
            buf = bytearray(n)
            nvjitlink.get_linked_ptx(h, buf)
            return bytes(buf).decode().rstrip('\x00'), info
        n = nvjitlink.get_linked_cubin_size(h)
        buf = bytearray(n)
        nvjitlink.get_linked_cubin(h, buf)
        return bytes(buf), info
    finally:
        nvjitlink.destroy(h)


def ptxas_report(ptx_path, cc, cubin_path):
    p = subprocess.run([str(PTXAS), f'-arch=sm_{cc[0]}{cc[1]}', '-v', str(ptx_path), '-o', str(cubin_path)],
                       capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f'ptxas failed:\n{p.stderr}')
    return p.stderr


def parse_ptxas(log):
    """Facts from a ptxas -v report (one kernel): stack bytes, spill stores/loads, registers, shared memory."""
    f = {}
    m = re.search(r'(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads', log)
    if m:
        f['stack'], f['spill_st'], f['spill_ld'] = map(int, m.groups())
    m = re.search(r'Used (\d+) registers', log)
    if m:
        f['regs'] = int(m.group(1))
    m = re.search(r'(\d+) bytes smem', log)
    f['smem'] = int(m.group(1)) if m else 0
    return f


def sass(cubin_path):
    "SASS text of a cubin by nvdisasm (falls back to cuobjdump -sass)."
    if NVDISASM.exists():
        p = subprocess.run([str(NVDISASM), '-c', str(cubin_path)], capture_output=True, text=True)
        if p.returncode == 0:
            return p.stdout, 'nvdisasm'
    p = subprocess.run([str(CUOBJDUMP), '-sass', str(cubin_path)], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr)
    return p.stdout, 'cuobjdump'


def res_usage(cubin_path):
    p = subprocess.run([str(CUOBJDUMP), '-res-usage', str(cubin_path)], capture_output=True, text=True)
    return p.stdout + p.stderr


def opcode_counts(sass_text):
    "{opcode (first token, predicates stripped): count} over SASS instruction lines."
    counts = {}
    for line in sass_text.splitlines():
        m = re.match(r'\s*/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)', line)
        if m:
            op = m.group(2)
            counts[op] = counts.get(op, 0) + 1
    return counts
