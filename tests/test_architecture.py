"""The architecture, checked: layers import downward only, heavy libraries load only where they are used.

The layers are those of docs/architecture.md. The import graph is read from the source (every
`import` statement, at any depth), so a new module is checked the moment it exists; a new area
(a folder or top-level module under tunery/) must be placed in a layer here and in the doc first.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import tunery

PACKAGE = Path(tunery.__file__).resolve().parent

# Layers, bottom up. Each area may import its own layer's foundation and the layers below it.
FOUNDATION = frozenset({"config", "errors", "types", "paths", "host", "safeio"})
ML_CORE = frozenset({"data", "models", "training", "evaluation", "export", "inference", "rag"})
ENTRY_POINTS = frozenset({"cli", "server", "web"})
LIFECYCLE = frozenset({"platform"})
STORE = frozenset({"store"})
ROOT = ""  # tunery/__init__.py: __version__ and the `tunery.train` facade

ALLOWED: dict[str, frozenset[str]] = {
    **{area: FOUNDATION for area in FOUNDATION},
    "data": FOUNDATION,  # the bottom of the core: formats, templates, packing
    "models": FOUNDATION | {"data"},
    "rag": FOUNDATION | {"data", "models"},  # used by evaluation, inference and training alike
    **{area: FOUNDATION | ML_CORE for area in ("training", "evaluation", "export", "inference")},
    "store": FOUNDATION,  # persistence only: no models, no HTTP
    "platform": FOUNDATION | ML_CORE | STORE,
    "server": FOUNDATION | ML_CORE | STORE | LIFECYCLE | {"web"},  # the server mounts the console
    "web": FOUNDATION | ML_CORE | STORE | LIFECYCLE | {"server"},  # the console reuses auth and state
    "cli": FOUNDATION | ML_CORE | STORE | LIFECYCLE | {"server", "web"},
    "__main__": frozenset({"cli"}),
    ROOT: frozenset({"training"}),  # tunery.train() defers to tunery.training.run
}

# Imported inside functions on purpose: slow to import (torch, transformers, numpy, fastapi...) or
# optional (installed only for the feature that uses them). Everything else goes at the top.
DEFERRED_LIBRARIES = frozenset({
    "torch", "transformers", "peft", "bitsandbytes", "safetensors", "gguf", "numpy", "pyarrow", "tokenizers",
    "accelerate", "fastapi", "starlette", "uvicorn", "httpx", "jinja2", "huggingface_hub", "openai", "trl",
    "mlflow", "tensorboard", "psycopg", "psycopg_pool", "psycopg2", "bm25s", "playwright", "pypdf", "docx",
    "multipart", "python_multipart", "sentence_transformers", "scipy", "sklearn", "pandas", "llama_cpp",
    "llguidance",  # optional grammar engine; its torch helpers load torch
})
# Never imported by the foundation or the store, even inside a function.
ML_LIBRARIES = frozenset({"torch", "transformers", "peft", "bitsandbytes", "numpy", "safetensors", "gguf"})

# Function-level imports that break a cycle rather than defer a library (caller, imported prefix, why).
CYCLES = [
    ("tunery.cli", "tunery.cli.", "each command module adds itself to the `app` defined in tunery.cli"),
    ("tunery.store.db", "tunery.store.migrations", "migrations run on a Store, which runs them when it opens"),
    ("tunery.models.builtin", "tunery.models.portable", "the converted built-in folder gets the fields other tools "
     "read, and portable names the built-in model's hub id"),
    ("tunery.models.builtin", "tunery.models.load", "the conversion loads with load's LOCAL_ONLY options, and load "
     "resolves names through the built-in models"),
    ("tunery.models.portable", "tunery.models.", "portable reads the built-in model and the resolver, which "
     "import it"),
]


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. tunery.training.run
    target: str  # the imported module, e.g. tunery.training.batch_loss or torch.nn
    line: int
    deferred: bool  # inside a function (runs on call), not at import time
    type_only: bool  # under `if TYPE_CHECKING:` (never runs)

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}) imports {self.target}"


def area_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def module_name(path: Path) -> str:
    parts = ("tunery", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_tunery_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def read_imports(path: Path) -> list[Import]:
    module = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(module, alias.name, child.lineno, deferred, type_only) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    package = module.split(".")[: len(module.split(".")) - child.level + (1 if is_package else 0)]
                    base = ".".join(package + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    target = sub if base.split(".")[0] == "tunery" and is_tunery_module(sub) else base
                    found.append(Import(module, target, child.lineno, deferred, type_only))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_only)
            elif isinstance(child, ast.If) and is_type_checking(child.test):
                for part in child.body:
                    visit(ast.Module(body=[part], type_ignores=[]), deferred, True)
                for part in child.orelse:
                    visit(ast.Module(body=[part], type_ignores=[]), deferred, type_only)
            else:
                visit(child, deferred, type_only)

    visit(ast.parse(path.read_text(), filename=str(path)), False, False)
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    # dict.fromkeys: `from x import a, b` is one edge, not two.
    return tuple(dict.fromkeys(imp for path in sorted(PACKAGE.rglob("*.py")) for imp in read_imports(path)))


@cache
def import_time_libraries(module: str) -> frozenset[str]:
    """Third-party top-level packages that `import module` loads, following tunery modules at module level."""
    seen, libraries, todo = set(), set(), [module]
    while todo:
        current = todo.pop()
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        parts = current.split(".")
        for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if name in seen or not is_tunery_module(name):
                continue
            seen.add(name)
            for imp in imports_by_module().get(name, ()):
                if imp.deferred or imp.type_only:
                    continue
                if imp.target.split(".")[0] == "tunery":
                    todo.append(imp.target)
                else:
                    libraries.add(imp.target.split(".")[0])
    return frozenset(libraries)


@cache
def imports_by_module() -> dict[str, list[Import]]:
    grouped: dict[str, list[Import]] = {}
    for imp in all_imports():
        grouped.setdefault(imp.module, []).append(imp)
    return grouped


def tunery_imports() -> list[Import]:
    return [imp for imp in all_imports() if imp.target.split(".")[0] == "tunery"]


def test_every_area_has_a_layer():
    areas = {area_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    unplaced = sorted(areas - set(ALLOWED))
    assert not unplaced, (f"tunery/{unplaced[0]} belongs to no layer: place it in docs/architecture.md and in "
                          "ALLOWED in this test")


def test_imports_point_down_the_layers():
    wrong = [f"{imp}: {area_of(imp.module) or 'tunery'} may import only {sorted(ALLOWED[area_of(imp.module)])}"
             for imp in tunery_imports()
             if area_of(imp.target) not in (area_of(imp.module), ROOT) and area_of(imp.module) in ALLOWED
             and area_of(imp.target) not in ALLOWED[area_of(imp.module)]]
    assert not wrong, "\n".join(wrong)


def test_the_ml_core_never_imports_entry_points_store_or_platform():
    # Stated separately from the table above so that a change to ALLOWED cannot quietly drop it.
    above = ENTRY_POINTS | LIFECYCLE | STORE
    wrong = [str(imp) for imp in tunery_imports() if area_of(imp.module) in ML_CORE and area_of(imp.target) in above]
    assert not wrong, "\n".join(wrong)


def test_foundation_and_store_never_import_ml_libraries():
    wrong = [str(imp) for imp in all_imports() if area_of(imp.module) in FOUNDATION | STORE
             and imp.target.split(".")[0] in ML_LIBRARIES]
    assert not wrong, "\n".join(wrong)


def test_function_level_imports_defer_something_heavy():
    wrong = []
    for imp in all_imports():
        if not imp.deferred or imp.type_only:
            continue
        top = imp.target.split(".")[0]
        if top != "tunery":
            if top not in DEFERRED_LIBRARIES:
                wrong.append(f"{imp}: move it to the top of the module (or add {top} to DEFERRED_LIBRARIES "
                             "if it is slow to import or optional)")
            continue
        if any(imp.module == caller and imp.target.startswith(prefix) for caller, prefix, _ in CYCLES):
            continue
        if not import_time_libraries(imp.target) & DEFERRED_LIBRARIES:
            wrong.append(f"{imp}: importing it loads nothing heavy, so it belongs at the top of the module")
    assert not wrong, "\n".join(wrong)


def test_the_graph_reader_sees_what_it_checks():
    """The checks above are only as good as the reader: it must find known edges of each kind."""
    edges = {(imp.module, imp.target, imp.deferred) for imp in all_imports()}
    assert ("tunery.training.loop", "tunery.training.batch_loss", False) in edges
    assert ("tunery.training.precision", "tunery.host", False) in edges  # `from tunery import host`
    assert ("tunery", "tunery.training.run", True) in edges
    assert "torch" in import_time_libraries("tunery.training.loop")
    assert "torch" not in import_time_libraries("tunery.store")
    assert "torch" not in import_time_libraries("tunery.config")


NO_TORCH_AT_IMPORT = {
    "tunery.server.app": "import tunery.server.app",
    "tunery.store": "import tunery.store",
    # What `tunery --help` runs: every command module registered.
    "tunery.cli": "import tunery.cli; tunery.cli._register()",
    "tunery.config": "import tunery.config, tunery.errors, tunery.types, tunery.paths, tunery.host",
}


@pytest.mark.parametrize("module", sorted(NO_TORCH_AT_IMPORT))
def test_importing_loads_no_torch(module):
    code = (f"{NO_TORCH_AT_IMPORT[module]}\nimport sys\n"
            "print(' '.join(sorted(m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {module} loads {result.stdout.strip()}"
