"""The one string form of a record's identity: (document, task, index).

Why one codec: a synthetic text, its vector, a sentence unit and a part-file line are all named by the
document they belong to, what they are (a ``question``, ``keywords``, a ``sentence``) and their index
among the document's records of that kind. Every writer and reader encodes and decodes that triple here.
JSON, so no document id (which may hold any character) can collide with another or be split wrongly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SENTENCE = "sentence"
"""The task name of sentence units (``retrieval.sentences.sentence_units``)."""


@dataclass(frozen=True)
class RecordKey:
    """``doc_id``: the document; ``task``: ``question``/``keywords`` (synthetic texts) or ``sentence``;
    ``index``: the sample index (synthetic texts) or the sentence's position in its document."""

    doc_id: str
    task: str
    index: int

    def encode(self) -> str:
        return json.dumps([self.doc_id, self.task, self.index], ensure_ascii=False)

    @classmethod
    def decode(cls, key: str) -> RecordKey:
        try:
            doc_id, task, index = json.loads(key)
        except (ValueError, TypeError):
            raise ValueError(f"not a record key: {key!r:.120} (expected a JSON list [doc_id, task, index])") from None
        if not (isinstance(doc_id, str) and isinstance(task, str) and isinstance(index, int)):
            raise ValueError(f"not a record key: {key!r:.120} (expected [str, str, int])")
        return cls(doc_id, task, index)
