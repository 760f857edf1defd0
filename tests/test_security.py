"""Security defaults (issue 6): no remote code, no unpickling, safetensors out, checked paths.

* ``trust_remote_code`` is off unless the user turns it on: a model folder whose config asks for its own
  Python code is refused by the seq2seq and the encoder module, and the code never runs.
* Checkpoints load with ``torch.load(weights_only=True)``: every ``torch.load`` in the project says so, and
  ``fit`` passes ``weights_only=True`` to Lightning's own checkpoint loading (Lightning 2.6 leaves it to
  torch's default otherwise); test_fit checks a checkpoint holding a pickled object is refused.
* Saved models are safetensors (no ``pytorch_model.bin``), and pickled weights are refused unless allowed
  (test_bad_inputs).
* No ``eval``/``exec``/pickle of user data anywhere in the code: a scan of every project ``.py`` file's
  syntax tree, and of every YAML under ``configs/`` for opt-ins.
* Paths from configs are resolved and checked before a stage runs (``pipeline.preflight``; the pipeline-level
  cases are in test_bad_inputs).
"""

from __future__ import annotations

import ast
import inspect
import json
import runpy
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.io import InputError
from helpers import TINY_T5_TOKENIZER, TOKENIZER_FILES, make_tiny_t5
from lightning_modules.encoder import EncoderModule
from lightning_modules.loading import load_pretrained, load_tokenizer
from lightning_modules.seq2seq import Seq2SeqModule
from pipeline.preflight import check_paths

ROOT = Path(__file__).resolve().parents[1]
PROJECT_CODE = ("train.py", "core", "lightning_modules", "datamodules", "callbacks", "retrieval", "pipeline", "benchmarks",
                "tests")
REMOTE_CODE = '''import pathlib
pathlib.Path(__file__).with_name("EXECUTED").write_text("remote code ran")
from transformers import PretrainedConfig


class EvilConfig(PretrainedConfig):
    model_type = "evil-t5"
'''


# ----------------------------------------------------------------------------------- remote code
@pytest.mark.parametrize("function", [Seq2SeqModule.__init__, EncoderModule.__init__, load_pretrained,
                                      load_tokenizer])
def test_trust_remote_code_defaults_to_off(function) -> None:
    assert inspect.signature(function).parameters["trust_remote_code"].default is False


@pytest.fixture
def remote_code_model(tmp_path: Path) -> Path:
    """A model folder whose config.json asks transformers to import its own Python files."""
    folder = tmp_path / "remote"
    folder.mkdir()
    code = "configuration_evil.EvilConfig"
    (folder / "config.json").write_text(json.dumps({"model_type": "evil-t5", "auto_map": {
        "AutoConfig": code, "AutoModel": code, "AutoModelForSeq2SeqLM": code}}))
    (folder / "configuration_evil.py").write_text(REMOTE_CODE)
    for name in TOKENIZER_FILES:
        shutil.copy(TINY_T5_TOKENIZER / name, folder / name)
    return folder


@pytest.mark.parametrize("build", [lambda path: Seq2SeqModule(model_name_or_path=str(path)),
                                   lambda path: EncoderModule(str(path))], ids=["seq2seq", "encoder"])
def test_a_model_asking_to_run_its_own_code_is_refused_and_the_code_never_runs(remote_code_model: Path, build) -> None:
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        build(remote_code_model)
    assert not (remote_code_model / "EXECUTED").exists()
    runpy.run_path(str(remote_code_model / "configuration_evil.py"))  # the probe works: running it leaves the mark
    assert (remote_code_model / "EXECUTED").read_text() == "remote code ran"


# ----------------------------------------------------------------------------------- what is written
def test_saved_models_are_safetensors_only(tmp_path: Path) -> None:
    module = Seq2SeqModule(model_name_or_path=str(make_tiny_t5(tmp_path / "t5", num_layers=1, num_decoder_layers=1)))
    saved = module.save_pretrained(tmp_path / "saved")
    names = {path.name for path in saved.iterdir()}
    assert "model.safetensors" in names
    assert not names & {"pytorch_model.bin", "pytorch_model.bin.index.json", "training_args.bin"}
    assert not any(name.endswith((".bin", ".pkl", ".pt", ".pth")) for name in names)


def test_fit_loads_lightning_checkpoints_with_weights_only() -> None:
    from pipeline.fit import parse_lightning_config

    config = parse_lightning_config(["fit", "--model.init_args.model_name_or_path", "unused",
                                     "--data.init_args.kept_file", "k.jsonl", "--data.init_args.dataset.path", "beir"])
    assert config.fit.weights_only is True


