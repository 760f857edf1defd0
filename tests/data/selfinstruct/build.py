"""Rebuild kept.jsonl: one question and one keyword list per tiny BEIR document, as the filter keeps them.

    python tests/data/selfinstruct/build.py

Targets are written from the title, in the shape a good generator would give (a question, a keyword
list), so the pairs the self-instruct DataModule builds from them are learnable but carry no claim
about any model.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from core.io import iter_jsonl  # noqa: E402
from retrieval.synthetic import SyntheticRecord, write_synthetic  # noqa: E402


def main() -> None:
    records = []
    for _, doc in iter_jsonl(HERE.parent / "tiny_beir" / "corpus.jsonl"):
        title = doc.get("title") or doc["text"].split(".")[0]
        records.append(SyntheticRecord(doc["_id"], "question", f"What is known about {title[0].lower() + title[1:]}?",
                                       model="tests/data/selfinstruct/build.py"))
        records.append(SyntheticRecord(doc["_id"], "keywords",
                                       ", ".join(word.strip(",.").lower() for word in title.split()[:5]),
                                       model="tests/data/selfinstruct/build.py"))
    write_synthetic(HERE / "kept.jsonl", records)


if __name__ == "__main__":
    main()
