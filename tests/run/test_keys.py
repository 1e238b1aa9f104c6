"""Stage keys, statuses and precisions: one spelling, in run/keys.py, and every name on disk round-trips."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from edgetl.errors import RunFolderError
from edgetl.run.keys import DONE, Precision, RunState, StageKey, StageKind, Status, is_done

REPO = Path(__file__).resolve().parents[2]
FIXTURE_RUN = REPO / "tests" / "fixtures" / "old_run" / "run"


@pytest.mark.parametrize("name", ["finetune", "prune", "onnx", "bench", "intel-cpu:int8", "jetson:fp16",
                                  "jetson:int8:engine", "nvidia-gpu:fp32:engine"])
def test_every_name_edgetl_writes_round_trips(name):
    key = StageKey.parse(name)
    assert str(key) == name and StageKey.parse(str(key)) == key
    assert (key.target is None) == (key.kind not in (StageKind.BUILD, StageKind.ENGINE))


def test_names_recorded_by_an_older_edgetl_parse():
    stages = json.loads((FIXTURE_RUN / "edgetl.json").read_text())["stages"]
    assert {str(StageKey.parse(name)) for name in stages} == set(stages)
    assert {StageKey.parse(n).kind for n in stages} >= {StageKind.FINETUNE, StageKind.ONNX, StageKind.BUILD}
    assert {record["status"] for record in stages.values()} <= set(Status.values())


@pytest.mark.parametrize("name", ["", "tune", "package", "engine", "a:b:c", "jetson:int8:plan", ":int8", "x::engine"])
def test_names_no_edgetl_writes_are_refused(name):
    with pytest.raises(RunFolderError, match="unknown stage name"):
        StageKey.parse(name)


def test_engine_is_compiled_from_its_build():
    engine = StageKey.engine("jetson", "int8")
    assert engine.built_from == StageKey.build("jetson", "int8") and str(engine.built_from) == "jetson:int8"
    with pytest.raises(ValueError, match="needs target and precision"):
        StageKey(StageKind.BUILD)
    with pytest.raises(ValueError, match="takes no target"):
        StageKey(StageKind.ONNX, "jetson", "int8")


def test_enums_equal_and_print_as_their_json_strings():
    assert Status.BUDGET_MISSED == "budget-missed" and f"{Status.BUDGET_MISSED}" == "budget-missed"
    assert json.dumps({"s": Status.COMPLETE, "p": Precision.INT8}) == '{"s": "complete", "p": "int8"}'
    assert str(RunState.STALE) == "stale"
    assert DONE == {Status.COMPLETE, Status.BUDGET_MISSED}
    assert [is_done(s) for s in ("complete", "budget-missed", "failed", "running", None)] == [True, True, False,
                                                                                               False, False]


# -- zero string literals naming a stage or a status outside run/keys.py ----------------------------------------
SPELLED = set(Status.values()) | set(RunState.values()) | {"finetune", "prune", "onnx", "bench"}
STAGE_CALLS = {"stage", "require", "completed", "done", "begin", "finish", "fail", "reopen", "StageLock",
               "stage_busy", "require_current", "stale_reason", "run_stage", "add_artifact", "recorded_files",
               "rerun_hint", "parse"}


def _names_a_status(target: ast.AST) -> bool:
    name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")
    return name.endswith("STAGE") or name in ("status", "state")


def _literal_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants used as a stage name or a status: an argument of the stage API, compared with a
    status/state/stage, assigned to a STAGE/status name or keyword; and any ':engine' / 'budget-missed'."""
    found = []
    docs = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        consts: list[ast.AST] = []
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in STAGE_CALLS:
                consts += node.args[:2]
            consts += [k.value for k in node.keywords if k.arg in ("status", "stage", "state")]
        elif isinstance(node, ast.Compare):
            text = ast.unparse(node)
            if any(word in text for word in ("status", "state", "stage")):
                consts += [node.left, *node.comparators]
                consts += [e for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts]
        elif isinstance(node, ast.Assign) and any(_names_a_status(t) for t in node.targets):
            consts.append(node.value)
        elif isinstance(node, ast.Dict):
            consts += [v for k, v in zip(node.keys, node.values)
                       if isinstance(k, ast.Constant) and k.value in ("status", "stage", "state")]
        for const in consts:
            if isinstance(const, ast.Constant) and const.value in SPELLED:
                found.append((const.lineno, const.value))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs and (
                ":engine" in node.value or node.value == "budget-missed"):
            found.append((node.lineno, node.value))
    return found


def test_no_stage_or_status_spelled_outside_keys():
    hits = []
    for path in sorted((REPO / "edgetl").rglob("*.py")):
        if path.relative_to(REPO).as_posix() == "edgetl/run/keys.py":
            continue
        hits += [f"{path.relative_to(REPO)}:{line}: {value!r}" for line, value in _literal_uses(ast.parse(path.read_text()))]
    assert hits == []


def test_the_literal_check_finds_what_it_should():
    code = ('manifest.stage("finetune")\nif record["status"] == "complete": pass\nSTAGE = "prune"\n'
            'x = f"{t}:{p}:engine"\nStageLock(run, "onnx")\nst.status = "budget-missed"\n'
            'if rec.get("state") in ("stale", "busy"): pass\n')
    assert sorted(v for _, v in _literal_uses(ast.parse(code))) == sorted(
        ["finetune", "complete", "prune", ":engine", "onnx", "budget-missed", "budget-missed", "stale", "busy"])
