"""scripts/sass_lines.py: static SASS counts by source line and between
barriers, from `nvdisasm -g -c` output (a fake nvdisasm here: CI has none)."""
import os
import pathlib
import stat
import subprocess
import sys

_SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "sass_lines.py"

_LISTING = """\t.text._ZN3nsa7kernels6other_kernelEv:
        /*0000*/                   EXIT ;
\t.text._ZN3nsa7kernels21topk_transform_kernelIfLb0EEEvNS_8TopkArgsE:
\t//## File "/src/include/nsa/cuda/topk/kernel.cuh", line 10
        /*0000*/                   S2R R0, SR_TID.X ;
        /*0010*/                   IADD3 R1, R0, 0x1, RZ ;
\t//## File "/src/include/nsa/cuda/topk/select.cuh", line 20
        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0030*/                   SHFL.IDX PT, R2, R1, RZ, 0x1f ;
        /*0040*/                   EXIT ;
"""


def _run(tmp_path, *args):
    fake = tmp_path / "nvdisasm"
    fake.write_text("#!/bin/sh\ncat <<'END'\n" + _LISTING.replace("\t", "") + "END\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, NVDISASM=str(fake))
    return subprocess.run([sys.executable, str(_SCRIPT), "unused.cubin", *args], env=env, check=True,
                          capture_output=True, text=True).stdout


def test_counts_by_source_line_of_the_named_kernel_only(tmp_path):
    out = _run(tmp_path, "topk_transform_kernelIfLb0")
    assert "topk_transform_kernelIfLb0EEEvNS_8TopkArgsE: 5 instructions" in out
    assert "2  kernel.cuh:10" in out and "3  select.cuh:20" in out


def test_range_and_barriers(tmp_path):
    assert "[0x10, 0x30): 2 instructions" in _run(tmp_path, "topk", "--range", "10", "30")
    assert "0x00000 .. 0x00020:     2 instructions, then BAR.SYNC" in _run(tmp_path, "topk", "--barriers")
