"""Information for `make lint`: the longest and the most complex functions in src/.

It never fails the build: the aims (no function over 60 lines or cyclomatic complexity 15) are a guide for
review, and a function that must be long to stay readable may say why. Complexity is ruff's mccabe count
(the same number `ruff --select C901` enforces), length is the function's span in source lines.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
MAX_COMPLEXITY = 15
_COMPLEX = re.compile(r"`(?P<name>[^`]+)` is too complex \((?P<n>\d+) > \d+\)")


@dataclass(frozen=True)
class Function:
    path: str
    line: int
    name: str
    lines: int
    complexity: int = 0


def function_lengths(src: Path) -> dict[tuple[str, int], Function]:
    """Every function and method, keyed by file and first line (the line ruff reports)."""
    found: dict[tuple[str, int], Function] = {}
    for path in sorted(src.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                end = node.end_lineno or node.lineno
                found[(rel, node.lineno)] = Function(rel, node.lineno, node.name, end - node.lineno + 1)
    return found


def complexities(src: Path, ruff: str) -> dict[tuple[str, int], int]:
    """mccabe complexity of every function above 1, from ruff's JSON report."""
    proc = subprocess.run(
        [ruff, "check", "--quiet", "--select", "C901", "--config", "lint.mccabe.max-complexity=1",
         "--output-format", "json", "--exit-zero", str(src)],
        capture_output=True, text=True, check=True,
    )
    out: dict[tuple[str, int], int] = {}
    for item in json.loads(proc.stdout or "[]"):
        m = _COMPLEX.search(item["message"])
        if m:
            rel = str(Path(item["filename"]).resolve().relative_to(ROOT))
            out[(rel, item["location"]["row"])] = int(m["n"])
    return out


def report(functions: list[Function], top: int) -> str:
    def table(title: str, key: str, limit: int) -> list[str]:
        rows = sorted(functions, key=lambda f: getattr(f, key), reverse=True)[:top]
        over = sum(1 for f in functions if getattr(f, key) > limit)
        lines = [f"{title} (aim: none over {limit}; {over} over)"]
        lines += [f"  {getattr(f, key):4d}  {f.path}:{f.line} {f.name}" for f in rows]
        return lines

    return "\n".join(table("longest functions, lines", "lines", MAX_LINES)
                     + table("most complex functions, mccabe", "complexity", MAX_COMPLEXITY))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--ruff", default=str(Path(sys.executable).parent / "ruff"))
    args = ap.parse_args()
    lengths = function_lengths(args.src)
    cx = complexities(args.src, args.ruff)
    functions = [Function(f.path, f.line, f.name, f.lines, cx.get(key, 1)) for key, f in lengths.items()]
    print(report(functions, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
