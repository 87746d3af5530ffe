"""Built-in evaluation suites: the `base` suite for pretrained models.

The benchmark files live in a data root: the `data_root` argument (the CLI's
`--data-root`), else `$LMFORGE_EVAL_DATA`, else `../shared/data` beside the repository. The
base suite runs the benchmarks a root holds and names the absent ones; `select_builtin`
also picks tasks by name (the CLI's `--tasks hellaswag,arc_easy`, names in BUILTIN_TASKS).
Each task formats its records the way lm-evaluation-harness 0.4 does (its task YAML and
utils files are cited per task), so scores are comparable with published lm-eval numbers:

- hellaswag: "{activity_label}: {ctx}" and the 4 endings through lm-eval's `preprocess`.
  The shared copy (klosax's extraction) lacks ctx_a/ctx_b, so lm-eval's capitalization of
  ctx_b cannot be redone; feeding lm-eval the record with ctx_a=ctx, ctx_b="" gives exactly
  the prompts here.
- arc_easy / arc_challenge (test split), piqa: "Question: ...\\nAnswer:" and the choices.
- winogrande: partial scoring; each option fills the blank of the prefix, the text after the
  blank is scored (lm-eval's preprocess_winogrande.py). Version 1.0 dev (see SOURCE.md).
- lambada (OpenAI detokenized test): the last space-separated word; acc = greedy match,
  perplexity = exp(-mean log-likelihood) (lm-eval's lambada_openai).
- wikitext (WikiText-2 test, the tokenized v1 file): one document per article, lm-eval's
  `wikitext_detokenizer` applied before scoring; words and bytes are counted on the text
  before detokenizing, as lm-eval's wikitext task does. lm-eval reads the *raw* variant, so
  absolute numbers differ from its table (`<unk>` here), not the method.
- docstrings_mc / docstrings_bpb: held-out standard-library docstrings (docstrings.py).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.data.eval_root import ENV as EVAL_DATA_ENV
from lmforge.data.eval_root import eval_data_root
from lmforge.errors import LmforgeError
from lmforge.eval.docstrings import docstring_tasks
from lmforge.eval.tasks import (
    LoglikelihoodItem,
    LoglikelihoodTask,
    MCItem,
    MultipleChoiceTask,
    PerplexityItem,
    PerplexityTask,
    Record,
    Task,
    parse_gold,
)

# Items per multiple-choice / last-word task unless the caller lifts it: enough for a
# stderr near 2 points (sqrt(.25/500) = 0.022) at a CPU-friendly cost.
DEFAULT_LIMIT = 500


default_data_root = eval_data_root  # --data-root, $LMFORGE_EVAL_DATA, ../shared/data


# ---- per-benchmark record parsers --------------------------------------------------------

def hellaswag_preprocess(text: str) -> str:
    """lm-eval's tasks/hellaswag/utils.py `preprocess`: WikiHow bracket markup removed."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def parse_hellaswag(record: Record, index: int) -> MCItem:
    ctx = record.get("activity_label") + ": " + record.get("ctx")
    endings = [hellaswag_preprocess(e) for e in record.get("endings")]
    return MCItem(hellaswag_preprocess(ctx), endings,
                  parse_gold(int(record.get("label")), endings, record.where), index)


def parse_arc(record: Record, index: int) -> MCItem:
    choices = record.get("choices")
    if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
        raise LmforgeError(f"{record.where}: 'choices' must be {{\"text\": [...], "
                           f"\"label\": [...]}}")
    key = record.get("answerKey")
    if key not in choices["label"]:
        raise LmforgeError(f"{record.where}: answerKey {key!r} is not one of the labels "
                           f"{choices['label']}")
    return MCItem(f"Question: {record.get('question')}\nAnswer:", list(choices["text"]),
                  choices["label"].index(key), index)


def parse_piqa(record: Record, index: int) -> MCItem:
    choices = [record.get("sol1"), record.get("sol2")]
    return MCItem(f"Question: {record.get('goal')}\nAnswer:", choices,
                  parse_gold(int(record.get("label")), choices, record.where), index)


