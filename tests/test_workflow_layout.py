"""The package's shape: one subpackage per stage of the DAG, no import cycles, small modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "lossgeom"
MAX_LINES = 500
# stage subpackage -> the rule file that calls it
STAGES = {
    "toy": "toy.smk",
    "generation": "rollouts.smk",
    "training": "train.smk",
    "geometry": "geometry.smk",
    "behaviour": "behaviour.smk",
    "claims": "claims.smk",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def intra_package_imports(path: Path, top_level: bool = False) -> set[str]:
    """Modules of lossgeom that ``path`` imports at any level (module top or inside functions); with
    ``top_level``, at module level only."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    tree = ast.parse(path.read_text())
    for node in tree.body if top_level else ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("lossgeom"):
                out.add(target)
                for alias in node.names:  # ``from . import lowrank`` imports a module
                    out.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lossgeom")}
    return out


def module_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = {d for d in intra_package_imports(path) if d in files and d != name}
        # a package's own __init__ importing its submodules is not a cycle through the package
        graph[name] = {d for d in deps if not (path.name == "__init__.py" and d.startswith(name + "."))}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles():
    graph = module_graph()
    assert len(graph) > 30
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_ground_floor_does_not_import_stages():
    """config, methods, labels, fsutil, devices, modeling, losses/ and data/ sit below every stage."""
    graph = module_graph()
    floor = [
        "lossgeom.config",
        "lossgeom.methods",
        "lossgeom.fsutil",
        "lossgeom.devices",
        "lossgeom.modeling",
        "lossgeom.labels",
    ]
    floor += [m for m in graph if m.startswith("lossgeom.losses")]  # the loss registry: read by config and training
    floor += [m for m in graph if m.startswith("lossgeom.data")]
    for m in floor:
        stages = {d for d in graph[m] if d.split(".")[1] in STAGES}
        assert not stages, f"{m} imports stage modules {sorted(stages)}"


SHARED_FLOOR = ("engines", "lora")  # what several stages share: generation engines, LoRA reading and maths


def test_shared_floor_imports_only_downward():
    """engines/ and lora/ sit above the ground floor and below every stage: they import neither a
    stage nor the figures (lora/ not even engines/)."""
    graph = module_graph()
    above = set(STAGES) | {"figures", "cli"}
    for m, deps in graph.items():
        part = m.split(".")[1] if "." in m else ""
        if part not in SHARED_FLOOR:
            continue
        up = sorted(d for d in deps if d.split(".")[1] in above or (part == "lora" and d.split(".")[1] == "engines"))
        assert not up, f"{m} imports {up}"


def test_stages_do_not_import_each_other():
    """A stage imports the floors only; what two stages share lives on the shared floor. Only the CLI
    (the top) imports stages."""
    graph = module_graph()
    stages = set(STAGES) | {"figures"}
    for m, deps in graph.items():
        part = m.split(".")[1] if "." in m else ""
        if part not in stages:
            continue
        other = sorted(d for d in deps if d.split(".")[1] in stages and d.split(".")[1] != part)
        assert not other, f"{m} imports other stages {other}"


def test_measures_are_plug_ins_read_at_config_time():
    """lossgeom.measures (the measure registry and its modules, read by the config) imports no stage at module
    level; inside the functions that run a measure it may import the behaviour stage (which runs them) and the
    figures (which draw them), nothing else above the floors. No stage but behaviour imports it."""
    graph = module_graph()
    measures = {m: p for m, p in ((module_name(p), p) for p in (PKG / "measures").glob("*.py"))}
    assert {"lossgeom.measures.accuracy", "lossgeom.measures.samples"} <= set(measures)
    for name, path in measures.items():
        top = {d for d in intra_package_imports(path, True) if d.split(".")[1] in set(STAGES) | {"figures", "cli"}}
        assert not top, f"{name} imports {sorted(top)} at module level: import it where the measure runs"
        up = {d for d in graph[name] if d.split(".")[1] in (set(STAGES) - {"behaviour"}) | {"cli"}}
        assert not up, f"{name} imports {sorted(up)}"
    users = {m for m, deps in graph.items() if any(d.startswith("lossgeom.measures") for d in deps)}
    stages = {m for m in users if m.split(".")[1] in set(STAGES) | {"figures"}}
    assert {m.split(".")[1] for m in stages} <= {"behaviour"}, sorted(stages)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("stage, rule_file", sorted(STAGES.items()))
def test_stage_subpackages_name_their_rule_file(stage, rule_file):
    doc = ast.get_docstring(ast.parse((PKG / stage / "__init__.py").read_text()))
    assert doc and f"workflow/rules/{rule_file}" in doc
    assert (ROOT / "workflow" / "rules" / rule_file).is_file()


def test_every_rule_file_has_a_subpackage():
    rule_files = {p.name for p in (ROOT / "workflow" / "rules").glob("*.smk")} - {"common.smk"}
    assert rule_files == set(STAGES.values())


def test_cli_subcommands_are_unchanged():
    """The public CLI: subcommand names used by the rules all exist in the parser."""
    from lossgeom.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    used = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        used |= set(re.findall(r'"lossgeom ([a-z-]+)', smk.read_text()))
    assert used and used <= set(sub.choices)


