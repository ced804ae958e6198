"""The shape of the package: imports go one way, heavy libraries load only where they are used."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sage_cli"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module → the sage_cli modules it imports, anywhere in its body (lazy imports inside functions count)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # ``from . import x`` may name a module
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycle(graph):
    """One import cycle, or None (depth-first search with colours)."""
    colour, stack = {}, []

    def visit(node):
        colour[node] = "grey"
        stack.append(node)
        for dep in sorted(graph[node]):
            if colour.get(dep) == "grey":
                return stack[stack.index(dep):] + [dep]
            if dep not in colour:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        colour[node] = "black"
        return None

    for node in sorted(graph):
        if node not in colour:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_real_imports():
    graph = import_graph()
    assert "sage_cli.train.loop" in graph["sage_cli.mtl.train"]
    assert "sage_cli.launch.launchers" in graph["sage_cli.launch.sweep"]
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_no_import_cycle_between_sage_modules():
    assert _cycle(import_graph()) is None


def package_graph(graph) -> dict[str, set[str]]:
    """The same graph between sage_cli's packages and top-level modules (sage_cli.mtl.train → ``mtl``)."""
    def top(module):
        return module.split(".")[1] if module.count(".") else module

    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        out.setdefault(top(module), set()).update(top(d) for d in deps if top(d) != top(module))
    return out


def test_no_import_cycle_between_sage_packages():
    packages = package_graph(import_graph())
    assert {"mtl", "train", "catalog", "recipe", "settings"} <= set(packages)
    assert _cycle(packages) is None


def test_mtl_uses_train_and_never_the_reverse():
    graph = import_graph()
    train_to_mtl = {(m, d) for m, deps in graph.items() if m.startswith("sage_cli.train")
                    for d in deps if d.startswith("sage_cli.mtl")}
    assert train_to_mtl == set()
    # the launchers know the sweep, not the other way round, and only through the registry
    launch = {(m, d) for m, deps in graph.items() if m.startswith("sage_cli.launch")
              for d in deps if d in ("sage_cli.launch.local", "sage_cli.launch.slurm")}
    assert launch == set()


def _loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_checking_a_recipe_imports_neither_torch_nor_mlflow():
    loaded = _loaded_after("from sage_cli.recipe import load_recipe; load_recipe('recipes/nyuv2.yaml')")
    assert not {"torch", "mlflow", "submitit"} & loaded


def test_building_one_method_imports_that_method_alone():
    loaded = _loaded_after("import torch\nfrom sage_cli.recipe import load_recipe\n"
                           "r = load_recipe('recipes/quickstart.yaml', {'optimizer.method': 'sam'})\n"
                           "r.optimizer.build([torch.nn.Parameter(torch.zeros(2))])")
    assert "sage_cli.optim.sam" in loaded
    assert not {"sage_cli.optim.gga", "sage_cli.optim.gam", "sage_cli.optim.pertask", "sage_cli.optim.sage"} & loaded


def test_status_of_a_local_sweep_does_not_import_submitit(tmp_path, monkeypatch):
    from sage_cli.launch.state import JobRecord, SweepState

    monkeypatch.setenv("SAGE_SWEEPS", str(tmp_path / "sweeps"))
    SweepState("s-1", "s", f"sqlite:///{tmp_path / 'mlflow.db'}", "e", launcher="local",
               jobs={"h": JobRecord("h", "job", "r.json", "local", "local:999999")}).save()
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom sage_cli.launch.state import SweepState\n"
                               "from sage_cli.launch.status import job_statuses\n"
                               "rows = job_statuses(SweepState.load('s-1'))\n"
                               "print(rows[0]['status'], 'submitit' in sys.modules)"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["queued", "False"]  # its process is gone and it has no run yet


def test_no_source_refers_to_documents_outside_the_repository():
    outside = ("reference" + "-facts", ".." + "/shared", "notes/" + "design.md")
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        text = path.read_text()
        assert not [word for word in outside if word in text], path
