"""Typing stubs of the extension module nsa._nsa (python/nsa/_nsa.pyi),
generated with nanobind's stubgen from the built module.

    python scripts/stubs.py            rewrite python/nsa/_nsa.pyi
    python scripts/stubs.py --check    exit 1 (and show the difference) when it is out of date

`nsa` is imported from wherever the interpreter finds it: the installed package
(`pip install .`, as scripts/run.sh test does) or a build tree
(PYTHONPATH=build-py/python). Values (e.g. cuda_architectures) are left out,
so CPU and CUDA builds give the same stub.
"""

import argparse
import difflib
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(ROOT, "python", "nsa", "_nsa.pyi")


def generate() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "_nsa.pyi")
        env = dict(os.environ)  # the same import path as ours, made absolute (cwd changes)
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)
        subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-q", "--exclude-values", "-m", "nsa._nsa",
                        "-o", out], check=True, cwd=tmp, env=env)  # cwd: never the source tree's nsa/
        with open(out) as f:
            return f.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed stub instead of writing it")
    args = parser.parse_args()
    fresh = generate()
    if not args.check:
        with open(COMMITTED, "w") as f:
            f.write(fresh)
        print(f"stubs: wrote {os.path.relpath(COMMITTED, ROOT)}")
        return 0
    with open(COMMITTED) as f:
        committed = f.read()
    if committed == fresh:
        print(f"stubs: {os.path.relpath(COMMITTED, ROOT)} matches the built module")
        return 0
    sys.stdout.writelines(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                               "committed/_nsa.pyi", "generated/_nsa.pyi"))
    print("stubs: python/nsa/_nsa.pyi is out of date; regenerate it with `python scripts/stubs.py` "
          "(against a fresh build of the package) and commit it", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
