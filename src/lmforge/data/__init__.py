"""Data: documents, their readers and writers, and the built-in corpora."""

from lmforge.data.documents import (
    Document,
    load_documents_jsonl,
    read_documents,
    write_documents_jsonl,
)

__all__ = ["Document", "load_documents_jsonl", "read_documents", "write_documents_jsonl"]