def parse_winogrande(record: Record, index: int) -> MCItem:
    sentence = record.get("sentence")
    if "_" not in sentence:
        raise LmforgeError(f"{record.where}: the sentence has no '_' blank")
    blank = sentence.index("_")
    choices = [record.get("option1"), record.get("option2")]
    gold = {"1": 0, "2": 1}.get(str(record.get("answer")))
    if gold is None:
        raise LmforgeError(f"{record.where}: answer {record.get('answer')!r} is not '1' or '2'")
    return MCItem(sentence[:blank], choices, gold, index, suffix=sentence[blank + 1:].strip())


def parse_lambada(record: Record, index: int) -> LoglikelihoodItem:
    words = record.get("text").split(" ")
    return LoglikelihoodItem(" ".join(words[:-1]), " " + words[-1], index)


def wikitext_detokenize(text: str) -> str:
    """lm-eval's tasks/wikitext/preprocess_wikitext.py `wikitext_detokenizer`, step by step."""
    s = text.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
    for a, b in ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."), (" : ", ": "),
                 (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", ")):
        s = s.replace(a, b)
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    for a, b in (("= = = =", "===="), ("= = =", "==="), ("= =", "=="),
                 (" " + chr(176) + " ", chr(176)), (" \n", "\n"), ("\n ", "\n"),
                 (" N ", " 1 "), (" 's", "'s")):
        s = s.replace(a, b)
    return s


_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


def read_wikitext(path: Path) -> list[PerplexityItem]:
    """Articles of a WikiText `.tokens` file: each starts at a top-level ` = Title = ` line."""
    if not path.is_file():
        raise LmforgeError(f"{path}: no such file", hint="check the data root")
    articles: list[list[str]] = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if _ARTICLE_HEADING.match(line.rstrip("\n")):
            articles.append([])
        if articles:
            articles[-1].append(line)
    items = []
    for i, lines in enumerate(articles):
        page = "".join(lines).strip()
        words = len(re.split(r"\s+", page))
        items.append(PerplexityItem(wikitext_detokenize(page), i, words=words,
                                    n_bytes=len(page.encode("utf-8"))))
    return items


# ---- the suite -------------------------------------------------------------------------

# The benchmarks of the base suite, in report order, and the held-out docstring tasks (which
# need no files). Every name here is a built-in task name for `--tasks NAME,NAME`.
BENCHMARKS = ("hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande", "lambada",
              "wikitext")
DOCSTRING_TASKS = ("docstrings_mc", "docstrings_bpb")
BUILTIN_TASKS = (*BENCHMARKS, *DOCSTRING_TASKS)


@dataclass
class Selection:
    """Built-in tasks to run, and the benchmarks left out because the data root lacks their
    file (name -> the path looked for), so a report can say what it did not run."""
    tasks: list[Task]
    absent: dict[str, str] = field(default_factory=dict)


def _mc(name: str, path: Path, parse: Callable, limit: int | None) -> MultipleChoiceTask:
    return MultipleChoiceTask(name=name, path=path, limit=limit, parse=parse)


def _benchmarks(root: Path, limit: int | None) -> list[Task]:
    """Every benchmark task over `root` (nothing is read yet)."""
    return [
        _mc("hellaswag", root / "hellaswag" / "hellaswag_val.jsonl", parse_hellaswag, limit),
        _mc("arc_easy", root / "arc" / "ARC-Easy-test.jsonl", parse_arc, limit),
        _mc("arc_challenge", root / "arc" / "ARC-Challenge-test.jsonl", parse_arc, limit),
        _mc("piqa", root / "piqa" / "piqa_valid.jsonl", parse_piqa, limit),
        _mc("winogrande", root / "winogrande" / "winogrande_v1.0_dev.jsonl", parse_winogrande,
            limit),
        LoglikelihoodTask(name="lambada", path=root / "lambada" / "lambada_test.jsonl",
                          limit=limit, parse=parse_lambada),
        PerplexityTask(name="wikitext", path=root / "wikitext2" / "wiki.test.tokens",
                       reader=read_wikitext),
    ]


