"""The package's import graph has no cycles (function-level imports included)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {
    "ann2snn": "ann2snn",
    "converter_passes": "ann2snn.converter_passes",
    "cli": "ann2snn.cli",
    "models": "ann2snn.models",
}


def _modules():
    mods = {}
    for folder, pkg in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = path
    return mods


def _edges(mods):
    edges = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                # Importing a package only to reach a name in it is not a dependency cycle.
                if t in mods and t != name and not name.startswith(t + "."):
                    edges[name].add(t)
    return edges


def _cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycles_inside_the_package():
    mods = _modules()
    assert "ann2snn.converter_passes.pipeline" in mods
    assert _cycles(_edges(mods)) == []


def test_import_does_not_build_the_kernels():
    import subprocess
    import sys

    code = "import ann2snn, ann2snn.ops as ops; print(ops._BUILD is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_cli_uses_only_the_public_api() -> None:
    """The CLI imports no private name and nothing from the compiler passes."""
    bad = []
    for path in sorted((ROOT / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ann2snn"):
                module = node.module or ""
                names = [a.name for a in node.names if a.name != "__version__"]
                private = [n for n in names + module.split(".") if n.startswith("_")]
                if private:
                    bad.append(f"{path.name}:{node.lineno} {module} {private}")
                if module.startswith("ann2snn.converter_passes"):
                    bad.append(f"{path.name}:{node.lineno} {module}")
    assert not bad, bad


def test_import_is_light_and_every_public_name_resolves():
    """``import ann2snn`` and the CLI module import no torch (the ``ann2snn`` command
    imports it inside main(), where Ctrl-C is handled); every public name resolves, and
    ``__all__`` lists exactly the lazily imported names."""
    import subprocess
    import sys

    code = (
        "import sys, ann2snn, ann2snn.cli.main; print('torch' in sys.modules); "
        "[getattr(ann2snn, n) for n in ann2snn.__all__]; "
        "print(sorted(ann2snn.__all__) == sorted([*ann2snn._EXPORTS, '__version__']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
