"""Curation filters: normalization, every rule of every filter, presets, config errors, pickling,
and a cross-check of the keep/drop decisions against datatrove's filters on TinyStories."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from lmforge.curate.filters import FILTER_TYPES, PRESETS, build_filters, describe_preset
from lmforge.curate.language import LanguageFilter
from lmforge.curate.normalize import normalize_text
from lmforge.curate.quality import GopherQualityFilter, GopherRepetitionFilter
from lmforge.curate.rules import BlocklistFilter, C4Filter, FineWebFilter, LengthFilter
from lmforge.curate.text_stats import count_sentences, split_words
from lmforge.errors import LmforgeError

CLEAN = (
    "The river runs past the old mill and then turns toward the town. In spring the water "
    "rises quickly, and the farmers move their sheep to the higher fields before the rain "
    "comes. Most families in the valley have kept the same land for generations.\n\n"
    "Every autumn there is a market in the square. People bring apples, cheese and wool, "
    "and children run between the stalls with paper kites. The baker says that the best "
    "bread of the year is made with flour from that harvest. Visitors often stay for the "
    "music that starts when the lamps are lit."
)
UNIQUE = [f"word{i:03d}" for i in range(300)]  # distinct filler words


def _reason(f, text: str) -> str | None:
    return f.apply(text)[1]


def _with_phrase(phrase: list[str], times: int, filler: int) -> str:
    """`times` copies of `phrase`, each after `filler` distinct words."""
    words, it = [], iter(UNIQUE)
    for _ in range(times):
        words += [next(it) for _ in range(filler)] + phrase
    return " ".join(words)


# --- normalization --------------------------------------------------------------------------

def test_normalize_repairs_encoding_and_keeps_style():
    raw = "Whoâ€™s there?\r\n\r\n\r\n\r\n\r\n  indented line   \t\n“Curly” stays\x00\x07 ok\n"
    out = normalize_text(raw)
    assert out == "Who’s there?\n\n\n  indented line\n“Curly” stays ok"
    assert "\t" in normalize_text("a\tb") and normalize_text("e\u0301") == "\u00e9"  # NFC
    assert "â€™" in normalize_text("Whoâ€™s", fix_encoding=False)
    assert normalize_text("AT&amp;T ﬁne ＡＢ") == "AT&amp;T ﬁne ＡＢ"  # no HTML/width rewrites


def test_normalize_layout_nfc_line_ends_and_blank_lines():
    assert normalize_text("cafe\u0301") == "caf\u00e9"  # NFD -> NFC
    assert normalize_text("a  \t\nb \r\nc\rd") == "a\nb\nc\nd"
    assert normalize_text("a\n\n\n\n\n\nb") == "a\n\n\nb"  # at most two blank lines
    assert normalize_text("a\n\nb\n\n\nc") == "a\n\nb\n\n\nc"  # one or two are kept
    assert normalize_text("\n\n  \n    indented\n\n") == "    indented"  # code indent kept


def test_normalize_restores_right_quotes_that_lost_a_byte():
    # TinyStories V1's shape: "”" read as Windows-1252 lost its unassigned third byte.
    broken = "â€œBe careful!â€ Annie jumped.\nâ€œHi!â€\nShe said â€œbyeâ€."
    assert normalize_text(broken) == "“Be careful!” Annie jumped.\n“Hi!”\nShe said “bye”."
    # Without broken opening quotes there is no evidence, and real text is left alone.
    assert normalize_text("Tom said hiâ€\nok") == "Tom said hiâ€\nok"
    assert normalize_text("â€œHiâ€\nok") == "“Hi”\nok"
    assert normalize_text("It costs 5€ — “fine” † noted") == "It costs 5€ — “fine” † noted"


# --- the word splitter ------------------------------------------------------------------------

def test_split_words_follows_spacy_shapes():
    text = '"I can\'t," said Tom\'s mom... e.g. Mr. Smith paid $3.50 (well-known).'
    assert split_words(text) == [
        '"', "I", "ca", "n't", ",", '"', "said", "Tom", "'s", "mom", "...", "e.g.", "Mr.",
        "Smith", "paid", "$", "3.50", "(", "well", "-", "known", ")", "."]
    assert count_sentences(split_words('"Hi!" he said. Then he left... Bye')) == 4


# Chunks and how spaCy's English tokenizer (datatrove's word splitter) splits them; each row
# is checked against spaCy itself below, where it is installed.
SPACY_SHAPES = [
    ("hello😀world", ["hello", "😀", "world"]),          # symbols split anywhere
    ("it😀.", ["it", "😀", "."]),
    ("Itâ€™s", ["Itâ€", "™", "s"]),                     # unrepaired mojibake
    ("ab€.", ["ab€."]), ("aX.", ["aX."]), ("A.", ["A."]),  # the period rule keeps these
    ("USA.", ["USA", "."]), ("a.", ["a."]), ("Sr.", ["Sr", "."]),
    ("5km.", ["5", "km", "."]), ("50%", ["50", "%"]), ("ab%", ["ab%"]), ("%ab", ["%", "ab"]),
    ("5$", ["5", "$"]), ("+ab", ["+", "ab"]), ("+5", ["+5"]), ("9am", ["9", "am"]),
    ("«ab»", ["«", "ab", "»"]), ("main()", ["main", "(", ")"]),
    ("y):", ["y", "):"]), (":)", [":)"]), ("''", ["''"]),   # whole tokens across splits
    ("'s", ["'s"]), ("Lily)'s", ["Lily", ")", "'s"]), ("'em.", ["'em", "."]),
    ("'t.", ["'", "t."]), ("(e.g.", ["(", "e.g."]),
    ("in't", ["in't"]), ("DON'T", ["DON'T"]), ("Don't", ["Do", "n't"]),
    ("dont", ["do", "nt"]), ("I'd've", ["I", "'d", "'ve"]),
    ("1/2", ["1/2"]), ("a/b", ["a", "/", "b"]), ("3+4", ["3", "+", "4"]),
    ("3--4", ["3", "-", "-4"]), ("a---b", ["a", "---", "b"]), ("a----b", ["a----b"]),
    ("end.Next", ["end", ".", "Next"]), ("..ab", ["..", "ab"]), ("a..b", ["a", "..", "b"]),
    ("https://a.com/x.", ["https://a.com/x", "."]),
]


@pytest.mark.parametrize(("chunk", "tokens"), SPACY_SHAPES)
def test_split_words_shapes(chunk, tokens):
    assert split_words(chunk) == tokens


def test_spacy_shapes_table_is_spacys():
    pytest.importorskip("datatrove")
    pytest.importorskip("spacy", reason="the table is checked against spaCy's tokenizer")
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    spacy_en = load_word_tokenizer("en")
    assert {c: spacy_en.word_tokenize(c) for c, _ in SPACY_SHAPES} == dict(SPACY_SHAPES)


def test_split_words_is_linear_on_long_chunks():
    # 100,000 closing marks or periods: one pass, not a slice per mark (no timing assert: a
    # quadratic splitter would take minutes here).
    for chunk in (":" * 100_000, "a" + ")" * 100_000, "." * 100_000, "'" * 100_000):
        assert "".join(split_words(chunk)) == chunk


# --- Gopher quality ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,reason", [
    ("The cat sat on the mat with the dog.", "too_few_words"),
    (" ".join(["to", "be", "of", "it", "an", "so"] * 10), "short_words"),
    (" ".join(["internationalization", "characterization", "the"] * 20), "long_words"),
    (CLEAN + " #tag" * 15, "hash_ratio"),
    (CLEAN + " Wait..." * 15, "ellipsis_ratio"),
    ("\n".join(["- the item that we have to list with care"] * 10), "bullet_lines"),
    ("\n".join(["The road to the hill was long and the wind was cold."] * 6
               + ["And then we waited there for hours…"] * 4), "ellipsis_lines"),
    (CLEAN + " 12 34 56 78 90 11 22 33 44 55 66 77 88 99 10 20 30 40 50" * 2, "alpha_words"),
    ("Rivers carry water from mountains towards distant seas. " * 10, "stop_words"),
], ids=lambda v: v if v.isidentifier() else "")
def test_gopher_quality_rules(text, reason):
    assert GopherQualityFilter().apply(CLEAN) == (CLEAN, None)
    assert _reason(GopherQualityFilter(), text) == f"gopher_quality:{reason}"


def test_gopher_quality_thresholds_and_switches():
    few = GopherQualityFilter(min_words=10, max_words=30)
    assert _reason(few, CLEAN) == "gopher_quality:too_many_words"
    short = "The cat sat on the mat with the dog and it was warm."
    assert _reason(GopherQualityFilter(min_words=5), short) is None
    assert _reason(GopherQualityFilter(min_words=None), "!!! ??? ...") == "gopher_quality:no_words"
    assert _reason(GopherQualityFilter(max_symbol_word_ratio=None), CLEAN + " #tag" * 15) is None


# --- Gopher repetition -----------------------------------------------------------------------

def test_gopher_repetition_rules():
    f = GopherRepetitionFilter()
    assert f.apply(CLEAN) == (CLEAN, None)
    para = "One short paragraph of text here."
    lines = [f"{w} is a line" for w in UNIQUE[:6]]
    big = "This long paragraph is repeated once. " * 8
    cases = {
        "dup_para_frac": "\n\n".join([para, para, para, CLEAN]),
        "dup_para_char_frac": "\n\n".join([big, big, *lines]),
        "dup_line_frac": "\n".join([lines[0], lines[0], lines[0], lines[1]]),
        "dup_line_char_frac": "\n".join([big, big, *lines]),
        "top_2gram": "hello world " * 3 + " ".join(UNIQUE[:3]),
        "top_3gram": _with_phrase(["aa", "bb", "cc"], 4, 3),
        "top_4gram": _with_phrase(["aa", "bb", "cc", "dd"], 4, 5),
        "dup_5gram": " ".join(UNIQUE[:60] + UNIQUE[:15]),
    }
    for rule, text in cases.items():
        if rule == "dup_line_char_frac":  # its paragraph twin is checked first
            g = GopherRepetitionFilter(max_dup_para_frac=None, max_dup_para_char_frac=None)
            assert _reason(g, text) == f"gopher_repetition:{rule}"
        else:
            assert _reason(f, text) == f"gopher_repetition:{rule}", rule
    # Each n of the duplicated n-gram rule works on its own.
    repeated = " ".join(UNIQUE[:40] + UNIQUE[:30])
    for n in range(5, 11):
        g = GopherRepetitionFilter(dup_n_grams=((n, 0.10),))
        assert _reason(g, repeated) == f"gopher_repetition:dup_{n}gram"
    # Short texts skip the n-gram rules when asked (chat).
    assert _reason(GopherRepetitionFilter(min_words_for_ngrams=50), "hello world") is None
    assert _reason(f, "") == "gopher_repetition:empty"


# --- C4 --------------------------------------------------------------------------------------

def test_c4_edits_lines_and_drops_documents():
    kept_lines = [
        "The first sentence is here. The second one follows it.",
        "A third sentence comes next. Then a fourth one ends the line!",
        "Is this the fifth sentence of the page?",
    ]
    removed = [
        "Menu Home About",                               # no terminal punctuation
        "Too short.",                                    # fewer than 3 words
        "Please enable JavaScript to view this page.",   # javascript
        "This site uses cookies to improve things.",     # policy
        "A " + "x" * 1001 + " word is far too long.",    # a word over 1000 characters
    ]
    text = "\n".join([removed[0], kept_lines[0], removed[1], kept_lines[1], removed[2],
                      "   " + kept_lines[2] + "[1]", removed[3], removed[4]])
    out, reason = C4Filter().apply(text)
    assert reason is None and out == "\n".join(kept_lines)  # stripped, citation removed
    assert _reason(C4Filter(), "\n".join(kept_lines[:2])) == "c4:too_few_sentences"
    assert _reason(C4Filter(), text + "\nLorem ipsum dolor sit amet.") == "c4:lorem_ipsum"
    assert _reason(C4Filter(), text + "\nUse a dict like {a: 1} here.") == "c4:curly_bracket"
    # A "{" on a line that is dropped anyway does not drop the document (datatrove's order).
    assert _reason(C4Filter(), text + "\n{") is None
    assert _reason(C4Filter(min_sentences=None), "Menu Home") == "c4:no_lines_left"
    loose = C4Filter(filter_no_terminal_punct=False)
    assert "Menu Home About" in loose.apply(text)[0]


# --- FineWeb ---------------------------------------------------------------------------------

def test_fineweb_rules():
    f = FineWebFilter()
    assert f.apply(CLEAN) == (CLEAN, None)
    no_punct = "\n".join(f"{w} is a heading without an end mark" for w in UNIQUE[:10])
    short = "\n".join([f"{w} ok." for w in UNIQUE[:8]] + [CLEAN.replace("\n", " ")])
    dup = CLEAN + "\nThe same closing line, repeated here.\nThe same closing line, repeated here."
    listy = "\n".join(f"{a} {b}." for a, b in zip(UNIQUE[:40:2], UNIQUE[1:40:2]))
    assert _reason(f, "\n \n") == "fineweb:empty"
    assert _reason(f, no_punct) == "fineweb:line_punct_ratio"
    assert _reason(f, short) == "fineweb:short_line_ratio"
    assert _reason(f, dup) == "fineweb:dup_line_char_ratio"
    assert _reason(FineWebFilter(max_short_line_ratio=1.0), listy) == "fineweb:list_ratio"
    assert _reason(FineWebFilter(max_dup_line_char_ratio=0.1), dup) is None
    assert _reason(FineWebFilter(line_punct_exclude_zero=True), no_punct) is None


# --- length, block list, language ------------------------------------------------------------

def test_length_filter():
    assert _reason(LengthFilter(min_chars=10), "short") == "length:too_short"
    assert _reason(LengthFilter(max_chars=3), "long") == "length:too_long"
    assert _reason(LengthFilter(min_words=3), "two words") == "length:too_few_words"
    assert _reason(LengthFilter(max_words=1), "two words") == "length:too_many_words"
    assert _reason(LengthFilter(min_chars=3, max_words=2), "two words") is None


def test_blocklist(tmp_path):
    f = BlocklistFilter(words=("darn", "top secret"), urls=("badsite.example",))
    assert _reason(f, "Well, DARN it!") == "blocklist:word"
    assert _reason(f, "This is Top  Secret? no; this is top secret.") == "blocklist:word"
    assert _reason(f, "The darnest thing.") is None  # whole words only
    assert _reason(f, "See https://www.BadSite.example/page") == "blocklist:url"
    words = tmp_path / "words.txt"
    words.write_text("# comment\nfrobnicate\n\n", encoding="utf-8")
    g = BlocklistFilter(words_file=str(words))
    assert _reason(g, "Do not frobnicate.") == "blocklist:word"
    assert _reason(BlocklistFilter(), "anything") is None
    with pytest.raises(LmforgeError, match="missing.txt"):
        BlocklistFilter(urls_file=str(tmp_path / "missing.txt"))


def test_language_filter():
    f = LanguageFilter()
    assert f.apply(CLEAN) == (CLEAN, None)
    french = ("Le petit chat est monté sur le toit de la maison parce qu'il voulait voir les "
              "oiseaux, mais sa maîtresse l'a appelé plusieurs fois avant la nuit.")
    russian = "Маленькая кошка забралась на крышу дома, потому что хотела увидеть птиц."
    assert _reason(f, french) == "language:not_english"
    assert _reason(f, russian) == "language:not_latin_script"
    assert _reason(f, "Merci beaucoup!") is None  # too few words to judge: script only
    assert _reason(LanguageFilter(min_english_score=0.9), CLEAN) == "language:not_english"
    with pytest.raises(LmforgeError, match="fasttext"):
        LanguageFilter(fasttext_model="/nonexistent/lid.176.bin")


# --- presets, config, pickling ---------------------------------------------------------------

def _run(filters, text):
    for f in filters:
        text, reason = f.apply(text)
        if text is None:
            return reason
    return None


def test_presets_and_overrides():
    assert set(PRESETS) == {"web", "docs", "prose", "chat"}
    web = build_filters("web")
    assert [f.name for f in web] == list(PRESETS["web"])
    assert _run(web, CLEAN) is None  # a clean English paragraph passes every web filter
    # A story told in dialogue: Gopher's alphabetic-word rule counts its punctuation as
    # words, so `web` drops it; `prose` keeps it, and still drops degenerate repetition.
    dialogue = ('"Mom," said Lily, "look! A bird!" "Yes," Mom said, "it is red." '
                '"Can we feed it?" "Yes, we can." "Yay!" Lily smiled. "Thank you, Mom!" '
                '"You are welcome," said Mom. "Now, let us go home." "Okay!"\n\n'
                '"Dad, Dad!" Lily ran in. "We fed a bird!" "Wow," Dad said, "was it big?" '
                '"No, small, and red!" "Did it sing?" "Yes! It sang, and then it flew." '
                '"Where to?" "Up, up, to the tree!" Dad laughed. "What a day!"')
    assert _run(web, dialogue) == "gopher_quality:alpha_words"
    assert _run(build_filters("prose"), dialogue) is None
    assert _run(build_filters("prose"), " ".join(["the cat sat on the mat"] * 30)) \
        .startswith("gopher_repetition:")
    short_chat = "Sure, I can help with that."
    assert _run(web, short_chat) == "length:too_short"
    assert _run(build_filters("chat"), short_chat) is None
    # Thresholds change outcomes; False turns a filter off (it does not run at all).
    assert _run(build_filters("web", {"gopher_quality": {"min_words": 200}}), CLEAN) \
        == "gopher_quality:too_few_words"
    off = build_filters("web", {"length": False, "gopher_quality": False,
                                "gopher_repetition": False, "c4": False, "fineweb": False})
    assert [f.name for f in off] == ["blocklist", "language"]
    assert _run(off, short_chat) is None
    # Filters the preset lacks are added; TOML lists become tuples.
    chat = build_filters("chat", {"c4": True, "blocklist": {"words": ["help"]}})
    assert chat[-1].name == "c4" and _run(chat, short_chat) == "blocklist:word"
    rep = build_filters("web", {"gopher_repetition": {"top_n_grams": [[2, 0.5]]}})
    assert [f for f in rep if f.name == "gopher_repetition"][0].top_n_grams == ((2, 0.5),)
    # describe_preset lists every setting with its value.
    desc = dict(describe_preset("docs"))
    assert desc["gopher_quality"]["min_words"] == 5
    assert desc["gopher_quality"]["max_bullet_lines_ratio"] is None


@pytest.mark.parametrize("overrides,needles", [
    ({"gopher_qualty": {}}, ["my recipe", "gopher_qualty", "valid filters", "gopher_quality"]),
    ({"c4": {"min_sentence": 3}}, ["my recipe", "'c4'", "min_sentence", "min_sentences"]),
    ({"c4": {"min_sentences": "3"}}, ["'c4'", "min_sentences", "an integer", "'3'"]),
    ({"fineweb": {"max_short_line_ratio": True}}, ["max_short_line_ratio", "a number"]),
    ({"blocklist": {"words": "darn"}}, ["words", "a list of strings"]),
    ({"gopher_quality": {"max_bullet_lines_ratio": 1.5}}, ["max_bullet_lines_ratio", "fraction"]),
    ({"length": {"min_chars": 10, "max_chars": 5}}, ["min_chars", "max_chars"]),
    ({"c4": 3}, ["'c4'", "true, false or a table"]),
])
def test_config_errors_name_the_problem(overrides, needles):
    with pytest.raises(LmforgeError) as err:
        build_filters("web", overrides, where="my recipe")
    for needle in needles:
        assert needle in str(err.value)


def test_unknown_preset():
    with pytest.raises(LmforgeError, match="valid presets: web, docs, prose, chat"):
        build_filters("news")


def test_false_turns_optional_rules_off_and_filters_pickle():
    f = build_filters("web", {"gopher_quality": {"max_symbol_word_ratio": False}})
    assert [x for x in f if x.name == "gopher_quality"][0].max_symbol_word_ratio is None
    everything = [cls() for cls in FILTER_TYPES.values()] + build_filters("docs") \
        + [BlocklistFilter(words=("darn", "top secret"), urls=("x.example",))]
    for flt in everything:
        back = pickle.loads(pickle.dumps(flt))
        assert back == flt
        for text in (CLEAN, "Well, darn. top secret {x}", ""):
            assert back.apply(text) == flt.apply(text)


# --- the embedded corpus: why presets differ by source -----------------------------------------

def test_docs_preset_keeps_python_docs_and_web_does_not():
    from lmforge.data.corpora.pydocs import build_pydocs_corpus

    texts = [t for t in (normalize_text(d.text) for d in build_pydocs_corpus()) if len(t) >= 64]
    docs, web = build_filters("docs"), build_filters("web")
    docs_kept = sum(_run(docs, t) is None for t in texts) / len(texts)
    web_kept = sum(_run(web, t) is None for t in texts[::4]) / len(texts[::4])
    assert 0.75 <= docs_kept <= 0.92  # measured 82.1% on CPython 3.11.7
    assert web_kept < 0.2             # measured 4.8%


# --- cross-check against datatrove -------------------------------------------------------------

def _tinystories(root: Path) -> list[str]:
    """Single paragraphs (many near Gopher's 50-word line), groups of four paragraphs
    (story-sized) and the <|endoftext|>-separated V2 stories, as read (with mojibake)."""
    valid = (root / "tinystories_v1_valid_part00.txt").read_text(encoding="utf-8")
    train = (root / "tinystories_v1_train_head_part01.txt").read_text(encoding="utf-8")
    v2 = (root / "tinystoriesv2_sample.txt").read_text(encoding="utf-8")
    paras = [p for p in valid.split("\n\n") if p.strip()][:1000]
    blocks = [p for p in train.split("\n\n") if p.strip()]
    groups = ["\n\n".join(blocks[i:i + 4]) for i in range(0, len(blocks), 4)][:400]
    stories = [s for s in v2.split("<|endoftext|>") if s.strip()]
    return paras + groups + stories


def _all_tinystories(root: Path) -> list[str]:
    """Every shared TinyStories file as blank-line blocks, groups of four blocks and
    <|endoftext|> pieces: 10,026 texts."""
    texts = []
    for path in sorted(root.glob("*.txt")):
        raw = path.read_text(encoding="utf-8")
        blocks = [p for p in raw.split("\n\n") if p.strip()]
        texts += blocks + ["\n\n".join(blocks[i:i + 4]) for i in range(0, len(blocks), 4)]
        texts += [s for s in raw.split("<|endoftext|>") if s.strip()]
    return texts


def _disagreements(texts: list[str]) -> list[tuple[str, str]]:
    """(filter, text) for every decision of lmforge's Gopher, C4 and FineWeb filters that
    differs from datatrove's on the same text (or where C4's edit leaves other text)."""
    from datatrove.data import Document
    from datatrove.pipeline import filters as dt

    pairs = [(dt.GopherQualityFilter(), GopherQualityFilter()),
             (dt.GopherRepetitionFilter(), GopherRepetitionFilter()),
             (dt.FineWebQualityFilter(), FineWebFilter()),
             (dt.C4QualityFilter(), C4Filter()),
             (dt.C4QualityFilter(filter_no_terminal_punct=False),
              C4Filter(filter_no_terminal_punct=False))]
    dropped = [0] * len(pairs)
    out = []
    for i, text in enumerate(texts):
        for j, (theirs, ours) in enumerate(pairs):
            doc = Document(text=text, id=str(i))
            kept_theirs = theirs.filter(doc) is True
            kept, _ = ours.apply(text)
            dropped[j] += kept is None
            if kept_theirs != (kept is not None) or (kept is not None and kept != doc.text):
                out.append((ours.name, text))
    assert all(0 < d < len(texts) for d in dropped)  # each filter both keeps and drops here
    return out


def _needs_datatrove() -> None:
    pytest.importorskip("datatrove")
    pytest.importorskip("spacy", reason="datatrove's English word tokenizer is spaCy's")


def _assert_same_decisions(raw: list[str]) -> None:
    """Identical decisions, document by document, for all five filters: on normalized text
    (what the pipeline filters) and on the text as read, mojibake included
    (fix_encoding = false)."""
    assert _disagreements([normalize_text(t) for t in raw]) == []
    assert _disagreements(raw) == []


def test_decisions_agree_with_datatrove(shared_data):
    _needs_datatrove()
    raw = _tinystories(shared_data / "tinystories")
    assert len(raw) == 1227
    _assert_same_decisions(raw)  # measured: 0 of 12,270 decisions differ


@pytest.mark.slow
def test_decisions_agree_with_datatrove_on_all_tinystories(shared_data):
    _needs_datatrove()
    raw = _all_tinystories(shared_data / "tinystories")
    assert len(raw) == 10026
    _assert_same_decisions(raw)  # measured: 0 of 100,260 (10,026 texts x 5 filters x 2)
