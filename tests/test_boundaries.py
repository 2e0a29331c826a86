"""The boundaries between modules hold (read from the source, nothing runs): no module of app/ or
deployments/ reads another object's leading-underscore attribute or imports another module's private name,
and the model imports no adapter-format module (it calls the LoRA layer, which knows no file format)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "deployments", "kernels")
# torch offers no public way to make a stand-alone gloo group bound to a chosen interface (the control
# channel must not be torch.distributed's default group): its options object is set up by hand.
ALLOWED = {("deployments/tp.py", "_Options"), ("deployments/tp.py", "_devices"), ("deployments/tp.py", "_timeout")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_accesses(path: Path) -> list[str]:
    """`obj._name` where obj is not self / cls / a class or function of this module, and `from
    <our module> import _name`, as 'file:line: code'."""
    tree = ast.parse(path.read_text())
    own = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)}
    rel = path.relative_to(REPO).as_posix()
    found = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and _private(n.attr) and (rel, n.attr) not in ALLOWED:
            if isinstance(n.value, ast.Name) and n.value.id in ("self", "cls", *own):
                continue
            found.append(f"{rel}:{n.lineno}: {ast.unparse(n)}")
        if isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] in PACKAGES:
            found += [f"{rel}:{n.lineno}: from {n.module} import {a.name}" for a in n.names if _private(a.name)]
    return found


def test_no_module_reads_another_modules_private_names():
    files = sorted(p for d in ("app", "deployments") for p in (REPO / d).rglob("*.py"))
    assert len(files) > 20
    assert [hit for f in files for hit in private_accesses(f)] == []


def test_the_check_finds_a_private_access(tmp_path, monkeypatch):
    """The check above can fail: another object's private attribute and a private import are found."""
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    src = tmp_path / "deployments" / "x.py"
    src.parent.mkdir()
    src.write_text(
        "from app.runner import _helper\n"
        "class A:\n"
        "    def f(self, runner):\n"
        "        self._ok = A._also_ok\n"
        "        return runner._host_batch(self._ok)\n"
    )
    assert private_accesses(src) == [
        "deployments/x.py:1: from app.runner import _helper",
        "deployments/x.py:5: runner._host_batch",
    ]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return mods | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}


def test_the_model_and_the_lora_layer_import_no_adapter_format_module():
    for f in [*(REPO / "app" / "model").glob("*.py"), REPO / "app" / "lora" / "layer.py"]:
        assert "app.lora.adapter" not in _imports(f), f
    assert "app.lora.layer" in _imports(REPO / "app" / "model" / "llama.py")
