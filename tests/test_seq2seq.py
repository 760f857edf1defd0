"""Seq2SeqModule with a tiny random T5 and a tiny warm-started BERT2BERT: generation, training, saving, errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader
from transformers import Adafactor, AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, EncoderDecoderModel

from helpers import make_tiny_bert2bert, make_tiny_t5, minilm_path
from lightning_modules.decoding import DecodingConfig
from lightning_modules.loading import ModelNotAvailableError
from lightning_modules.seq2seq import Seq2SeqModule, encode_inputs, encode_targets

DOCS = {
    "d1": "Fasting glucose rises in mice fed a high fat diet for twelve weeks.",
    "d2": "Vitamin D supplements did not change bone density in older adults.",
    "d3": "A short one.",
    "d4": "Regular exercise lowers resting heart rate and blood pressure over months of training in adults.",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny matmuls are dominated by thread synchronisation; on a shared 2-core machine one thread is 100x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"t5": make_tiny_t5(root / "t5"), "bert2bert": make_tiny_bert2bert(root / "bert2bert")}


def _module(path: Path, **kwargs) -> Seq2SeqModule:
    return Seq2SeqModule(str(path), **kwargs).eval()


def _predict_batch(module: Seq2SeqModule, doc_ids: list[str], tasks: list[str] | None = None) -> dict:
    tasks = tasks or ["question"] * len(doc_ids)
    batch = encode_inputs(module.tokenizer, [f"Ask about: {DOCS[d]}" for d in doc_ids], module.max_input_length)
    return {**batch, "doc_id": doc_ids, "task": tasks}


def _texts(module: Seq2SeqModule, doc_ids: list[str]) -> dict[tuple[str, int], str]:
    records = module.predict_step(_predict_batch(module, doc_ids))
    return {(r["doc_id"], r["sample_idx"]): r["text"] for r in records}


def _train_batch(module: Seq2SeqModule) -> dict[str, torch.Tensor]:
    batch = encode_inputs(module.tokenizer, [f"Ask about: {text}" for text in DOCS.values()], 64)
    targets = encode_targets(module.tokenizer, ["what rises in mice", "does vitamin d help bones",
                                                "what is short", "does exercise lower heart rate"], 16)
    width = max(map(len, targets))
    batch["labels"] = torch.tensor([ids + [-100] * (width - len(ids)) for ids in targets])
    return batch


def _loader(batch: dict[str, torch.Tensor]) -> DataLoader:
    return DataLoader([batch], batch_size=None)  # yields the ready-made batch once per epoch


def _trainer(**kwargs) -> Trainer:
    options = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False}
    return Trainer(**{**options, **kwargs})


@pytest.mark.parametrize("name", ["t5", "bert2bert"])
def test_predict_returns_num_samples_records_per_prompt_with_ids(models: dict[str, Path], name: str) -> None:
    module = _module(models[name], decoding=DecodingConfig(num_samples=3, max_new_tokens=6), model_label="tiny")
    records = module.predict_step(_predict_batch(module, ["d1", "d2"], ["question", "keywords"]))
    assert [(r["doc_id"], r["task"], r["sample_idx"]) for r in records] == [
        ("d1", "question", 0), ("d1", "question", 1), ("d1", "question", 2),
        ("d2", "keywords", 0), ("d2", "keywords", 1), ("d2", "keywords", 2)]
    assert all(r["model"] == "tiny" and isinstance(r["text"], str) and r["text"] for r in records)
    specials = set(module.tokenizer.all_special_tokens)
    assert not any(token in r["text"] for r in records for token in specials)



@pytest.mark.parametrize("name", ["t5", "bert2bert"])
def test_cross_attention_projections_run_once_per_prompt_with_the_same_texts(models: dict[str, Path], name: str,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """With 3 samples the decoder projects the encoder output (cross-attention keys and values) on the 4 prompts'
    rows, never on the 12 sample rows, and writes exactly the texts that projecting every row writes."""
    import lightning_modules.seq2seq as seq2seq

    module = _module(models[name], decoding=DecodingConfig(num_samples=3, max_new_tokens=8, top_p=None))
    decoder_linears = {id(layer) for layer in module.model.get_decoder().modules()
                       if isinstance(layer, torch.nn.Linear)}
    shapes: list[tuple[int, ...]] = []

    def recording(layer: torch.nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
        if id(layer) in decoder_linears:
            shapes.append(tuple(inputs.shape[:2]))
        return torch.nn.functional.linear(inputs, layer.weight, layer.bias)

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    batch = _predict_batch(module, list(DOCS))
    length = batch["input_ids"].shape[1]  # the encoder output's length: only cross-attention projects it
    shared = _texts(module, list(DOCS))
    assert shapes.count((len(DOCS), length)) >= 2 and (3 * len(DOCS), length) not in shapes
    shapes.clear()
    monkeypatch.setattr(seq2seq, "project_once_per_prompt", lambda *args: contextlib.nullcontext())
    assert _texts(module, list(DOCS)) == shared
    assert (3 * len(DOCS), length) in shapes and (len(DOCS), length) not in shapes  # the control: every row projected


@pytest.mark.parametrize("name", ["t5", "bert2bert"])
def test_samples_do_not_depend_on_batch_composition_or_order(models: dict[str, Path], name: str) -> None:
    module = _module(models[name], decoding=DecodingConfig(num_samples=2, max_new_tokens=8, top_p=None))
    together = _texts(module, ["d1", "d2", "d3", "d4"])
    alone = {key: text for doc in DOCS for key, text in _texts(module, [doc]).items()}
    reordered = _texts(module, ["d4", "d3", "d2", "d1"])
    assert together == alone == reordered
    reseeded = _module(models[name], decoding=DecodingConfig(num_samples=2, max_new_tokens=8, top_p=None, seed=1))
    assert _texts(reseeded, ["d1", "d2", "d3", "d4"]) != together
    assert len(set(together.values())) > 1  # samples of one document differ too


def test_beam_and_greedy_return_the_requested_outputs(models: dict[str, Path]) -> None:
    beam = _module(models["t5"], decoding=DecodingConfig(strategy="beam", num_beams=3, num_samples=2,
                                                         max_new_tokens=5))
    records = beam.predict_step(_predict_batch(beam, ["d1", "d2"]))
    assert [(r["doc_id"], r["sample_idx"]) for r in records] == [("d1", 0), ("d1", 1), ("d2", 0), ("d2", 1)]
    greedy = _module(models["t5"], decoding=DecodingConfig(strategy="greedy", max_new_tokens=5, min_new_tokens=5))
    texts = _texts(greedy, ["d1", "d3"])
    assert texts == {**_texts(greedy, ["d3"]), **_texts(greedy, ["d1"])}


def test_training_overfits_four_examples_and_logs_losses(models: dict[str, Path]) -> None:
    module = Seq2SeqModule(str(models["t5"]), learning_rate=3e-2)
    batch = _train_batch(module)
    with torch.no_grad():
        before = module.loss(batch).item()
    trainer = _trainer(max_steps=30, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=_loader(batch), val_dataloaders=_loader(batch))
    with torch.no_grad():
        after = module.loss(batch).item()
    assert after < 0.3 * before, (before, after)
    assert {"train/loss", "val/loss"} <= set(trainer.callback_metrics)


def test_default_optimizer_is_transformers_adafactor_with_fixed_rate(models: dict[str, Path]) -> None:
    optimizer = Seq2SeqModule(str(models["t5"])).configure_optimizers()
    assert isinstance(optimizer, Adafactor)
    assert optimizer.defaults["lr"] == 1e-4
    assert not optimizer.defaults["scale_parameter"] and not optimizer.defaults["relative_step"]
    assert not optimizer.defaults["warmup_init"]
    adamw = Seq2SeqModule(str(models["t5"]), optimizer="adamw", weight_decay=0.01).configure_optimizers()
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01


@pytest.mark.parametrize("name", ["t5", "bert2bert"])
def test_freeze_encoder_keeps_encoder_weights_after_a_step(models: dict[str, Path], name: str) -> None:
    module = Seq2SeqModule(str(models[name]), freeze_encoder=True, learning_rate=1e-2)
    encoder = {k: v.clone() for k, v in module.model.get_encoder().state_dict().items()}
    decoder = {k: v.clone() for k, v in module.model.get_decoder().state_dict().items()}
    frozen = {id(p) for p in module.model.get_encoder().parameters()}
    optimized = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert optimized and not optimized & frozen
    _trainer(max_steps=1).fit(module, train_dataloaders=_loader(_train_batch(module)))
    after = module.model.get_encoder().state_dict()
    assert all(torch.equal(encoder[k], after[k]) for k in encoder)
    changed = module.model.get_decoder().state_dict()
    assert any(not torch.equal(decoder[k], changed[k]) for k in decoder)


@pytest.mark.parametrize("name", ["t5", "bert2bert"])
def test_save_pretrained_reloads_with_same_generations(models: dict[str, Path], name: str, tmp_path: Path) -> None:
    module = _module(models[name], decoding=DecodingConfig(num_samples=2, max_new_tokens=6))
    with torch.no_grad():  # perturb so the saved weights differ from the source folder's
        for parameter in module.model.get_decoder().parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    target = tmp_path / "tuned"
    target.mkdir()
    (target / "stale.txt").write_text("old model")
    module.save_pretrained(target)
    assert not (target / "stale.txt").exists() and (target / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tuned"]  # no staging folder left behind
    reloaded = _module(target, decoding=DecodingConfig(num_samples=2, max_new_tokens=6))
    assert _texts(reloaded, ["d1", "d2"]) == _texts(module, ["d1", "d2"])
    assert type(AutoModelForSeq2SeqLM.from_pretrained(target)) is type(module.model)


def test_checkpoint_reloads_and_resumes_under_weights_only(models: dict[str, Path], tmp_path: Path) -> None:
    module = Seq2SeqModule(str(models["t5"]), decoding=DecodingConfig(num_samples=2, seed=5), learning_rate=1e-2)
    trainer = _trainer(max_epochs=1, default_root_dir=tmp_path, enable_checkpointing=True)
    trainer.fit(module, train_dataloaders=_loader(_train_batch(module)))
    path = trainer.checkpoint_callback.best_model_path
    restored = Seq2SeqModule.load_from_checkpoint(path, weights_only=True)
    assert restored.decoding == DecodingConfig(num_samples=2, seed=5) and restored.hparams.learning_rate == 1e-2
    assert all(torch.equal(a, b) for a, b in zip(module.model.state_dict().values(),
                                                 restored.model.state_dict().values()))
    resumed = _trainer(max_epochs=2, default_root_dir=tmp_path)
    resumed.fit(Seq2SeqModule(str(models["t5"])), train_dataloaders=_loader(_train_batch(module)), ckpt_path=path)
    assert resumed.current_epoch == 2 and resumed.global_step == 2


def test_fp16_is_refused_for_t5(models: dict[str, Path]) -> None:
    module = Seq2SeqModule(str(models["t5"]))
    with pytest.raises(ValueError, match="bf16-mixed"):
        _trainer(max_steps=1, precision="16-true").fit(module, train_dataloaders=_loader(_train_batch(module)))


def test_hub_name_offline_fails_fast_with_instructions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast means without a network attempt (retries are what take minutes), asserted as such, not by a timer."""
    import socket

    attempts: list[tuple[object, ...]] = []

    def no_network(*args: object, **kwargs: object) -> None:
        attempts.append(args)  # recorded, not only raised: a loader that catches every error would hide it
        raise OSError("network disabled by the test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ModelNotAvailableError, match="not available locally.*model_name_or_path"):
        Seq2SeqModule("google/flan-t5-base")
    assert attempts == []


def test_bad_arguments_and_batches_are_clear_errors(models: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="exactly one of model_name_or_path"):
        Seq2SeqModule(str(models["t5"]), warm_start_encoder=str(models["t5"]))
    module = _module(models["t5"], max_input_length=8)
    batch = encode_inputs(module.tokenizer, ["a long prompt " * 20], 64)
    with pytest.raises(ValueError, match="max_input_length is 8"):
        module.predict_step({**batch, "doc_id": ["d1"], "task": ["question"]})
    with pytest.raises(KeyError, match="doc_id"):
        module.predict_step(encode_inputs(module.tokenizer, ["short"], 8))


def test_minilm_warm_start_keeps_the_real_encoder_and_round_trips(tmp_path: Path) -> None:
    source = minilm_path()
    module = Seq2SeqModule(warm_start_encoder=str(source), decoding=DecodingConfig(max_new_tokens=4)).eval()
    config = module.model.config
    tokenizer = AutoTokenizer.from_pretrained(source)
    assert isinstance(module.model, EncoderDecoderModel)
    assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id, config.vocab_size) == (
        tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, tokenizer.vocab_size)
    sentences = ["Fasting glucose rises in mice.", "Vitamin D and bone density in older adults were not linked."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].unsqueeze(-1).float()

    def mean_pooled(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    original = AutoModel.from_pretrained(source).eval()
    assert torch.equal(mean_pooled(module.model.get_encoder()), mean_pooled(original))
    module.save_pretrained(tmp_path / "bert2bert")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "bert2bert").eval()
    assert isinstance(reloaded, EncoderDecoderModel)
    assert reloaded.config.decoder_start_token_id == tokenizer.cls_token_id
    assert torch.equal(mean_pooled(reloaded.get_encoder()), mean_pooled(original))
    assert _texts(module, ["d1"]) == _texts(Seq2SeqModule(str(tmp_path / "bert2bert"),
                                                          decoding=DecodingConfig(max_new_tokens=4)).eval(), ["d1"])
