"""The house rules of docs/ARCHITECTURE.md, checked on the source: layers import only downwards, no import cycle,
and no long file without its reason stated at the top."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lowest first: a package may import its own layer and the ones before it, never one after it
LAYERS = ["core", "data", "models", "metrics", "training", "review"]
SCRIPTS = {"train", "infer", "evaluate"}
LONG = 350
REASON = "Over 350 lines on purpose"


def python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / f for f in out.split()]
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "*.py"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return sorted({*files, *(ROOT / f for f in untracked.split())} - {p for p in files if not p.exists()})


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def endolift_imports(path: Path, known: set[str]) -> set[str]:
    """Every endolift module a file imports, at the top or inside a function (a lazy import is still a dependency)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n:
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in python_files() if p.parts[len(ROOT.parts)] in LAYERS}
    known = set(files)
    return {m: endolift_imports(p, known) - {m} for m, p in files.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_layers_import_only_downwards():
    upward = [
        f"{m} ({m.split('.')[0]}) imports {d} ({d.split('.')[0]})"
        for m, deps in graph().items()
        for d in deps
        if layer(d) > layer(m)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    g = graph()
    # package __init__ files that import nothing are leaves; a cycle is a strongly connected component of size > 1
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_a_long_file_states_why_at_its_top():
    long = []
    for p in python_files():
        text = p.read_text(encoding="utf-8")
        n = text.count("\n")
        if n > LONG:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if REASON not in doc:
                long.append(f"{p.relative_to(ROOT)} ({n} lines)")
    assert not long, f"files over {LONG} lines without '{REASON}: ...' in their docstring: " + ", ".join(long)


def test_the_checks_catch_what_they_look_for(tmp_path):
    # the graph reader sees top-level and lazy imports, and maps `from pkg import module` to the module
    f = tmp_path / "m.py"
    f.write_text("import core.errors\nfrom data import io\n\ndef f():\n    from models.net import EndoNet\n")
    assert endolift_imports(f, {"core.errors", "data.io", "models.net", "data"}) == {
        "core.errors",
        "data",
        "data.io",
        "models.net",
    }
    assert layer("review.pipeline") > layer("models.predictor") > layer("data.io") > layer("core.files")
