"""README and docs/ must not point outside the repository or at one
machine's folders (a bench log pasted as printed on the GPU machine did)."""
import pathlib
import re

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_LOCAL = re.compile(r"\.\./shared|/root/|/work/")


def test_readme_and_docs_name_no_local_paths():
    files = [_ROOT / "README.md", *sorted((_ROOT / "docs").rglob("*.md"))]
    found = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if _LOCAL.search(line):
                found.append(f"{f.relative_to(_ROOT)}:{n}: {line.strip()[:120]}")
    assert not found, "local paths in the docs:\n" + "\n".join(found)