def parse_task_names(text: str | Sequence[str]) -> list[str]:
    """Built-in task names from "hellaswag,arc_easy" (lm-eval's --tasks form) or a list;
    an unknown name is an error that lists the valid ones."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = list(dict.fromkeys(str(n).strip() for n in parts if str(n).strip()))
    unknown = [n for n in names if n not in BUILTIN_TASKS]
    if unknown or not names:
        what = f"unknown task(s): {', '.join(unknown)}" if unknown else "no task names given"
        raise LmforgeError(f"{what}; built-in tasks are {', '.join(BUILTIN_TASKS)}",
                           hint="e.g. lmforge eval MODEL --tasks hellaswag,arc_easy (a task "
                                "file's name must end in .toml)")
    return names


def select_builtin(data_root: str | Path | None = None, limit: int | None = DEFAULT_LIMIT,
                   names: Sequence[str] | None = None, include_docstrings: bool = True
                   ) -> Selection:
    """The base suite (`names` None), or the named built-in tasks in the order given.

    The whole suite runs the benchmarks its data root holds and notes the absent ones (on
    stderr and in `Selection.absent`); a root with none of them is an error, except that
    with no root given anywhere (a user's clone) only the docstring tasks run. A benchmark
    asked for by name must be there."""
    if names is None:
        wanted = list(BENCHMARKS) + (list(DOCSTRING_TASKS) if include_docstrings else [])
    else:
        wanted = parse_task_names(names)
    bench_names = [n for n in wanted if n in BENCHMARKS]
    by_name: dict[str, Task] = {}
    absent: dict[str, str] = {}
    if bench_names:
        root = default_data_root(data_root)
        if not root.is_dir():
            nobody_pointed = data_root is None and not os.environ.get(EVAL_DATA_ENV)
            if not (names is None and include_docstrings and nobody_pointed):
                raise LmforgeError(f"evaluation data root {root} does not exist",
                                   hint="pass --data-root, set LMFORGE_EVAL_DATA, or run the "
                                        "'pydocs' suite, which needs no files")
            # A user's clone without shared/data: run what needs no files rather than fail
            # the quickstart.
            print(f"note: no benchmark files at {root}; the base suite runs the held-out "
                  f"docstring tasks only (set {EVAL_DATA_ENV} or pass --data-root for "
                  "HellaSwag, ARC, PIQA, WinoGrande, LAMBADA and WikiText)", file=sys.stderr)
        for task in _benchmarks(root, limit):
            if task.name not in bench_names:
                continue
            if Path(task.path).is_file():
                by_name[task.name] = task
            else:
                absent[task.name] = str(task.path)
        if absent and names is not None:
            raise LmforgeError(f"no file for {', '.join(absent)} under {root}: "
                               f"{', '.join(absent.values())}",
                               hint="point --data-root at a folder laid out like shared/data, "
                                    "or leave those out of --tasks")
        if root.is_dir() and not by_name:
            raise LmforgeError(f"evaluation data missing under {root}: none of "
                               f"{', '.join(absent.values())}",
                               hint="point --data-root at a folder laid out like shared/data")
        if root.is_dir() and absent:
            print(f"note: {root} holds no file for {', '.join(absent)}; running "
                  f"{', '.join(by_name)} (and skipping the rest)", file=sys.stderr)
    if any(n in DOCSTRING_TASKS for n in wanted):
        by_name.update((t.name, t) for t in docstring_tasks(limit=limit))
    return Selection([by_name[n] for n in wanted if n in by_name], absent)


def base_suite(data_root: str | Path | None = None, limit: int | None = DEFAULT_LIMIT,
               include_docstrings: bool = True) -> list[Task]:
    """The base-model suite. `limit` caps the multiple-choice and last-word tasks (None:
    every item); wikitext is always whole (44 articles in the shared copy). Benchmarks
    whose file the data root lacks are left out (see `select_builtin`)."""
    return select_builtin(data_root, limit, None, include_docstrings).tasks


def pydocs_suite(data_root: str | Path | None = None, limit: int | None = DEFAULT_LIMIT
                 ) -> list[Task]:
    """Only the held-out docstring tasks: needs no data files (the embedded corpus)."""
    return docstring_tasks(limit=limit)


# name -> (data_root, limit) -> tasks; the CLI looks suites up here.
SUITES: dict[str, Callable[..., list[Task]]] = {"base": base_suite, "pydocs": pydocs_suite}
