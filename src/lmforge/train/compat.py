"""Whether two models can work together, checked before anything trains.

RLHF scores the policy's own token ids with a reward model and compares its log-probabilities
with a frozen reference's, token by token. Both only mean something when the models share the
token space: the same ids for the same bytes, split by the same merges. A reference must also
be the policy's architecture: it is the model the policy started from, and a per-token KL to
an unrelated network measures nothing the user asked for.
"""

from __future__ import annotations

import json

from lmforge.design.spec import ModelDesign
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

# What makes two designs one architecture (the name is a label, not a shape).
_SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "vocab_size",
                 "context_length", "ffn_hidden", "rope_theta", "norm_eps", "tie_embeddings")


def tokenizer_difference(a: Tokenizer, b: Tokenizer) -> str | None:
    """None when both tokenize alike (same vocabulary, ids and merges), else what differs."""
    if a.vocab_size != b.vocab_size:
        return f"{a.vocab_size} tokens against {b.vocab_size}"
    model_a = json.loads(a.inner.to_str()).get("model", {})
    model_b = json.loads(b.inner.to_str()).get("model", {})
    if model_a.get("vocab") != model_b.get("vocab"):
        same = sum(model_a.get("vocab", {}).get(t) == i
                   for t, i in model_b.get("vocab", {}).items())
        return f"same size, but only {same} of {b.vocab_size} tokens have the same id"
    if model_a.get("merges") != model_b.get("merges"):
        return "same vocabulary, but different merges (text splits into other tokens)"
    return None


def check_same_tokenizer(a: Tokenizer, b: Tokenizer, what_a: str, what_b: str, hint: str
                         ) -> None:
    diff = tokenizer_difference(a, b)
    if diff is not None:
        raise LmforgeError(f"{what_b} uses another tokenizer than {what_a} ({diff}): its "
                           f"token ids would mean other text", hint=hint)


def design_difference(a: ModelDesign, b: ModelDesign) -> str | None:
    """None for the same architecture, else the first fields that differ."""
    diffs = [f"{f} {getattr(b, f)} vs {getattr(a, f)}" for f in _SHAPE_FIELDS
             if getattr(a, f) != getattr(b, f)]
    return ", ".join(diffs[:3]) if diffs else None


def check_reference(policy: tuple[ModelDesign, Tokenizer], reference: tuple[ModelDesign, Tokenizer],
                    policy_name: str, reference_name: str) -> None:
    """Refuse a reference model of another vocabulary or architecture than the policy's."""
    hint = (f"use the model the policy starts from as its reference (the default: leave "
            f"--reference out), e.g. lmforge finetune {policy_name} --method rlhf ...")
    check_same_tokenizer(policy[1], reference[1], f"the policy {policy_name}",
                         f"the reference model {reference_name}", hint)
    diff = design_difference(policy[0], reference[0])
    if diff is not None:
        raise LmforgeError(f"the reference model {reference_name} is another architecture than "
                           f"the policy {policy_name} ({diff})", hint=hint)
