"""Stage skipping: same configuration skips, a changed setting reruns that stage and those after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.runner import Stage, StageOutcome, execute_plan, plan_stages


def run_stages(stages: list[Stage], run_dir: Path, only: list[str] | None = None,
               force: tuple[str, ...] = ()) -> list[StageOutcome]:
    """Plan, then execute, in one process (what ``run_pipeline`` does around its checks)."""
    return execute_plan(plan_stages(stages, run_dir, only, force), run_dir)


def _chain(run_dir: Path, settings: dict[str, int], calls: list[str]) -> list[Stage]:
    def make(name: str, deps: tuple[str, ...]) -> Stage:
        def run() -> None:
            calls.append(name)
            (run_dir / f"{name}.out").write_text(str(settings[name]))
        return Stage(name=name, run=run, settings=lambda: {"value": settings[name]},
                     outputs=lambda: [f"{name}.out"], depends_on=lambda: deps)
    return [make("a", ()), make("b", ("a",)), make("c", ("b",))]


def test_second_run_skips_everything(tmp_path: Path) -> None:
    settings, calls = {"a": 1, "b": 1, "c": 1}, []
    run_stages(_chain(tmp_path, settings, calls), tmp_path)
    outcomes = run_stages(_chain(tmp_path, settings, calls), tmp_path)
    assert calls == ["a", "b", "c"]
    assert [o.status for o in outcomes] == ["skipped"] * 3


def test_changed_setting_reruns_that_stage_and_later_ones(tmp_path: Path) -> None:
    settings, calls = {"a": 1, "b": 1, "c": 1}, []
    run_stages(_chain(tmp_path, settings, calls), tmp_path)
    calls.clear()
    settings["b"] = 2
    outcomes = run_stages(_chain(tmp_path, settings, calls), tmp_path)
    assert calls == ["b", "c"]
    assert [o.status for o in outcomes] == ["skipped", "ran", "ran"]


def test_missing_output_reruns_the_stage(tmp_path: Path) -> None:
    settings, calls = {"a": 1, "b": 1, "c": 1}, []
    run_stages(_chain(tmp_path, settings, calls), tmp_path)
    calls.clear()
    (tmp_path / "c.out").unlink()
    run_stages(_chain(tmp_path, settings, calls), tmp_path)
    assert calls == ["c"]


def test_stage_alone_needs_its_upstream(tmp_path: Path) -> None:
    settings, calls = {"a": 1, "b": 1, "c": 1}, []
    with pytest.raises(RuntimeError, match="needs the outputs of stage 'b'"):
        run_stages(_chain(tmp_path, settings, calls), tmp_path, only=["c"])
    assert calls == []
    run_stages(_chain(tmp_path, settings, calls), tmp_path, only=["a", "b"])
    run_stages(_chain(tmp_path, settings, calls), tmp_path, only=["c"])
    assert calls == ["a", "b", "c"]


def test_failed_stage_leaves_no_marker(tmp_path: Path) -> None:
    settings, calls = {"a": 1, "b": 1, "c": 1}, []
    stages = _chain(tmp_path, settings, calls)

    def boom() -> None:
        raise KeyboardInterrupt

    broken = [stages[0], Stage("b", boom, stages[1].settings, stages[1].outputs, stages[1].depends_on), stages[2]]
    with pytest.raises(KeyboardInterrupt):
        run_stages(broken, tmp_path)
    calls.clear()
    run_stages(_chain(tmp_path, settings, calls), tmp_path)
    assert calls == ["b", "c"]


def test_unknown_stage_name_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        run_stages(_chain(tmp_path, {"a": 1, "b": 1, "c": 1}, []), tmp_path, only=["nope"])
