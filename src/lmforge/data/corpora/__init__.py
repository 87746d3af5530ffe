"""Built-in corpora that need no download."""

from lmforge.data.corpora.pydocs import build_pydocs_corpus, corpus_stats

__all__ = ["build_pydocs_corpus", "corpus_stats"]
