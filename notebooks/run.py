"""Execute the notebooks in a fresh kernel, from the repository root, and (with --write) save their outputs in place.

python -m notebooks.run                      # execute every notebook, print each one's time; files unchanged
python -m notebooks.run --write              # ... and write the outputs back into the .ipynb files
python -m notebooks.run --write 02_train_and_evaluate.ipynb

What is written is made to diff well: a cell's printed lines form one output however they arrived, and execution
timings, cell ids and kernel versions are dropped. The notebook's metadata records a hash of its code cells
(``source_sha``), so a test can tell outputs that no longer belong to their code. Outputs must not name this
machine's folders: a run whose outputs hold the repository's absolute path or the temporary folder's is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def source_sha(nb: nbformat.NotebookNode) -> str:
    """Hash of the code cells' sources, in order: what the saved outputs were produced from."""
    code = "\n\x00".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def execute(path: Path, timeout: int = 300) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh python3 kernel whose working directory is the repository root.

    The kernel and the scripts it starts get one CPU thread each (OMP_NUM_THREADS=1): they run one after another,
    and on shared cores torch's two-thread pool ran a forward pass 7x slower than one thread did (2-core machine,
    other jobs running). Results then also do not depend on the machine's core count.
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", coalesce_streams=True, resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute(env=os.environ | {"OMP_NUM_THREADS": "1"})
    return nb


def machine_paths(nb: nbformat.NotebookNode) -> list[str]:
    """This machine's folders (repository root, temporary folder) named in the notebook's sources or outputs."""
    text = nbformat.writes(nb)
    return [p for p in (str(ROOT), tempfile.gettempdir().rstrip("/") + "/") if p in text]


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop what changes from run to run without meaning anything (timings, versions, widget state)."""
    nb.metadata = nbformat.from_dict(METADATA | {"endolift": {"source_sha": source_sha(nb)}})
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        cell.pop("id", None)
    nb.nbformat_minor = 4  # no cell ids (nbformat 4.5): random strings, new for every copy of a cell
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook file names (default: every notebooks/*.ipynb)")
    ap.add_argument("--write", action="store_true", help="save the outputs into the notebooks")
    args = ap.parse_args(argv)
    paths = [NOTEBOOKS / n for n in args.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        t0 = time.perf_counter()
        nb = clean(execute(path))
        print(f"{path.name}: {time.perf_counter() - t0:.1f} s")
        if found := machine_paths(nb):
            print(
                f"{path.name}: outputs name this machine's folders {found}; print paths relative to the "
                "repository root",
                file=sys.stderr,
            )
            return 2
        if args.write:  # under a temporary name, then renamed: an interrupted run never truncates a notebook
            tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
            nbformat.write(nb, tmp)
            os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
