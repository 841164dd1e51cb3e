"""Build a JSONL corpus of real text found on this machine (no download possible here).

`--kind prose` (default, >= 32 MB): documents, in a fixed order: the Python docstrings of each module of the stdlib and the venv's
site-packages (one document per module, docstrings joined by blank lines), every text file under
/usr/share/doc (README, changelogs, copyright, .txt/.md/.rst, gzip-decompressed), and the licences in
/usr/share/common-licenses. Non-UTF-8 files are skipped, not repaired.

`--kind code` (default 28 MB): source code, one document per .py file of the stdlib and the venv's
site-packages in sorted path order, as stored (indentation, blank lines and long space runs kept), skipping
files under 1 kB and over 256 kB so the corpus is many files rather than a few generated tables.

    python benchmarks/preprocess_corpus.py OUT.jsonl [--kind prose|code] [--min-mb MB]
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import sys
import sysconfig
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".Debian", ""}


def python_docstrings(roots: list[Path]):
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            docs = []
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    doc = ast.get_docstring(node)
                    if doc:
                        docs.append(doc)
            if docs:
                yield "\n\n".join(docs)


def python_sources(roots: list[Path]):
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                if not 1024 <= path.stat().st_size <= 256 * 1024:
                    continue
                yield path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def share_doc_texts():
    roots = [Path("/usr/share/doc"), Path("/usr/share/common-licenses")]
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            name = path.name[:-3] if path.name.endswith(".gz") else path.name
            if Path(name).suffix not in TEXT_SUFFIXES:
                continue
            try:
                data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
                yield data.decode("utf-8")
            except (UnicodeDecodeError, OSError, EOFError, gzip.BadGzipFile):
                continue


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--kind", choices=("prose", "code"), default="prose")
    ap.add_argument("--min-mb", type=float, default=None, help="stop once this size is reached")
    args = ap.parse_args()
    min_mb = args.min_mb or (32 if args.kind == "prose" else 28)
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    n = size = 0
    if args.kind == "code":
        sources = [python_sources(roots)]
    else:
        sources = [share_doc_texts(), python_docstrings(roots)]
    with open(args.out, "w", encoding="utf-8") as f:
        # Alternate the two sources so the corpus mixes long changelogs with short API prose.
        while sources and size < min_mb * 1e6:
            for source in list(sources):
                text = next(source, None)
                if text is None:
                    sources.remove(source)
                    continue
                line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                f.write(line)
                n += 1
                size += len(line.encode())
    print(f"{args.out}: {n} documents, {size / 1e6:.1f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
