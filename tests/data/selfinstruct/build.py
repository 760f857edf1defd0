"""Rebuild train.jsonl / val.jsonl: the tiny BEIR corpus as self-instruct pairs in the filter's format.

    /work/venv/bin/python tests/data/selfinstruct/build.py

Instructions are the default prompt templates rendered on each document (as the filter writes them);
targets are written from the title, in the shape a good generator would give (a question, a keyword
list), so the pairs are learnable but carry no claim about any model. Documents d01-d14 are train,
d15-d20 val (disjoint, as the filter's document split is).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from datamodules.prompts import PromptTemplates  # noqa: E402
from retrieval.io import iter_jsonl, write_jsonl_atomic  # noqa: E402


def main() -> None:
    templates = PromptTemplates()
    rows = {"train": [], "val": []}
    for _, doc in iter_jsonl(HERE.parent / "tiny_beir" / "corpus.jsonl"):
        title = doc.get("title") or doc["text"].split(".")[0]
        split = "train" if doc["_id"] <= "d14" else "val"
        targets = {"question": f"What is known about {title[0].lower() + title[1:]}?",
                   "keywords": ", ".join(word.strip(",.").lower() for word in title.split()[:5])}
        for task, target in targets.items():
            rows[split].append({"doc_id": doc["_id"], "task": task, "sample_idx": 0,
                                "instruction": templates.render(task, doc.get("title", ""), doc["text"]),
                                "target": target})
    for split, records in rows.items():
        write_jsonl_atomic(HERE / f"{split}.jsonl", records)


if __name__ == "__main__":
    main()
