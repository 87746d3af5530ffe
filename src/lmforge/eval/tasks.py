"""Evaluation tasks: what to score, read from local JSONL files named in a TOML file.

```toml
[tasks.my_mc]
kind = "multiple_choice"            # | "generation" | "perplexity" | "loglikelihood"
path = "data/mc.jsonl"              # relative to the TOML file; .jsonl or .jsonl.gz
context_field = "question"          # or context_template = "Question: {question}\\nAnswer:"
choices_field = "choices"
gold_field = "answer"               # an index, a choice string, or a letter "A".."E"
```

Each kind is a dataclass with `load_items()`. Built-in suites (suites.py) set `parse`, a
function from one JSON record (or, with `reader`, from the whole file) to items, where a
benchmark needs preprocessing that field names cannot express. Every mistake in a file
raises LmforgeError naming the file and line.
"""

from __future__ import annotations

import re
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from lmforge._toml import tomllib
from lmforge.data.jsonl import json_objects
from lmforge.errors import LmforgeError

GEN_METRICS = ("exact_match", "contains", "regex", "f1")


# ---- items -----------------------------------------------------------------------------

@dataclass
class MCItem:
    """A multiple-choice question. The request for choice i is
    (context, target_delimiter + choices[i]), as in lm-evaluation-harness. With `suffix`
    set (WinoGrande's partial scoring) the request is instead
    (context + choices[i], target_delimiter + suffix): the choice fills the context and
    the shared suffix is what is scored."""
    context: str
    choices: list[str]
    gold: int
    index: int = 0
    suffix: str | None = None


@dataclass
class LoglikelihoodItem:
    """Score one continuation: greedy-match accuracy and its perplexity / bits per byte."""
    context: str
    continuation: str
    index: int = 0


@dataclass
class GenerationItem:
    prompt: str
    references: list[str]
    index: int = 0


@dataclass
class PerplexityItem:
    """A document scored whole. `words` and `n_bytes` are the denominators of word
    perplexity and bits per byte (wikitext counts them on the text before detokenizing)."""
    text: str
    index: int = 0
    words: int | None = None
    n_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.words is None:
            self.words = len(re.split(r"\s+", self.text))  # lm-eval's wikitext word count
        if self.n_bytes is None:
            self.n_bytes = len(self.text.encode("utf-8"))


Item = MCItem | LoglikelihoodItem | GenerationItem | PerplexityItem


# ---- reading records -------------------------------------------------------------------

@dataclass
class Record:
    """One JSON object of a JSONL file and where it came from, for error messages."""
    data: dict[str, Any]
    where: str  # "file.jsonl:17"

    def get(self, name: str) -> Any:
        if name not in self.data:
            raise LmforgeError(f"{self.where}: no field '{name}' "
                               f"(fields: {', '.join(sorted(self.data)) or 'none'})",
                               hint="fix the field name in the task definition")
        return self.data[name]

    def fill(self, template: str, what: str) -> str:
        """str.format the template with this record's fields."""
        try:
            return template.format(**self.data)
        except KeyError as e:
            raise LmforgeError(
                f"{self.where}: {what} uses {{{e.args[0]}}} but the record has no field "
                f"'{e.args[0]}' (fields: {', '.join(sorted(self.data))})",
                hint="use only the record's field names in braces") from None
        except (IndexError, ValueError, AttributeError) as e:
            raise LmforgeError(f"{self.where}: bad {what} {template!r}: {e}",
                               hint="write {field} for a field; double braces for literal ones"
                               ) from None


def read_jsonl(path: Path) -> Iterator[Record]:
    """Records of a .jsonl or .jsonl.gz file, skipping blank lines."""
    if not path.is_file():
        raise LmforgeError(f"{path}: no such file", hint="check the task's path")
    for where, data in json_objects(path):
        yield Record(data, where)


def parse_gold(value: Any, choices: list[str], where: str) -> int:
    """A gold answer as an index: an int, a choice's text, a letter A-E or a digit string."""
    if isinstance(value, bool):
        raise LmforgeError(f"{where}: gold answer {value!r} is a boolean",
                           hint="give an index, a choice's text or a letter")
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and value in choices:
        index = choices.index(value)
    elif isinstance(value, str) and len(value) == 1 and value in "ABCDE":
        index = ord(value) - ord("A")
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value)
    else:
        raise LmforgeError(f"{where}: gold answer {value!r} is not an index, a letter or one "
                           f"of the choices {choices!r}")
    if not 0 <= index < len(choices):
        raise LmforgeError(f"{where}: gold answer {value!r} is out of range for "
                           f"{len(choices)} choices",
                           hint="indexes start at 0; letters at A")
    return index


