"""The embedded default corpus: the documentation that ships with every Python.

Two sources, both present in any standard install, so the quickstart needs no download:
- "pydoc-topics": the language reference topics of `pydoc_data.topics` (what `help("if")`
  shows), one document per topic.
- "stdlib-docstrings": module, class, function and method docstrings of the standard
  library. Pure-Python modules are parsed with `ast`, never imported (importing `antigravity`
  opens a browser, `this` prints, tkinter wants a display); built-in and C extension modules
  (math, itertools, _json, ...) have no side effects on import and are read with `inspect`.

Duplicated, inherited-style and very short docstrings are kept on purpose: curation is the
stage that removes them. The build is deterministic (same Python, same sorted list) and
takes about two seconds. On CPython 3.11.7 (Linux x86-64) it gives 9,228 documents and
2,652,191 characters: 79 topics (0.46 M characters) and 9,149 docstrings (2.19 M) from
651 pure-Python modules and 94 built-in and C extension modules.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import inspect
import os
import re
import sys
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmforge.data.documents import Document
from lmforge.errors import LmforgeError

TOPICS = "pydoc-topics"
DOCSTRINGS = "stdlib-docstrings"
# Folders of tests, GUI demos and the IDE: not documentation, or unsafe to treat as such.
_SKIP_DIRS = {"test", "tests", "idlelib", "turtledemo", "__pycache__"}
_SELF_NAMES = {"self", "cls", "mcls", "metacls"}
# A paragraph that is only a call signature, e.g. "S.split(sep=None) -> list of strings".
_SIGNATURE_LINE = re.compile(r"^[\w.]+\(.*\)(\s*->.*)?$", re.DOTALL)


def _public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def summary_of(doc: str) -> str:
    """The first paragraph of a docstring on one line, skipping a leading signature line."""
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", doc) if p.strip()]
    for para in paras:
        if not _SIGNATURE_LINE.match(para):
            return para
    return paras[0] if paras else ""


def _doc(module: str, obj: str, kind: str, signature: str, doc: str | None) -> Document | None:
    if not doc or not doc.strip():
        return None
    doc = inspect.cleandoc(doc)
    meta = {"module": module, "object": obj, "kind": kind, "summary": summary_of(doc)}
    return Document(f"{DOCSTRINGS}:{obj}", f"{obj}{signature}\n\n{doc}", DOCSTRINGS, meta)


def _topic_docs() -> list[Document]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package pydoc_data separately
        return []
    return [Document(f"{TOPICS}:{name}", text.strip(), TOPICS, {"topic": name})
            for name, text in sorted(topics.items()) if text.strip()]


# --- pure-Python modules, read with ast --------------------------------------------------

def _stdlib_sources(root: Path) -> Iterator[tuple[str, Path]]:
    found = []
    for folder, dirs, files in os.walk(root):
        # Prune as we go: only importable package folders (this skips site-packages,
        # lib-dynload and config-3.x-...), never tests, GUI demos or the IDE.
        dirs[:] = [d for d in dirs if d.isidentifier() and d not in _SKIP_DIRS]
        for name in files:
            stem = name[:-3]
            if name.endswith(".py") and stem.isidentifier():
                parts = Path(folder, stem).relative_to(root).parts
                module = ".".join(parts[:-1] if stem == "__init__" else parts)
                found.append((module, Path(folder, name)))
    yield from sorted(found)


def _ast_signature(args: ast.arguments, drop_self: bool) -> str:
    if drop_self:
        args = ast.arguments(**{f: getattr(args, f) for f in args._fields})
        if args.posonlyargs and args.posonlyargs[0].arg in _SELF_NAMES:
            args.posonlyargs = args.posonlyargs[1:]
        elif args.args and args.args[0].arg in _SELF_NAMES:
            args.args = args.args[1:]
    return f"({ast.unparse(args)})"


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements of a block, looking inside if/try: the stdlib defines much conditionally."""
    for node in body:
        if isinstance(node, ast.If):
            yield from _statements(node.body)
            yield from _statements(node.orelse)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse,
                          node.finalbody):
                yield from _statements(block)
        else:
            yield node


def _ast_docs(module: str, body: list[ast.stmt], prefix: str, in_class: bool) -> Iterator:
    for node in _statements(body):
        if isinstance(node, ast.ClassDef) and _public(node.name):
            qual = f"{prefix}.{node.name}"
            functions = (ast.FunctionDef, ast.AsyncFunctionDef)
            init = next((n for n in node.body if isinstance(n, functions)
                         and n.name == "__init__"), None)
            sig = _ast_signature(init.args, drop_self=True) if init else ""
            yield _doc(module, qual, "class", sig, ast.get_docstring(node, clean=False))
            yield from _ast_docs(module, node.body, qual, in_class=True)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
            sig = _ast_signature(node.args, drop_self=in_class)
            yield _doc(module, f"{prefix}.{node.name}", "method" if in_class else "function",
                       sig, ast.get_docstring(node, clean=False))


