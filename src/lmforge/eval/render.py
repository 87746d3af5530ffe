"""Prompts for evaluation items: few-shot examples, plain text for base models, and the chat
layout for chat models; plus the (context ids, continuation ids) requests the scorer reads.

Few-shot follows lm-evaluation-harness: each example is its context, the target delimiter
and its gold answer; examples and the question are joined by the few-shot delimiter.
Examples are drawn with a seeded RNG per item, so an item's prompt is the same whatever
the limit or order, and never include the item itself.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.eval.scorer import encode_pair
from lmforge.eval.tasks import (
    GenerationItem,
    LoglikelihoodItem,
    MCItem,
    MultipleChoiceTask,
    PerplexityItem,
)
from lmforge.tokenizer import Tokenizer

STYLES = ("plain", "chat")


@dataclass(frozen=True)
class Prompt:
    text: str  # what a person reads in the report
    ids: list[int] | None = None  # chat style: the rendered conversation's token ids


def fewshot_examples(task: Any, item: Any, pool: Sequence[Any]) -> list[Any]:
    """`task.num_fewshot` examples from `pool`, seeded by (fewshot_seed, item index); the
    item itself is excluded when the pool is the task's own file."""
    k = task.num_fewshot
    if k <= 0:
        return []
    candidates = [p for p in pool
                  if not (task.same_file_fewshot and p.index == item.index)]
    if len(candidates) < k:
        raise LmforgeError(f"task '{task.name}': {k} few-shot examples asked but only "
                           f"{len(candidates)} are available",
                           hint="lower num_fewshot or give a larger fewshot_path")
    # One RNG per item (not one for the whole run) so a prompt does not depend on which
    # other items were evaluated before it.
    rng = random.Random(task.fewshot_seed * 1_000_003 + item.index)
    return rng.sample(candidates, k)


def answer_text(item: Any) -> str:
    """The text that follows an example's context in a few-shot example."""
    if isinstance(item, MCItem):
        return item.suffix if item.suffix is not None else item.choices[item.gold]
    if isinstance(item, LoglikelihoodItem):
        return item.continuation
    if isinstance(item, GenerationItem):
        return item.references[0]
    raise LmforgeError(f"{type(item).__name__} items have no few-shot form")


def question_text(item: Any, example: bool = False) -> str:
    """An item's context; as a few-shot example a partial-scoring item shows its context
    filled with the gold choice (its answer text is then the shared suffix)."""
    if isinstance(item, MCItem):
        if example and item.suffix is not None:
            return item.context + item.choices[item.gold]
        return item.context
    if isinstance(item, LoglikelihoodItem):
        return item.context
    if isinstance(item, GenerationItem):
        return item.prompt
    if isinstance(item, PerplexityItem):
        return item.text
    raise TypeError(type(item).__name__)


def render_context(task: Any, item: Any, fewshot: Sequence[Any] = ()) -> str:
    """Plain-text context: the few-shot examples, then the item's own context."""
    # A loglikelihood item's continuation carries its own leading space (lambada: " word").
    shots = [question_text(ex, example=True) + ("" if isinstance(ex, LoglikelihoodItem)
                                  else task.target_delimiter) + answer_text(ex)
             for ex in fewshot]
    return task.fewshot_delimiter.join([*shots, question_text(item)])


def render_prompt(task: Any, item: Any, tok: Tokenizer, style: str = "plain",
                  fewshot: Sequence[Any] = ()) -> Prompt:
    """The prompt for an item: plain text, or a one-user-message chat with the
    generation prompt appended (the few-shot examples go inside that message)."""
    if style not in STYLES:
        raise LmforgeError(f"unknown prompt style '{style}'", hint="use 'plain' or 'chat'")
    text = render_context(task, item, fewshot)
    if style == "plain":
        return Prompt(text)
    ids, _ = tok.render_chat([{"role": "user", "content": text}], add_generation_prompt=True)
    return Prompt(text, ids)


def mc_requests(task: MultipleChoiceTask, item: MCItem, tok: Tokenizer, style: str = "plain",
                fewshot: Sequence[Any] = (), add_bos: bool = True
                ) -> list[tuple[list[int], list[int]]]:
    """One (context ids, continuation ids) request per choice, lm-eval's convention."""
    context = render_context(task, item, fewshot)
    if item.suffix is not None:  # WinoGrande: the choice completes the context
        pairs = [(context + c, task.target_delimiter + item.suffix) for c in item.choices]
    else:
        pairs = [(context, task.target_delimiter + c) for c in item.choices]
    if style == "plain":
        return [encode_pair(tok, ctx, cont, add_bos) for ctx, cont in pairs]
    # Chat: the answer is the assistant's turn; no delimiter in front of it (lm-eval drops
    # the target delimiter under a chat template for the same reason).
    out = []
    for ctx, cont in pairs:
        ids, _ = tok.render_chat([{"role": "user", "content": ctx}], add_generation_prompt=True)
        out.append((ids, tok.encode(cont[len(task.target_delimiter):])))
    return out


def loglikelihood_request(task: Any, item: LoglikelihoodItem, tok: Tokenizer,
                          fewshot: Sequence[Any] = (), add_bos: bool = True
                          ) -> tuple[list[int], list[int]]:
    return encode_pair(tok, render_context(task, item, fewshot), item.continuation, add_bos)