# ---- tasks -----------------------------------------------------------------------------

@dataclass
class _TaskBase(ABC):
    name: str
    path: Path
    limit: int | None = None
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    fewshot_path: Path | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    # Built-in tasks: one record -> an item (or None to skip it), or the whole file -> items.
    parse: Callable[[Record, int], Any] | None = field(default=None, repr=False, compare=False)
    reader: Callable[[Path], list[Any]] | None = field(default=None, repr=False, compare=False)

    kind: ClassVar[str] = ""

    def load_items(self) -> list[Any]:
        items = self._load(self.path)
        if self.limit is not None:
            items = items[:self.limit]
        if not items:
            raise LmforgeError(f"task '{self.name}': {self.path} holds no items",
                               hint="point the task at a file with at least one record")
        return items

    def load_fewshot_pool(self) -> list[Any]:
        """Few-shot examples: from fewshot_path, else the task's own file (the item being
        asked is excluded when examples are drawn, see render.fewshot_examples)."""
        return self._load(self.fewshot_path or self.path)

    def _load(self, path: Path) -> list[Any]:
        if self.reader is not None:
            return self.reader(path)
        items = []
        for record in read_jsonl(path):
            item = (self.parse or self._parse)(record, len(items))
            if item is not None:
                items.append(item)
        return items

    @abstractmethod
    def _parse(self, record: Record, index: int) -> Any: ...

    @property
    def same_file_fewshot(self) -> bool:
        return self.fewshot_path is None or Path(self.fewshot_path) == Path(self.path)


@dataclass
class MultipleChoiceTask(_TaskBase):
    context_field: str | None = None
    context_template: str | None = None
    choices_field: str = "choices"
    gold_field: str = "answer"
    kind: ClassVar[str] = "multiple_choice"

    def _parse(self, record: Record, index: int) -> MCItem:
        context = _context(record, self.context_field, self.context_template)
        choices = record.get(self.choices_field)
        if not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) for c in choices):
            raise LmforgeError(f"{record.where}: field '{self.choices_field}' must be a list "
                               f"of two or more strings, got {choices!r}")
        gold = parse_gold(record.get(self.gold_field), choices, record.where)
        return MCItem(context, choices, gold, index)


@dataclass
class LoglikelihoodTask(_TaskBase):
    context_field: str | None = None
    context_template: str | None = None
    continuation_field: str = "continuation"
    # Last-word tasks (LAMBADA) report all three; for long continuations (a docstring's
    # summary) greedy-match accuracy and whole-continuation perplexity say nothing: keep bpb.
    metrics: tuple[str, ...] = ("acc", "perplexity", "bpb")
    kind: ClassVar[str] = "loglikelihood"

    def __post_init__(self) -> None:
        self.metrics = tuple(self.metrics)
        unknown = [m for m in self.metrics if m not in ("acc", "perplexity", "bpb")] or \
            (["(none)"] if not self.metrics else [])
        if unknown:
            raise LmforgeError(f"task '{self.name}': unknown metric(s) {', '.join(unknown)}",
                               hint="choose from acc, perplexity, bpb")

    def _parse(self, record: Record, index: int) -> LoglikelihoodItem:
        context = _context(record, self.context_field, self.context_template)
        return LoglikelihoodItem(context, _text(record, self.continuation_field), index)


@dataclass
class GenerationTask(_TaskBase):
    prompt_field: str | None = None
    prompt_template: str | None = None
    references_field: str = "answer"
    metric: str = "exact_match"
    regex: str | None = None
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=lambda: ["\n"])
    kind: ClassVar[str] = "generation"

    def __post_init__(self) -> None:
        if self.metric not in GEN_METRICS:
            raise LmforgeError(f"task '{self.name}': unknown metric '{self.metric}'",
                               hint=f"choose one of {', '.join(GEN_METRICS)}")
        if self.metric == "regex":
            if not self.regex:
                raise LmforgeError(f"task '{self.name}': metric 'regex' needs `regex = \"...\"`")
            try:
                re.compile(self.regex)
            except re.error as e:
                raise LmforgeError(f"task '{self.name}': bad regex {self.regex!r}: {e}") from None

    def _parse(self, record: Record, index: int) -> GenerationItem:
        prompt = _context(record, self.prompt_field, self.prompt_template, "prompt")
        refs = record.get(self.references_field)
        refs = [refs] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise LmforgeError(f"{record.where}: field '{self.references_field}' must be a "
                               f"string or a non-empty list of strings, got {refs!r}")
        return GenerationItem(prompt, refs, index)


