"""Imports flow one way: the core imports none of its front ends, and no core modules import each other."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FRONT_ENDS = ("adapters", "napari_plugin")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in (ROOT / "medsam").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path) -> set[str]:
    """Every module named by an absolute import in ``path``, lazy (in-function) ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_core_never_imports_a_front_end():
    offenders = {
        name: sorted(n for n in _imports(path) if n.split(".")[0] in FRONT_ENDS)
        for name, path in _modules().items()
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_modules_form_no_import_cycle():
    mods = _modules()
    graph = {m: {n for n in _imports(p) if n in mods and n != m} for m, p in mods.items()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


HIDE_ADAPTERS = textwrap.dedent(
    """
    import importlib.abc, sys

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "adapters" or name.startswith("adapters."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    """
)


MAX_LINES = 500  # STYLE.md: a file over about 500 lines is a sign to split


def test_no_module_is_over_500_lines():
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for package in ("medsam", "adapters", "napari_plugin")
        for path in (ROOT / package).rglob("*.py")
    }
    assert len(sizes) > 50
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_core_works_without_the_adapters_package(tmp_path, sample_data):
    """With ``adapters`` unimportable: ``import medsam`` and its commands work, ``finetune`` is
    simply absent, and an adapter file is refused with one line and exit code 2."""
    script = HIDE_ADAPTERS + textwrap.dedent(
        f"""
        import medsam, medsam.cli, medsam.volume, medsam.monai
        from medsam.cli import main
        assert "adapters" not in sys.modules
        assert main(["models"]) == 0
        try:
            main(["finetune", "--help"])
        except SystemExit as exc:
            assert exc.code == 2, exc.code  # argparse: no such command
        rc = main(["segment", {str(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz")!r},
                   "-o", {str(tmp_path / "out.nii.gz")!r}, "--box", "24:44,27,104,81",
                   "--adapter", {str(tmp_path / "a.safetensors")!r}])
        assert rc == 2, rc
        """
    )
    (tmp_path / "a.safetensors").write_bytes(b"x")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "litemedsam" in proc.stdout
    err = [line for line in proc.stderr.splitlines() if line.startswith("medsam segment: error:")]
    assert len(err) == 1 and "a.safetensors" in err[0] and "medsam-monai[train]" in err[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.nii.gz").exists()
