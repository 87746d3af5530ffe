"""Data: documents, their readers and writers, and the built-in corpora."""

from lmforge.data.documents import Document, load_documents_jsonl, write_documents_jsonl
from lmforge.data.read import read_documents

__all__ = ["Document", "load_documents_jsonl", "read_documents", "write_documents_jsonl"]