# ----------------------------------------------------------------------------------- code scan
def _project_files() -> list[Path]:
    files = []
    for name in PROJECT_CODE:
        path = ROOT / name
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return files


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str) -> list[str]:
    """Calls that can run code from data: eval/exec/compile, pickle-family loads, torch.load without
    ``weights_only=True``, yaml.load without a safe loader, numpy loads with ``allow_pickle=True``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if isinstance(func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
            found.append(f"line {node.lineno}: {name}()")
        elif owner in ("pickle", "dill", "marshal", "shelve", "joblib") and name.startswith(("load", "open")):
            found.append(f"line {node.lineno}: {owner}.{name}()")
        elif owner == "torch" and name == "load" and not _is_true(_keyword(node, "weights_only")):
            found.append(f"line {node.lineno}: torch.load() without weights_only=True")
        elif owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
            loader = _keyword(node, "Loader")
            safe = isinstance(loader, ast.Attribute) and loader.attr in ("SafeLoader", "CSafeLoader")
            if name != "load" or not safe:
                found.append(f"line {node.lineno}: yaml.{name}() without a safe loader")
        elif owner in ("np", "numpy") and name == "load" and _is_true(_keyword(node, "allow_pickle")):
            found.append(f"line {node.lineno}: numpy.load(allow_pickle=True)")
    return found


def test_the_scan_finds_what_it_looks_for() -> None:
    bad = ("eval(x)\nexec(y)\npickle.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\nyaml.load(t)\n"
           "np.load(p, allow_pickle=True)\n")
    assert len(unsafe_calls(bad)) == 7
    good = ("model.eval()\ntorch.load(p, weights_only=True)\nyaml.safe_load(t)\nnp.load(p)\n"
            "yaml.load(t, Loader=yaml.SafeLoader)\n")
    assert unsafe_calls(good) == []


def test_no_code_runs_from_data_anywhere_in_the_project() -> None:
    files = _project_files()
    assert len(files) > 40  # the scan sees the project
    problems = {str(path.relative_to(ROOT)): found for path in files
                if (found := unsafe_calls(path.read_text(encoding="utf-8")))}
    assert not problems


def test_no_shipped_config_opts_into_remote_code_or_pickled_weights() -> None:
    import yaml

    def opt_ins(node, where: str):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("trust_remote_code", "allow_pickle_weights") and value:
                    yield f"{where}.{key}"
                yield from opt_ins(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from opt_ins(value, f"{where}[{index}]")

    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert configs
    found = [hit for path in configs for hit in opt_ins(yaml.safe_load(path.read_text()), path.name)]
    assert not found


# ----------------------------------------------------------------------------------- paths
def _ctx(run_dir: Path, data: Path, source: str = "extractive", file: Path | None = None) -> SimpleNamespace:
    return SimpleNamespace(run_dir=run_dir, data=SimpleNamespace(path=data),
                           stage1=SimpleNamespace(source=source, file=file))


def test_config_paths_are_resolved_and_checked(tmp_path: Path) -> None:
    data = tmp_path / "beir"
    data.mkdir()
    check_paths(_ctx(tmp_path / "runs" / "a", data))  # a run directory that does not exist yet is fine
    check_paths(_ctx(tmp_path / "runs" / ".." / "b", data))  # '..' is the user's own: resolved, allowed
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="field 'run_dir': run_dir .* is a file"):
        check_paths(_ctx(tmp_path / "file", data))
    with pytest.raises(InputError, match="field 'data.path': BEIR folder is a file"):
        check_paths(_ctx(tmp_path / "run", tmp_path / "file"))
    with pytest.raises(InputError, match="field 'data.path': BEIR folder not found"):
        check_paths(_ctx(tmp_path / "run", tmp_path / "missing"))
    for run_dir, folder in ((data / "run", data), (tmp_path / "outer", tmp_path / "outer" / "beir"),
                            (tmp_path / "x" / ".." / "beir", data)):  # inside, around, the same after resolving
        folder.mkdir(parents=True, exist_ok=True)
        with pytest.raises(InputError, match="overlap"):
            check_paths(_ctx(run_dir, folder))
    with pytest.raises(InputError, match="stage1.file'?: is a folder"):
        check_paths(_ctx(tmp_path / "run", data, source="file", file=data))
    with pytest.raises(InputError, match="synthetic file not found"):
        check_paths(_ctx(tmp_path / "run", data, source="file", file=tmp_path / "none.jsonl"))