def test_figure_rules_track_exactly_the_figure_modules_they_run():
    """One figure rule per figure module, tracking it and figures/common.py (``figure_code("<module>")`` in
    workflow/rules/common.smk), and no figure module imports another but common.py: editing a module
    reruns exactly the figures drawn by it."""
    graph = module_graph()
    figure_modules = {m for m in graph if m.startswith("lossgeom.figures.")}
    analyses = sorted(m.rsplit(".", 1)[1] for m in figure_modules - {"lossgeom.figures.common"})
    for name in analyses:
        assert graph[f"lossgeom.figures.{name}"] & figure_modules == {"lossgeom.figures.common"}, name
    tracked = []
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        tracked += re.findall(r'figure_code\("(\w+)"\)', smk.read_text())
    # a measure's figure rule is made from its module (workflow/rules/behaviour.smk), tracking its figure_module
    from lossgeom.measures import MEASURES

    tracked += [m.figure_module for m in MEASURES.values() if m.figure_module]
    assert "figure_code(_measure.figure_module)" in (ROOT / "workflow" / "rules" / "behaviour.smk").read_text()
    assert sorted(tracked) == analyses
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert re.search(r'def figure_code\(module\):.*?for name in \(module, "common"\)', common, re.S)


@pytest.mark.heavy
def test_functions_stay_short_or_say_why():
    """No function runs over 60 lines unless its docstring says why ("Long because ...")."""
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                if "Long because" not in (ast.get_docstring(node) or ""):
                    long.append(f"{path.relative_to(PKG)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def _modules() -> set[str]:
    """Every module and subpackage of lossgeom, dotted (``lossgeom.behaviour.stats``, ``lossgeom.behaviour``)."""
    return {module_name(p) for p in PKG.rglob("*.py")}


def _imported(source: str, modules: set[str]) -> set[str]:
    """The modules of lossgeom a test's ``source`` imports, at any level: ``import lossgeom.x``, ``from
    lossgeom.x import y`` (``lossgeom.x``, and ``lossgeom.x.y`` where that is a module) and
    ``importlib.import_module("lossgeom.x")``."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            out.add(str(node.args[0].value))
    return out & modules


def _subject(stem: str, modules: set[str]) -> tuple[str, set[str]] | None:
    """What tests/test_<stem>.py is named for, and the modules one of which it must import: the longest
    leading run of the stem's words that names a module (anywhere in lossgeom: any module of that name
    will do) or a subpackage (it or any of its modules), read on into a module of that subpackage where
    the next words name one (``figures_behaviour``: lossgeom.figures.behaviour; ``behaviour_stats``:
    lossgeom.behaviour.stats). ``workflow`` needs no import (its tests run the workflow); None: named for
    nothing."""
    packages = {module_name(p) for p in PKG.rglob("__init__.py")}
    words = stem.split("_")
    for k in range(len(words), 0, -1):
        name = "_".join(words[:k])
        if name == "workflow":
            return name, set()
        named = {m for m in modules if m != "lossgeom" and m.rsplit(".", 1)[-1] == name}
        if not named:
            continue
        for j in range(len(words), k, -1):
            inner = {f"{m}.{'_'.join(words[k:j])}" for m in named & packages} & modules
            if inner:
                return f"{name}.{'_'.join(words[k:j])}", inner
        return name, {m for m in modules if any(m == n or m.startswith(n + ".") for n in named)}
    return None


def _naming_problem(file_name: str, source: str, modules: set[str]) -> str | None:
    """Why tests/``file_name`` (its text: ``source``) is not named for what it tests; None when it is."""
    found = _subject(Path(file_name).stem.removeprefix("test_"), modules)
    if found is None:
        return f"{file_name} is named for no module of lossgeom (nor 'workflow')"
    subject, accepted = found
    imported = _imported(source, modules)
    if accepted and not accepted & imported:
        return f"{file_name} is named for {subject} but imports none of it (it imports {sorted(imported)})"
    return None


def test_a_module_s_tests_are_found_by_its_name():
    """Each tests/test_<name>[_<topic>].py is named for the module, subpackage or workflow it tests, and
    imports it, so `ls tests/test_<module>*` finds a module's tests (:func:`_subject` reads the name)."""
    modules = _modules()
    problems = [_naming_problem(p.name, p.read_text(), modules) for p in sorted((ROOT / "tests").glob("test_*.py"))]
    assert not [p for p in problems if p], [p for p in problems if p]


def test_a_test_file_named_for_nothing_is_caught():
    modules = _modules()
    names = {m.rsplit(".", 1)[-1] for m in modules}
    assert not {"crash", "crash_points"} & names and {"grading", "openai_api"} <= names
    assert "named for no module" in _naming_problem("test_crash_points.py", "", modules)
    assert _naming_problem("test_workflow_crash_points.py", "", modules) is None  # runs the workflow
    inside = "def test_x():\n    from lossgeom.engines import openai_api\n"  # an import inside a test counts
    assert _naming_problem("test_openai_api.py", inside, modules) is None


def test_a_test_file_named_for_a_module_it_does_not_import_is_caught():
    modules = _modules()
    # issue 33: the tests of behaviour/sampled_stats.py were named as if for behaviour/stats.py
    source = "from lossgeom.behaviour.sampled_stats import behaviour_statistics\n"
    assert "named for behaviour.stats but imports none of it" in _naming_problem(
        "test_behaviour_stats.py", source, modules
    )
    assert _naming_problem("test_sampled_stats.py", source, modules) is None
    assert "named for labels" in _naming_problem("test_labels.py", "from lossgeom.config import load\n", modules)
    # a subpackage's tests may import any of its modules; a module named alike anywhere will do
    assert _naming_problem("test_geometry_outputs.py", "import lossgeom.geometry.tables\n", modules) is None
    assert _naming_problem("test_adapters.py", "from lossgeom.engines.adapters import x\n", modules) is None
    assert "named for figures.geometry" in _naming_problem(
        "test_figures_geometry.py", "from lossgeom.figures.spectrum import base_spectrum_figure\n", modules
    )
