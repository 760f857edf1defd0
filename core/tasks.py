"""The generation tasks: what stage 1 and stage 2 write for every document (Zeng et al. 2024)."""

TASKS = ("question", "keywords")
"""In output order: a record file lists a document's questions before its keyword lists."""
