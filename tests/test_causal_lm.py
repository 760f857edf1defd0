"""The decoder-only generator (``CausalLMModule``) on tiny random Qwen2 and Llama models built here.

Covers: the chat template and truncation, per-row seeded sampling independent of the batch, the loss on target
tokens only, LoRA adapters saved and reloaded (and merged), loading errors, the whole pipeline with
``stage1.source: self``, generation killed with SIGKILL at a batch the test chooses and resumed, and 2-process DDP
generation byte-identical to one process.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

import train
from core.io import ModelNotAvailableError
from core.tasks import TASKS
from datamodules.beir import BeirDataset, load_beir
from helpers import make_tiny_bert, make_tiny_causal, one_thread, tiny_pipeline_profile  # noqa: F401 (a fixture)
from lightning_modules.causal_lm import CausalLMModule, LoraSettings
from lightning_modules.decoding import DecodingConfig
from lightning_modules.generator import LABEL_PAD_ID
from pipeline import layout
from pipeline.config import STAGES
from pipeline.generate import generate_synthetic

TINY_BEIR = Path(__file__).resolve().parent / "data" / "tiny_beir"
DECODING = DecodingConfig(num_samples=2, max_new_tokens=8, top_k=50, top_p=0.95, seed=3)
PROMPTS = ["Write a question that is answered by the following passage. Title: cats. Passage: cats sleep a lot.",
           "Keywords please", "A medium prompt about the retrieval of documents"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {family: make_tiny_causal(root / family, family) for family in ("qwen2", "llama")}


@pytest.fixture(scope="module")
def dataset() -> BeirDataset:
    return load_beir(TINY_BEIR)


def module(models: dict[str, Path], family: str = "qwen2", **kwargs: object) -> CausalLMModule:
    return CausalLMModule(str(models[family]), decoding=DECODING, max_input_length=48, **kwargs)


def train_steps(generator: CausalLMModule, steps: int = 3) -> None:
    """A few optimizer steps on two pairs, so that a LoRA adapter (B starts at zero) changes the outputs."""
    rows = generator.example_encoder(48, 8)({"instruction": PROMPTS[:2], "target": ["what do cats do?", "cats"]})
    batch = generator.example_collator()([{"input_ids": rows["input_ids"][i], "labels": rows["labels"][i],
                                           "doc_id": str(i), "task": "question"} for i in range(2)])
    optimizer = torch.optim.AdamW([p for p in generator.parameters() if p.requires_grad], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        generator.loss(batch).backward()
        optimizer.step()
    generator.eval()


# ----- encoding ------------------------------------------------------------------------------------------------

def test_chat_template_wraps_prompts_and_truncation_cuts_only_the_passage(models: dict[str, Path]) -> None:
    qwen = module(models)
    batch = qwen.prompt_encoder(24)(PROMPTS)
    assert batch["input_ids"].shape == (3, 24)  # the long prompt was cut to fit
    decoded = [qwen.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert all(text.startswith("<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\n")
               for text in decoded)
    padded = qwen.prompt_encoder(48)(PROMPTS)["attention_mask"]
    assert padded[:, -1].all() and not padded[1, 0]  # left padding: every prompt ends in the last column
    with pytest.raises(ValueError, match="leaves no room for the prompt"):
        qwen.prompt_encoder(len(qwen.chat.prefix) + len(qwen.chat.suffix))(PROMPTS)

    llama = module(models, "llama")
    assert not llama.chat.templated and llama.tokenizer.pad_token_id == llama.tokenizer.eos_token_id
    row = llama.prompt_encoder(48)(PROMPTS[:1])["input_ids"][0].tolist()
    text = llama.tokenizer.decode(row[1:])  # BOS, then the prompt (cut), then the answer prefix
    assert row[0] == llama.tokenizer.bos_token_id and text.endswith("\n") and PROMPTS[0].startswith(text[:-1])


def test_loss_is_taken_on_the_target_tokens_only(models: dict[str, Path]) -> None:
    generator = module(models)
    rows = generator.example_encoder(48, 8)({"instruction": PROMPTS[:2], "target": ["what do cats do?", "cats"]})
    for ids, labels in zip(rows["input_ids"], rows["labels"]):
        target = [label for label in labels if label != LABEL_PAD_ID]
        assert ids[-len(target):] == target and target[-1] == generator.tokenizer.eos_token_id
        assert labels[:len(ids) - len(target)] == [LABEL_PAD_ID] * (len(ids) - len(target))
    batch = generator.example_collator()([{"input_ids": rows["input_ids"][i], "labels": rows["labels"][i],
                                           "doc_id": str(i), "task": "question"} for i in range(2)])
    logits = generator.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(generator.loss(batch), expected)
    prompts = generator.prompt_part(batch)  # what the samples table generates from: the prompts, left-padded
    assert torch.equal(prompts["input_ids"], generator.prompt_encoder(48)(PROMPTS[:2])["input_ids"])


# ----- sampling ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_a_document_gets_the_same_texts_alone_and_in_any_batch(models: dict[str, Path], family: str) -> None:
    generator = module(models, family)
    generator.eval()
    encode = generator.prompt_encoder(48)
    ids, tasks = ["a", "b", "c"], ["question", "keywords", "question"]
    together = generator.generate_texts(encode(PROMPTS), ids, tasks)
    alone = [generator.generate_texts(encode([p]), [i], [t])[0] for p, i, t in zip(PROMPTS, ids, tasks)]
    reversed_ = generator.generate_texts(encode(PROMPTS[::-1]), ids[::-1], tasks[::-1])[::-1]
    assert together == alone == reversed_
    assert all(len(samples) == 2 and samples[0] != samples[1] for samples in together)  # seeded per sample


# ----- LoRA ----------------------------------------------------------------------------------------------------

def test_lora_adapter_saved_and_reloaded_gives_the_outputs_of_the_model_in_memory(tmp_path: Path,
                                                                                  models: dict[str, Path]) -> None:
    generator = module(models, lora=LoraSettings(rank=4, alpha=8, dropout=0.0))
    trainable = [name for name, p in generator.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    untuned = generator.generate_texts(generator.prompt_encoder(48)(PROMPTS), ["a", "b", "c"], list(TASKS) + ["question"])
    train_steps(generator)
    batch = generator.prompt_encoder(48)(PROMPTS)
    expected = generator.generate_texts(batch, ["a", "b", "c"], list(TASKS) + ["question"])
    assert expected != untuned  # the adapter learnt something, so the comparison below means something

    adapter = generator.save_pretrained(tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    init_args = {"model_name_or_path": str(models["qwen2"]), "decoding": DECODING, "max_input_length": 48,
                 "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.0}}
    reloaded = CausalLMModule.from_tuned(adapter, init_args)
    reloaded.eval()
    assert reloaded.generate_texts(batch, ["a", "b", "c"], list(TASKS) + ["question"]) == expected
    assert reloaded.fingerprint()["tokenizer"] == generator.fingerprint()["tokenizer"]
    with pytest.raises(ValueError, match="trained on"):
        CausalLMModule.from_tuned(adapter, {**init_args, "model_name_or_path": str(models["llama"])})

    generator.hparams.merge_adapter = True  # the same model as one plain folder
    merged = generator.save_pretrained(tmp_path / "merged")
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    plain = CausalLMModule.from_tuned(merged, init_args)
    plain.eval()
    assert plain.generate_texts(batch, ["a", "b", "c"], list(TASKS) + ["question"]) == expected


def test_lora_checkpoints_hold_the_adapter_only_and_refuse_another_one(models: dict[str, Path]) -> None:
    generator = module(models, lora=LoraSettings(rank=4))
    checkpoint = {"state_dict": generator.state_dict()}
    generator.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"])
    generator.load_state_dict(checkpoint["state_dict"])
    other = module(models, lora=LoraSettings(rank=4, target_modules=["q_proj"]))
    with pytest.raises(RuntimeError, match="LoRA adapter's weights"):
        other.load_state_dict(checkpoint["state_dict"])


# ----- loading -------------------------------------------------------------------------------------------------

def test_missing_gguf_and_unreachable_hub_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="gguf_file .*does not exist"):
        CausalLMModule(gguf_file=str(tmp_path / "model.gguf"))
    with pytest.raises(ModelNotAvailableError, match="not a .gguf file"):
        CausalLMModule(model_name_or_path=str(tmp_path), gguf_file="model.bin")
    with pytest.raises(ModelNotAvailableError, match="cannot be reached"):
        CausalLMModule("Qwen/Qwen2.5-0.5B-Instruct-not-cached")
    assert CausalLMModule.encoder_source({"model_name_or_path": "x"}) is None


# ----- generation runs: resume after SIGKILL, DDP ----------------------------------------------------------------

class KillAt(Callback):
    """SIGKILL the running process once ``batches`` batches were written: a point the test chooses."""

    def __init__(self, batches: int) -> None:
        self.batches = batches

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx + 1 == self.batches:
            os.kill(os.getpid(), signal.SIGKILL)


def _generate(model: Path, output: Path, batch_size: int, **trainer: object) -> Path:
    generator = CausalLMModule(str(model), decoding=DECODING, max_input_length=48)
    return generate_synthetic(load_beir(TINY_BEIR), generator, output=output, batch_size=batch_size, progress=False,
                              trainer_kwargs=trainer or None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> bytes:
    return _generate(models["qwen2"], tmp_path_factory.mktemp("reference") / "stage1.jsonl", 4).read_bytes()


def test_sigkill_at_chosen_batches_then_resume_is_byte_identical(tmp_path: Path, models: dict[str, Path],
                                                                 reference: bytes) -> None:
    output = tmp_path / "stage1.jsonl"
    fork = multiprocessing.get_context("fork")
    for batches in (2, 3):  # two kills, each after a few more batches were written
        process = fork.Process(target=_generate, args=(models["qwen2"], output, 3),
                               kwargs={"callbacks": [KillAt(batches)]}, daemon=True)
        process.start()
        process.join(timeout=120)
        assert process.exitcode == -signal.SIGKILL and not output.exists()
    assert len(list(Path(f"{output}.parts").glob("*/rank*.jsonl"))) == 5
    _generate(models["qwen2"], output, 5)  # another batch size: other batch compositions, the same texts
    assert output.read_bytes() == reference
    assert not Path(f"{output}.parts").exists()


@pytest.mark.ddp
def test_two_process_ddp_generation_gives_the_same_bytes_as_one_process(tmp_path: Path, models: dict[str, Path],
                                                                        reference: bytes) -> None:
    output = _generate(models["qwen2"], tmp_path / "stage1.jsonl", 4, accelerator="cpu", devices=2,
                       strategy="ddp_fork")
    assert output.read_bytes() == reference


# ----- the pipeline ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_pipeline_self_stage1_lora_tuning_stage2_embed_evaluate(tmp_path: Path, models: dict[str, Path]) -> None:
    encoder = make_tiny_bert(tmp_path / "bert")
    config = tiny_pipeline_profile(TINY_BEIR, models["qwen2"])
    config["model"] = {"class_path": "lightning_modules.causal_lm.CausalLMModule",
                       "init_args": {"model_name_or_path": str(models["qwen2"]), "max_input_length": 64,
                                     "lora": {"rank": 4, "alpha": 8.0}}}
    config["stage1"] = {"source": "self"}
    config["filter"] = {**config["filter"], "encoder": str(encoder)}
    config["embed"] = {**config["embed"], "encoder": str(encoder)}
    config["fit"] = {**config["fit"], "data": {"val_fraction": 0.3, "batch_size": 4}}
    profile = tmp_path / "llm.yaml"
    profile.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    outcomes = train.main(["pipeline", "-c", str(profile), "--run_dir", str(run_dir)])
    assert [o.name for o in outcomes] == list(STAGES) and all(o.status == "ran" for o in outcomes)
    tuned = run_dir / layout.TUNED_MODEL
    assert (tuned / "adapter_model.safetensors").is_file() and not (tuned / "model.safetensors").exists()
    checkpoint = torch.load(next((run_dir / layout.FIT_DIR / "checkpoints").glob("last.ckpt")), weights_only=True)
    assert all("lora_" in key for key in checkpoint["state_dict"])  # the frozen base is not copied into checkpoints
    stage1 = [json.loads(line) for line in (run_dir / layout.STAGE1).read_text().splitlines()]
    stage2 = [json.loads(line) for line in (run_dir / layout.STAGE2).read_text().splitlines()]
    assert {r["stage"] for r in stage1} == {1} and {r["stage"] for r in stage2} == {2}
    assert len(stage2) == len(stage1) * 1  # same documents, tasks and sample count (generation.decoding)
    assert [r["text"] for r in stage2] != [r["text"] for r in stage1]  # the tuned adapter writes differently
    results = json.loads((run_dir / layout.RESULTS_JSON).read_text())
    assert results


def test_the_offline_llm_profile_stops_at_once_without_its_gguf_file(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    profile = Path(__file__).resolve().parents[1] / "configs" / "profiles" / "llm-offline.yaml"
    with pytest.raises(SystemExit):
        train.main(["pipeline", "-c", str(profile), "--data.path", str(TINY_BEIR), "--run_dir", str(tmp_path / "run")])
    assert "needs --model.init_args.gguf_file PATH" in capsys.readouterr().err
    assert not (tmp_path / "run" / layout.STAGE1).exists()


@pytest.mark.slow
def test_lora_fit_with_accumulation_resumes_from_its_adapter_only_checkpoint(tmp_path: Path,
                                                                             models: dict[str, Path]) -> None:
    """`train.py fit` with LoRA: global batch 4 as 2 x 2 accumulated steps; a resumed run continues the adapter."""
    from pipeline.fit import run_lightning_cli

    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "run"
    config = {"trainer": {"default_root_dir": str(run_dir), "max_epochs": 1, "accelerator": "cpu", "devices": 1,
                          "accumulate_grad_batches": 2, "enable_progress_bar": False, "enable_model_summary": False,
                          "log_every_n_steps": 1},
              "model": {"class_path": "lightning_modules.causal_lm.CausalLMModule",
                        "init_args": {"model_name_or_path": str(models["qwen2"]), "max_input_length": 48,
                                      "learning_rate": 1e-2, "lora": {"rank": 4, "alpha": 8.0},
                                      "decoding": {"max_new_tokens": 4}}},
              "data": {"init_args": {"kept_file": str(root / "tests" / "data" / "selfinstruct" / "kept.jsonl"),
                                     "dataset": {"path": str(TINY_BEIR)}, "val_fraction": 0.3, "batch_size": 4,
                                     "cache_dir": str(tmp_path / "datasets-cache")}},
              "generation_samples": {"num_examples": 2}}
    args = ["fit", "--config", str(root / "configs" / "fit" / "selfinstruct.yaml"), "--config",
            str(root / "configs" / "fit" / "csv_logger.yaml")]
    first = run_lightning_cli([*args, "--config", json.dumps(config)])
    assert first.datamodule.device_batch_size == 2 and first.trainer.global_step == 7  # 28 pairs / 4 per step
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["state_dict"] and all("lora_" in key for key in last["state_dict"])
    config["trainer"]["max_epochs"] = 2
    second = run_lightning_cli([*args, "--config", json.dumps(config), "--ckpt_path=last"])
    assert second.trainer.global_step == 14 and second.trainer.current_epoch == 2
    resumed = {k: v for k, v in second.model.state_dict().items() if k in last["state_dict"]}
    assert any(not torch.equal(resumed[k], v) for k, v in last["state_dict"].items())  # it kept training
    assert (run_dir / "model" / "adapter_model.safetensors").is_file()
    assert "| epoch 1 |" in (run_dir / "tables" / "fit-samples.md").read_text()