def _source_docs(root: Path) -> Iterator[Document | None]:
    for module, path in _stdlib_sources(root):
        try:
            with warnings.catch_warnings():  # e.g. invalid escape sequences in old files
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):  # Python 2 files in lib2to3 data and such
            continue
        yield _doc(module, module, "module", "", ast.get_docstring(tree, clean=False))
        yield from _ast_docs(module, tree.body, module, in_class=False)


# --- built-in and C extension modules, read with inspect ---------------------------------

def _compiled_module_names(stdlib: Path) -> list[str]:
    names = set(sys.builtin_module_names)
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for folder in (stdlib / "lib-dynload", Path(sys.base_prefix) / "DLLs"):
        if folder.is_dir():
            names.update(p.name.split(".")[0] for p in folder.iterdir()
                         if p.name.endswith(suffixes))
    # Test and example modules, and readline (it can write terminal escapes on import).
    return sorted(n for n in names if "test" not in n and not n.lstrip("_").startswith("xx")
                  and n != "readline")


def _signature(obj: Any, drop_self: bool) -> str:
    try:
        sig = inspect.signature(obj)
    except Exception:  # noqa: BLE001 - no signature, or defaults that fail to evaluate
        return ""
    params = list(sig.parameters.values())
    if drop_self and params and params[0].name in _SELF_NAMES:
        sig = sig.replace(parameters=params[1:])
    return str(sig)


def _compiled_docs(name: str) -> Iterator[Document | None]:
    try:
        with warnings.catch_warnings():  # deprecated modules (audioop, ...) warn on import
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - e.g. _tkinter without its system library
        return
    yield _doc(name, name, "module", "", module.__doc__)
    for attr, obj in sorted(vars(module).items()):
        # Programs swap hooks such as sys.excepthook; sys keeps the originals as __name__, and
        # reading those keeps the corpus the same whatever the running program installed.
        obj = vars(module).get(f"__{attr}__", obj)
        if not _public(attr) or getattr(obj, "__module__", name) not in (name, None):
            continue  # private, or re-exported from another module
        qual = f"{name}.{attr}"
        if inspect.isclass(obj):
            yield _doc(name, qual, "class", _signature(obj, drop_self=False), obj.__doc__)
            for meth, member in sorted(vars(obj).items()):
                if _public(meth) and inspect.isroutine(member):
                    yield _doc(name, f"{qual}.{meth}", "method",
                               _signature(member, drop_self=True), member.__doc__)
        elif inspect.isroutine(obj):
            yield _doc(name, qual, "function", _signature(obj, drop_self=False), obj.__doc__)


def _unique_ids(docs: Iterable[Document | None]) -> list[Document]:
    """Drop empties; number repeated names (functions defined in both branches of an if)."""
    seen: dict[str, int] = {}
    out = []
    for doc in docs:
        if doc is None:
            continue
        n = seen[doc.id] = seen.get(doc.id, 0) + 1
        if n > 1:
            doc.id = f"{doc.id}#{n}"
        out.append(doc)
    return out


def build_pydocs_corpus() -> list[Document]:
    """Every pydoc topic and standard-library docstring of this Python, sorted by id."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docstrings: list[Document | None] = list(_source_docs(stdlib))
    # "stdlib" is the base installation's even inside a virtual environment, where
    # "platstdlib" points into the venv (which has no lib-dynload).
    for name in _compiled_module_names(stdlib):
        docstrings.extend(_compiled_docs(name))
    docs = _topic_docs() + _unique_ids(docstrings)
    if not docs:
        raise LmforgeError("this Python ships no documentation to build the default corpus from",
                           hint="give your own data files instead of the default corpus")
    return sorted(docs, key=lambda d: d.id)


def corpus_stats(docs: Iterable[Document]) -> dict[str, Any]:
    """Document and character counts, in total and by source."""
    by_source: dict[str, dict[str, int]] = {}
    for doc in docs:
        entry = by_source.setdefault(doc.source, {"documents": 0, "characters": 0})
        entry["documents"] += 1
        entry["characters"] += len(doc.text)
    return {
        "documents": sum(e["documents"] for e in by_source.values()),
        "characters": sum(e["characters"] for e in by_source.values()),
        "by_source": dict(sorted(by_source.items())),
    }