@dataclass
class PerplexityTask(_TaskBase):
    text_field: str = "text"
    kind: ClassVar[str] = "perplexity"

    def _parse(self, record: Record, index: int) -> PerplexityItem | None:
        text = _text(record, self.text_field)
        return PerplexityItem(text, index) if text else None


Task = MultipleChoiceTask | LoglikelihoodTask | GenerationTask | PerplexityTask
KINDS: dict[str, type] = {t.kind: t for t in (MultipleChoiceTask, LoglikelihoodTask,
                                              GenerationTask, PerplexityTask)}


def _text(record: Record, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise LmforgeError(f"{record.where}: field '{name}' must be a string, "
                           f"got {type(value).__name__}")
    return value


def _context(record: Record, field_name: str | None, template: str | None,
             what: str = "context") -> str:
    if template is not None:
        return record.fill(template, f"{what}_template")
    if field_name is None:
        raise LmforgeError(f"{record.where}: the task sets neither {what}_field nor "
                           f"{what}_template")
    return _text(record, field_name)


# ---- TOML ------------------------------------------------------------------------------

_PATH_KEYS = ("path", "fewshot_path")


def load_tasks_toml(path: str | Path) -> list[Task]:
    """The tasks of a TOML file (`[tasks.NAME]` tables), paths relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"{path}: no such task file", hint="check the --tasks path")
    text = path.read_text(encoding="utf-8")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise LmforgeError(f"{path}: not valid TOML ({e})") from None
    tables = doc.get("tasks")
    if not isinstance(tables, dict) or not tables:
        raise LmforgeError(f"{path}: no [tasks.NAME] tables",
                           hint='add e.g. [tasks.my_mc] with kind = "multiple_choice"')
    return [_task_from_table(name, table, path, text) for name, table in tables.items()]


def _task_from_table(name: str, table: Any, path: Path, text: str) -> Task:
    where = f"{path.name}:{_line_of(text, name)}"
    if not isinstance(table, dict):
        raise LmforgeError(f"{where}: tasks.{name} must be a table")
    kind = table.get("kind")
    if kind not in KINDS:
        raise LmforgeError(f"{where}: task '{name}' has unknown kind {kind!r}",
                           hint=f"kind must be one of {', '.join(KINDS)}")
    cls = KINDS[kind]
    allowed = {f.name for f in fields(cls) if f.init} - {"name", "parse", "reader"}
    values = {k: v for k, v in table.items() if k != "kind"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise LmforgeError(f"{where}: task '{name}' has unknown key(s) {', '.join(unknown)}",
                           hint=f"keys for {kind}: {', '.join(sorted(allowed))}")
    if "path" not in values:
        raise LmforgeError(f"{where}: task '{name}' needs `path = \"....jsonl\"`")
    for key in _PATH_KEYS:
        if key in values:
            values[key] = (path.parent / values[key]).resolve()
    for key in ("limit", "num_fewshot", "fewshot_seed", "max_new_tokens"):
        v = values.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise LmforgeError(f"{where}: task '{name}': {key} must be a whole number >= 0, "
                               f"got {v!r}")
    for key in ("context_template", "prompt_template"):
        if key in values:
            _check_template(values[key], where, key)
    try:
        return cls(name=name, **values)
    except LmforgeError as e:
        raise LmforgeError(f"{where}: {e.message}", hint=e.hint) from None


def _check_template(template: Any, where: str, key: str) -> None:
    if not isinstance(template, str):
        raise LmforgeError(f"{where}: {key} must be a string")
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise LmforgeError(f"{where}: bad {key} {template!r}: {e}",
                           hint="write {field} for a field; double braces for literal ones"
                           ) from None
    if any(n == "" or n.isdigit() for n in names):
        raise LmforgeError(f"{where}: {key} {template!r} has a positional field {{}}",
                           hint="name the record field inside the braces, e.g. {question}")


def _line_of(text: str, name: str) -> int:
    """The line of a task's [tasks.NAME] header, for error messages (1 if not found)."""
    pattern = re.compile(rf"^\s*\[\s*tasks\s*\.\s*[\"']?{re.escape(name)}[\"']?\s*\]")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return 1
