"""Rebuild the tiny T5 tokenizer in this folder (run: python tests/data/tiny-t5-tokenizer/build.py).

Why a real SentencePiece unigram model: the T5 path of the tests should tokenise as FLAN-T5 does
(Metaspace pieces, <pad>=0 as decoder start, </s>=1 appended, <unk>=2) while staying tiny (1,000
pieces, about 65 KB). Trained on 600 English sentences from the docstrings of Python's standard
library (PSF licence), so no corpus with restrictive terms is baked in. Identity normalisation
keeps the file small (no NFKC table); there are no <extra_id_*> sentinels.
"""

from __future__ import annotations

import importlib
import inspect
import re
import tempfile
from pathlib import Path

MODULES = ("collections", "json", "pathlib", "argparse", "functools", "itertools", "os", "re", "random",
           "statistics", "textwrap", "string", "datetime", "logging", "unittest", "email", "http.client",
           "urllib.request", "csv", "difflib", "heapq", "bisect", "decimal", "fractions", "shutil", "tempfile",
           "subprocess", "threading", "queue", "socket", "ssl", "sqlite3", "zipfile", "tarfile", "gzip", "hashlib",
           "hmac", "secrets", "uuid", "typing", "dataclasses", "enum", "abc", "contextlib", "inspect", "pickle",
           "copy", "pprint", "calendar", "locale", "gettext", "codecs", "io", "glob", "fnmatch", "asyncio",
           "concurrent.futures", "multiprocessing", "signal", "sched", "timeit", "trace", "traceback", "warnings",
           "weakref", "xml.dom.minidom", "html", "html.parser", "mailbox", "mimetypes", "base64", "binascii",
           "struct", "array", "math", "cmath", "numbers", "operator", "configparser", "netrc", "plistlib",
           "optparse", "getopt", "doctest", "pdb", "profile", "pstats", "smtplib", "ftplib", "poplib", "imaplib",
           "wave", "colorsys", "cmd", "shlex", "graphlib", "zoneinfo", "ipaddress", "selectors")


def stdlib_sentences() -> list[str]:
    """Plain English sentences (6 to 40 words) from module, class and function docstrings, de-duplicated."""
    sentences, seen = [], set()
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(module) or ""]
        docs += [inspect.getdoc(obj) or "" for key, obj in vars(module).items()
                 if not key.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))]
        for doc in docs:
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if (6 <= len(sentence.split()) <= 40 and re.fullmatch(r"[A-Za-z0-9 ,.;:'()\-?!]+", sentence)
                        and sentence[0].isupper() and sentence not in seen):
                    seen.add(sentence)
                    sentences.append(sentence)
    return sentences


def main() -> None:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    out = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(stdlib_sentences()[::3][:600]) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=f"{tmp}/spiece", vocab_size=1000,
                                       model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                       character_coverage=1.0, hard_vocab_limit=False, num_threads=1,
                                       normalization_rule_name="identity", minloglevel=2)
        tokenizer = T5Tokenizer.from_pretrained(tmp, extra_ids=0, model_max_length=512)
        tokenizer.save_pretrained(out)


if __name__ == "__main__":
    main()
