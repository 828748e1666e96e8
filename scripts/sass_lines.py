#!/usr/bin/env python3
"""Static SASS instruction counts of one kernel, by source line (a reading aid, not a profile).

    scripts/sass_lines.py CUBIN KERNEL_SUBSTRING [--range LO HI] [--top N] [--barriers]

Disassembles CUBIN with `nvdisasm -g -c` ($NVDISASM, else the one on PATH)
and counts the instructions of the first kernel whose mangled name contains
KERNEL_SUBSTRING: by innermost source line (file:line) within the byte
range [LO, HI) (hex; the whole kernel by default), or, with --barriers, the
instructions between consecutive BAR.SYNCs in address order (the layout, so
a region may hold code of branches that a given row never runs). Counts are
static: how often each instruction runs is for a profiler (ncu's source
page) to say. Build the cubin with -lineinfo, e.g.
    nvcc -std=c++17 -O3 -arch=sm_90a -lineinfo -cubin -Iinclude -Isrc \\
         --expt-relaxed-constexpr -o topk.cubin src/cuda/topk.cu
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cubin")
    p.add_argument("kernel")
    p.add_argument("--range", nargs=2, metavar=("LO", "HI"))
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--barriers", action="store_true")
    args = p.parse_args()
    tool = os.environ.get("NVDISASM") or shutil.which("nvdisasm")
    if not tool:
        sys.exit("sass_lines: no nvdisasm (set NVDISASM to its path)")
    text = subprocess.run([tool, "-g", "-c", args.cubin], check=True, capture_output=True, text=True).stdout
    inside, name, where = False, None, None
    rows = []  # (address, (file, line), instruction)
    for line in text.splitlines():
        if line.startswith(".text."):
            if inside:
                break
            inside = args.kernel in line
            name = line[len(".text."):].rstrip(":")
            continue
        if not inside:
            continue
        m = re.match(r'\s*//## File "(.*)", line (\d+)', line)
        if m:
            where = (os.path.basename(m.group(1)), int(m.group(2)))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            rows.append((int(m.group(1), 16), where, m.group(2)))
    if not rows:
        sys.exit(f"sass_lines: no kernel matching {args.kernel!r} in {args.cubin}")
    print(f"{name}: {len(rows)} instructions")
    if args.barriers:
        start = rows[0][0]
        for addr, _, ins in rows:
            if "BAR.SYNC" in ins:
                print(f"  {start:#07x} .. {addr:#07x}: {(addr - start) // 16:5d} instructions, then {ins}")
                start = addr + 16
        return
    lo, hi = (int(args.range[0], 16), int(args.range[1], 16)) if args.range else (0, 1 << 62)
    counts = collections.Counter(w for a, w, _ in rows if lo <= a < hi)
    print(f"[{lo:#x}, {hi:#x}): {sum(counts.values())} instructions")
    for (f, n), c in counts.most_common(args.top):
        print(f"  {c:5d}  {f}:{n}")


if __name__ == "__main__":
    main()
