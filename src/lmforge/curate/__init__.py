"""Stage 2, data curation: the per-document pieces of `lmforge curate`.

- `normalize`: Unicode NFC, broken encodings repaired (ftfy), control characters removed,
  line ends and blank lines tidied, indentation kept.
- `text_stats`: word, line and paragraph splits and n-gram statistics, computed once per
  document and shared by every filter that reads them.
- `quality`: the Gopher quality and repetition rules (Rae et al. 2021).
- `rules`: C4 line rules (Raffel et al. 2020), FineWeb rules (Penedo et al. 2024), a length
  filter and a block-list filter.
- `language`: an offline English check, or a fastText language-id model when one is given.
- `filters`: the filter protocol, the registry of filter types, the per-source presets
  (`web`, `docs`, `chat`) and building a filter list from a recipe.
- `pii`: replacing e-mail addresses, phone numbers, public IP addresses and card numbers
  with placeholders.

The pipeline that shards documents over worker processes and writes the report lives beside
these modules; every filter here is a plain, picklable, deterministic dataclass.
"""
