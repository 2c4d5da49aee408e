"""The direction of the package's imports, as docs/architecture.md states it: the lower layers know nothing of
the higher ones. Read from the source (every ``import`` statement, lazy ones inside functions included), so a
new import against the grain fails here rather than in a reader's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "alexnet"

# What each lower layer may import of the project (its own modules always). Keyed by the first name under
# ``alexnet``: a subpackage (``models``) or a top-level module (``errors``).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "files": {"errors"},
    "stopping": {"errors", "files"},
    "models": {"errors", "files"},
    "data": {"errors", "files", "stopping"},
    # images → a model's inputs by its weights' preprocessing, and its top-k (the softmax as evaluate takes it)
    "predict": {"errors", "models", "data", "evaluate"},
    "inputs": {"errors", "stopping", "models", "data", "predict"},
    # tables and features of a network: models and data, read through the model-input modules above
    "analysis": {"errors", "files", "stopping", "models", "data", "predict", "inputs"},
}

# Module → project modules it may import beyond its layer's ALLOWED, and why.
EXCEPTIONS: dict[str, dict[str, str]] = {
    # an ensemble's members must take the same input, which their weights' preprocessing records
    "alexnet.models.ensemble": {"alexnet.predict": "members' preprocessing compared"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def project_imports(path: Path) -> set[str]:
    """Every ``alexnet…`` module that ``path`` imports, at the top or inside a function."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        out.update(n for n in names if n == "alexnet" or n.startswith("alexnet."))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_import_reader_sees_lazy_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "import os\nfrom alexnet.errors import DataError\ndef g():\n    from alexnet.predict import x\n"
    )
    assert project_imports(f) == {"alexnet.errors", "alexnet.predict"}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_lower_layers_import_only_what_lies_beneath_them(layer: str) -> None:
    against: list[str] = []
    files = [p for p in MODULES if layer_of(module_name(p)) == layer]
    assert files, f"no modules found for layer {layer!r}"
    for path in files:
        mod = module_name(path)
        allowed_here = EXCEPTIONS.get(mod, {})
        for imported in sorted(project_imports(path)):
            target = layer_of(imported)
            if target in {layer, *ALLOWED[layer]} or imported in allowed_here:
                continue
            against.append(f"{mod} imports {imported}")
    assert not against, "imports against the layering of docs/architecture.md:\n" + "\n".join(against)


def test_the_listed_exceptions_are_still_needed() -> None:
    # an exception the code no longer uses would silently allow the import again
    for mod, targets in EXCEPTIONS.items():
        path = PACKAGE.joinpath(*mod.split(".")[1:]).with_suffix(".py")
        assert set(targets) <= project_imports(path), mod


def test_only_the_command_line_imports_the_commands_and_the_server() -> None:
    against = [
        f"{module_name(p)} imports {i}"
        for p in MODULES
        if layer_of(module_name(p)) not in {"cli", "serve", "__main__"}  # `python -m alexnet` is the command
        for i in project_imports(p)
        if layer_of(i) in {"cli", "serve"}
    ]
    assert not against, "\n".join(against)


def test_each_subpackage_loads_on_first_use_as_an_attribute() -> None:
    """`alexnet.visualize.deconvnet(...)` and `alexnet.inputs.prepare(...)` work after a bare `import alexnet`."""
    import importlib

    import alexnet

    on_disk = {
        p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir() if not p.name.startswith("_")
    }
    assert on_disk >= alexnet._SUBPACKAGES
    for name in sorted(alexnet._SUBPACKAGES):
        assert getattr(alexnet, name) is importlib.import_module(f"alexnet.{name}")
