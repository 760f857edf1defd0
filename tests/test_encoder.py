"""The encoder module: sentence-transformers parity for MiniLM, seq2seq checkpoints through their encoder only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, EncoderDecoderModel, T5ForConditionalGeneration

from helpers import make_tiny_bert, make_tiny_bert2bert, make_tiny_t5, minilm_path
from lightning_modules.encoder import EncoderModule, mean_pool
from pipeline.embed import embed_texts

TEXTS = [
    "Aspirin lowers the risk of a second heart attack.",
    "e.g. short",
    "Ünïcödé, accents and symbols: α-synuclein ≥ 5 µM.",
    "Mitochondrial DNA mutations accumulate with age in human colonic crypt stem cells. " * 30,  # > 256 tokens
    "  leading and trailing spaces  ",
]


def _tokenize(path: Path, texts: list[str], max_length: int = 64) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
                     return_token_type_ids=False)


def _normalised_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(mean_pool(hidden, mask), dim=-1)


def test_minilm_vectors_equal_sentence_transformers(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    module = EncoderModule(str(minilm_path()))
    assert (module.max_length, module.pooling) == (256, "mean")  # from sentence_bert_config / 1_Pooling
    assert len(AutoTokenizer.from_pretrained(minilm_path())(TEXTS[3])["input_ids"]) > 256  # truncation matters
    ids, ours = embed_texts([(f"t{i}", text) for i, text in enumerate(TEXTS)], module, tmp_path / "v",
                            batch_size=2, progress=False)
    reference = SentenceTransformer(str(minilm_path()), device="cpu").encode(TEXTS, convert_to_tensor=True)
    cosine = torch.nn.functional.cosine_similarity(ours, reference.cpu(), dim=-1)
    assert ids == [f"t{i}" for i in range(len(TEXTS))]
    assert cosine.min().item() >= 0.9999, cosine
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)


def test_t5_checkpoint_embeds_with_its_encoder_only(tmp_path: Path) -> None:
    path = make_tiny_t5(tmp_path / "t5")
    module = EncoderModule(str(path))
    assert type(module.encoder).__name__ == "T5EncoderModel"
    assert not any("decoder" in name for name in module.state_dict())
    batch = _tokenize(path, TEXTS[:3])
    full = T5ForConditionalGeneration.from_pretrained(path).eval()
    with torch.no_grad():
        expected = _normalised_mean(full.encoder(**batch).last_hidden_state, batch["attention_mask"])
    assert torch.allclose(module.encode_batch(batch["input_ids"], batch["attention_mask"]), expected, atol=1e-6)
    assert module.max_length == 512 and module.dim == 32


def test_encoder_decoder_checkpoint_embeds_with_its_encoder_only(tmp_path: Path) -> None:
    path = make_tiny_bert2bert(tmp_path / "bert2bert")
    module = EncoderModule(str(path))
    assert type(module.encoder).__name__ == "BertModel"
    assert sum(p.numel() for p in module.parameters()) < sum(
        p.numel() for p in EncoderDecoderModel.from_pretrained(path).parameters()) / 1.5
    batch = _tokenize(path, TEXTS[:3])
    full = EncoderDecoderModel.from_pretrained(path).eval()
    with torch.no_grad():
        expected = _normalised_mean(full.encoder(**batch).last_hidden_state, batch["attention_mask"])
    assert torch.allclose(module.encode_batch(batch["input_ids"], batch["attention_mask"]), expected, atol=1e-6)


def test_cls_pooling_without_normalisation_and_token_embeddings(tmp_path: Path) -> None:
    path = make_tiny_bert(tmp_path / "bert")
    module = EncoderModule(str(path), pooling="cls", normalize=False, max_length=32)
    batch = _tokenize(path, TEXTS[:2])
    hidden = module.token_embeddings(batch["input_ids"], batch["attention_mask"])
    assert hidden.shape == (*batch["input_ids"].shape, 32)
    assert torch.equal(module.encode_batch(batch["input_ids"], batch["attention_mask"]), hidden[:, 0])
    out = module.predict_step({"ids": ["a", "b"], **batch}, 0)
    assert out["ids"] == ["a", "b"] and out["vectors"].dtype == torch.float32


def test_sentence_transformers_folder_with_unsupported_module_is_refused(tmp_path: Path) -> None:
    path = make_tiny_bert(tmp_path / "st")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense"):
        EncoderModule(str(path))


def test_sentence_transformers_pooling_and_length_are_read(tmp_path: Path) -> None:
    path = make_tiny_bert(tmp_path / "st")
    shutil.copy(minilm_path() / "modules.json", path / "modules.json")
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40, "do_lower_case": True}))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    module = EncoderModule(str(path))
    assert (module.max_length, module.pooling, module.source.do_lower_case) == (40, "cls", True)
    assert EncoderModule(str(path), pooling="mean", max_length=20).max_length == 20
    # sentence-transformers >= 6 writes "pooling_mode" and keeps the length in the tokenizer config
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean", "include_prompt": True}))
    (path / "sentence_bert_config.json").write_text(json.dumps({"transformer_task": "feature-extraction"}))
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**tokenizer_config, "model_max_length": 77}))
    module = EncoderModule(str(path))
    assert (module.max_length, module.pooling) == (77, "mean")


def test_checkpoint_missing_encoder_weights_is_refused(tmp_path: Path) -> None:
    path = make_tiny_bert(tmp_path / "bert")
    config = BertConfig.from_pretrained(path)
    config.num_hidden_layers = 3  # the checkpoint has two layers
    config.save_pretrained(path)
    with pytest.raises(ValueError, match="weights belong to another model: 16 weights .* missing"):
        EncoderModule(str(path))


def test_a_model_warm_started_from_minilm_embeds_as_minilm(tmp_path: Path) -> None:
    """The tuned folder of the offline profile keeps MiniLM's 256-token truncation (not BERT's 512 positions):
    with a frozen encoder its document vectors are MiniLM's own."""
    from lightning_modules.seq2seq import Seq2SeqModule

    tuned = Seq2SeqModule(warm_start_encoder=str(minilm_path()), decoder_layers=1, freeze_encoder=True)
    folder = tuned.save_pretrained(tmp_path / "tuned")
    module = EncoderModule(str(folder))
    assert module.max_length == 256
    reference = EncoderModule(str(minilm_path()))
    assert len(AutoTokenizer.from_pretrained(minilm_path())(TEXTS[3])["input_ids"]) > 256  # truncation matters
    _, ours = embed_texts([("long", TEXTS[3])], module, tmp_path / "a", progress=False)
    _, expected = embed_texts([("long", TEXTS[3])], reference, tmp_path / "b", progress=False)
    assert torch.allclose(ours, expected, atol=1e-5)
