"""The rooms of the package and who may import whom (docs/architecture.md), checked on the source."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "puyu_jax"


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


MODULES = _modules()


def _imports(f: pathlib.Path) -> set[str]:
    """puyu_jax modules imported anywhere in a file (top level and inside functions)."""
    out = set()
    for n in ast.walk(ast.parse(f.read_text())):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("puyu_jax"):
            out.add(n.module)
            out.update(f"{n.module}.{a.name}" for a in n.names if f"{n.module}.{a.name}" in MODULES)
        elif isinstance(n, ast.Import):
            out.update(a.name for a in n.names if a.name.startswith("puyu_jax"))
    return {m for m in out if m in MODULES}


GRAPH = {m: _imports(f) for m, f in MODULES.items()}


def _room(m: str) -> str:
    parts = m.split(".")
    return parts[1] if len(parts) > 1 else ""


# room -> rooms its modules may import (besides their own); the shells (`cli` modules) may import anything
ALLOWED = {
    "assets": set(),
    "config": set(),
    "parallel": set(),
    "kernels": set(),
    "tokenizer": set(),
    "models": {"parallel", "assets"},
    "checkpoint": {"models"},
    "data": {"assets", "config", "tokenizer"},
    "pretrained": {"assets", "checkpoint", "config", "models", "quant", "tokenizer"},
    "train": {"checkpoint", "config", "data", "models", "parallel", "pretrained", "tokenizer"},
}
# readers of one format each: the loading room calls them, they never call it
READERS = ("puyu_jax.checkpoint", "puyu_jax.models", "puyu_jax.quant.model", "puyu_jax.quant.int4",
           "puyu_jax.quant.nf4", "puyu_jax.tokenizer", "puyu_jax.data")


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_room_imports_only_what_the_table_allows(room):
    bad = sorted((m, d) for m in GRAPH if _room(m) == room and not m.endswith(".cli")
                 for d in GRAPH[m] if _room(d) != room and _room(d) not in ALLOWED[room])
    assert not bad, f"{room} may import only {sorted(ALLOWED[room])}: {bad}"


def test_readers_never_import_the_loading_room():
    bad = sorted((m, d) for m in GRAPH if m.startswith(READERS) for d in GRAPH[m] if d == "puyu_jax.pretrained")
    assert not bad, bad


def test_no_import_cycle_through_the_loading_room():
    """Cycles through pretrained / checkpoint / models / parallel / nf4 (also via imports inside functions)."""
    watched = {"puyu_jax.pretrained", "puyu_jax.checkpoint", "puyu_jax.quant.nf4"} | {
        m for m in MODULES if _room(m) in ("models", "parallel")}

    def reaches(src: str, dst: str) -> bool:
        seen, todo = set(), [src]
        while todo:
            m = todo.pop()
            for d in GRAPH[m]:
                if d == dst:
                    return True
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return False

    cycles = sorted(m for m in watched if reaches(m, m))
    assert not cycles, f"import cycles through {cycles}"


def test_no_library_default_points_into_tests():
    """Dataclass field and function-argument defaults never name a path under tests/."""
    bad = []
    for m, f in MODULES.items():
        for n in ast.walk(ast.parse(f.read_text())):
            defaults = []
            if isinstance(n, ast.AnnAssign) and n.value is not None:
                defaults.append(n.value)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defaults += n.args.defaults + [d for d in n.args.kw_defaults if d is not None]
            bad += [f"{m}:{d.lineno}" for d in defaults
                    if isinstance(d, ast.Constant) and isinstance(d.value, str) and d.value.startswith("tests/")]
    assert not bad, bad
