"""Reward models (stage 6, `--method reward`): the policy's architecture with a scalar head,
trained on preference pairs with the Bradley–Terry loss through the one training loop.

    lmforge finetune SFT --method reward --data prefs.jsonl    # -> a `reward-model` artifact
    rm = load_reward_model(ws, "reward-model:latest")
    rm.score(messages, "math.sqrt: Return the square root of x.")   # -> a float; higher = better

The score of a conversation is a linear head on the final hidden state of its last real token
(the answer's <|end|>, the one place that has seen the whole prompt and answer). Bradley–Terry
(1952), as in InstructGPT (Ouyang et al. 2022): P(chosen beats rejected) = sigmoid(r_c - r_r),
so the loss is -log sigmoid(r_c - r_r), and held-out pair accuracy is how often r_c > r_r.

The backbone starts as the SFT model; the head (the objective's own parameter, trained and
checkpointed by the loop with the model's) starts small and random. The artifact is the
model folder (so the backbone loads and exports like any model) plus `reward_head.safetensors`
and `reward_config.json`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.io import load_model_dir, model_card, save_model_dir
from lmforge.model.transformer import Transformer
from lmforge.registry import Artifact, Workspace, atomic_write_json
from lmforge.rerun import check_read, input_record, rerun_metrics, training_record
from lmforge.runtime import resolve_device
from lmforge.stage import Outcome
from lmforge.tokenizer import Tokenizer
from lmforge.train.batches import Batch, my_micro_batches
from lmforge.train.loop import Interrupted, autocast_dtype, evaluate, train

KIND = "reward-model"
HEAD_WEIGHTS = "reward_head.safetensors"
CONFIG = "reward_config.json"
MAKE_ONE = "lmforge finetune SFT_MODEL --method reward --data pydocs-prefs"

EncodedPair = tuple[list[int], list[int]]  # (chosen ids, rejected ids): prompt + answer each


# ---- scoring -------------------------------------------------------------------------------


def last_token_scores(model: Transformer, head: nn.Linear, ids: torch.Tensor,
                      lengths: torch.Tensor) -> torch.Tensor:
    """(batch,) scores of right-padded rows (batch, seq): the head on each row's last real
    token. Attention is causal, so the padding after it changes nothing it sees."""
    hidden = model.hidden(ids)
    last = hidden[torch.arange(ids.shape[0], device=ids.device), lengths - 1]
    return head(last.float()).squeeze(-1)


def pad_rows(rows: Sequence[Sequence[int]], device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (len(rows), longest) and each row's length."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return ids.to(device), lengths.to(device)


def new_head(d_model: int, seed: int) -> nn.Linear:
    """A scalar head whose first scores are of order 1 (the final norm makes hidden states of
    norm ~sqrt(d)), seeded so a rerun starts from the same head."""
    head = nn.Linear(d_model, 1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(1, d_model, generator=generator) / d_model ** 0.5)
        head.bias.zero_()
    return head


class BradleyTerry(nn.Module):
    """The pairwise reward loss. A batch holds the chosen rows then the rejected rows
    (`inputs` (2n, seq), `lengths` (2n,)), so both go through one forward; the objective owns
    the scalar head, so the loop trains and checkpoints it with the model."""

    name = "bradley_terry"

    def __init__(self, d_model: int, seed: int = 0):
        super().__init__()
        self.head = new_head(d_model, seed)

    def forward(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        scores = last_token_scores(model, self.head, batch["inputs"], batch["lengths"])
        chosen, rejected = scores.chunk(2)
        margin = chosen - rejected
        loss = -F.logsigmoid(margin).mean()
        return loss, {"accuracy": (margin > 0).float().mean().item(),
                      "margin": margin.mean().item(),
                      "reward_chosen": chosen.mean().item(),
                      "reward_rejected": rejected.mean().item()}


# ---- the batch source ----------------------------------------------------------------------


class PairBatches:
    """Preference pairs for the loop: `micro_batch` pairs per forward (2 x micro_batch rows,
    padded to the longest), epochs shuffled by (seed, epoch), so step s reads the same pairs
    however often the run was resumed.

    A Batch's `tokens` counts pairs: the loop weights micro-batches by it, so a step's loss
    (and validation accuracy) is the mean over pairs. `tokens` of the source is pairs x
    seq_len, so `epochs` means passes over the pairs as it does for token data.
    """

    def __init__(self, train: Sequence[EncodedPair], val: Sequence[EncodedPair], seq_len: int,
                 micro_batch: int, accumulation: int, eval_batches: int):
        if not train:
            raise LmforgeError("no preference pairs left to train on",
                               hint="give more pairs, or raise --seq-len")
        self.train, self.all_val = list(train), list(val)
        self.val = self.all_val[:micro_batch * eval_batches]  # what validation reads in training
        self.micro_batch, self.accumulation = micro_batch, accumulation
        self.unit = "pairs"  # a Batch's count: the progress line shows pairs/s
        self.tokens = len(self.train) * seq_len

    def _batch(self, pairs: Sequence[EncodedPair], device: torch.device) -> Batch:
        ids, lengths = pad_rows([p[0] for p in pairs] + [p[1] for p in pairs], device)
        return Batch({"inputs": ids, "lengths": lengths}, len(pairs))

    def step_batches(self, step: int, seed: int, device: torch.device,
                     part: tuple[int, int] = (0, 1)) -> list[Batch]:
        per_step = self.micro_batch * self.accumulation
        n = len(self.train)
        picked = []
        for k in range(step * per_step, (step + 1) * per_step):
            epoch, offset = divmod(k, n)
            order = np.random.default_rng([seed, epoch, 3]).permutation(n)
            picked.append(self.train[order[offset]])
        return [self._batch(picked[i:i + self.micro_batch], device)
                for i in my_micro_batches(per_step, self.micro_batch, part)]

    def validation_batches(self, device: torch.device, every: bool = False) -> Iterator[Batch]:
        """The first micro_batch x eval_batches validation pairs, or `every` one."""
        pairs = self.all_val if every else self.val
        for i in range(0, len(pairs), self.micro_batch):
            yield self._batch(pairs[i:i + self.micro_batch], device)


class _EveryPair:
    """A source's whole validation set, for the figures before and after training."""

    def __init__(self, source: PairBatches):
        self.source = source

    def validation_batches(self, device: torch.device) -> Iterator[Batch]:
        return self.source.validation_batches(device, every=True)


# ---- the judge -----------------------------------------------------------------------------


class RewardModel(nn.Module):
    """A trained reward model as a judge: higher scores for better answers."""

    def __init__(self, model: Transformer, head: nn.Linear, tokenizer: Tokenizer,
                 ref: str = "reward model"):
        super().__init__()
        self.model, self.head, self.tokenizer, self.ref = model.eval(), head.eval(), tokenizer, ref

    @property
    def context_length(self) -> int:
        return self.model.design.context_length

    def encode(self, messages: list[dict], answer: str) -> list[int]:
        """The conversation with `answer` as the assistant's turn, in the chat layout the
        reward model trained on, cut to its context."""
        ids, _ = self.tokenizer.render_chat([*messages, {"role": "assistant",
                                                         "content": answer}])
        return ids[:self.context_length]

    @torch.no_grad()
    def score_ids(self, rows: Sequence[Sequence[int]], batch_size: int = 16) -> list[float]:
        """Scores of token id sequences (each a prompt and its answer, ending at <|end|>)."""
        device = next(self.model.parameters()).device
        out: list[float] = []
        for i in range(0, len(rows), batch_size):
            chunk = [list(r)[:self.context_length] for r in rows[i:i + batch_size]]
            ids, lengths = pad_rows(chunk, device)
            out += last_token_scores(self.model, self.head, ids, lengths).tolist()
        return out

    def score_batch(self, items: Sequence[tuple[list[dict], str]], batch_size: int = 16
                    ) -> list[float]:
        """Scores of (prompt messages, answer) items."""
        return self.score_ids([self.encode(m, a) for m, a in items], batch_size)

    def score(self, messages: list[dict], answer: str) -> float:
        """The score of one answer to a conversation (OpenAI messages ending with a user
        turn)."""
        return self.score_batch([(messages, answer)])[0]


def load_reward_model(ws: Workspace, ref: str, device: str | torch.device = "cpu"
                      ) -> RewardModel:
    """A `reward-model` artifact (checksums verified) as a judge."""
    art = reward_artifact(ws, ref)
    model, tok = load_model_dir(art.path, device)
    head = nn.Linear(model.design.d_model, 1)
    state = load_file(str(art.file(HEAD_WEIGHTS)))
    head.load_state_dict(state)
    return RewardModel(model, head.to(device), tok, art.id)


# ---- the stage -----------------------------------------------------------------------------


def _encode(tok: Tokenizer, pairs, seq_len: int, skipped: dict[str, int]) -> list[EncodedPair]:
    """Token ids of each pair, cut to seq_len; pairs that leave no answer token, or whose two
    sides are the same tokens after the cut, teach nothing and are counted instead."""
    from lmforge.data.preferences import encode_pair

    out = []
    for pair in pairs:
        try:
            chosen, _, rejected, _ = encode_pair(tok, pair, max_tokens=seq_len)
        except LmforgeError as e:
            if "answer token" not in e.message:
                raise
            skipped["too_long"] = skipped.get("too_long", 0) + 1
            continue
        if chosen == rejected:
            skipped["same_after_cut"] = skipped.get("same_after_cut", 0) + 1
            continue
        out.append((chosen, rejected))
    return out


def _digest(*parts: Sequence[EncodedPair]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        for chosen, rejected in part:
            h.update(np.asarray(chosen, dtype=np.int64).tobytes() + b"|")
            h.update(np.asarray(rejected, dtype=np.int64).tobytes() + b"|")
    return h.hexdigest()


def run_reward(ws: Workspace, s: Any, show_progress: bool = True, on_step=None) -> Outcome:
    """Train a reward model from the model `s.model` on `s.data` (FinetuneSettings) and
    register it (kind `reward-model`); details are the TrainResult."""
    from lmforge.data.preferences import PairReport, load_pairs, pairs_digest, split_pairs
    from lmforge.data.training_sets import resolve_training_sets
    from lmforge.train.finetune import data_refs

    base = ws.resolve(s.model, kind="model")
    model, tok = load_model_dir(base.path)
    t = s.train
    if t.seq_len > model.design.context_length:
        raise LmforgeError(f"seq_len {t.seq_len} exceeds the model's context length "
                           f"{model.design.context_length}",
                           hint=f"use --seq-len {model.design.context_length} or less")
    if s.lora:
        raise LmforgeError("--lora is not supported with --method reward",
                           hint="train the whole reward model: drop --lora")
    refs, fallback_note = data_refs(s)
    refs, _ = resolve_training_sets(ws, refs, "reward")  # preference-dataset artifacts
    notes = [fallback_note] if fallback_note else []
    report = PairReport()
    pairs = load_pairs(refs, report)
    val_given = load_pairs(list(s.val_data), report) if s.val_data else []
    read = pairs_digest(pairs, val_given)
    check_read(read, "preference pairs")
    if s.val_data:
        train_pairs, val_pairs = pairs, val_given
    else:
        train_pairs, val_pairs = split_pairs(pairs, s.val_fraction, t.seed)
    notes += report.notes()
    skipped: dict[str, int] = {}
    train_enc = _encode(tok, train_pairs, t.seq_len, skipped)
    val_enc = _encode(tok, val_pairs, t.seq_len, skipped)
    if not val_enc:
        raise LmforgeError(f"preference data {', '.join(refs)}: {len(train_enc)} training and "
                           f"no validation pairs", hint="give more pairs, a larger "
                                                        "--val-fraction, or --val-data")
    for reason, n in skipped.items():
        notes.append(f"{n} pairs left out: " + ("an answer starts beyond seq_len"
                                                if reason == "too_long" else
                                                "chosen and rejected agree within seq_len"))
    source = PairBatches(train_enc, val_enc, t.seq_len, t.micro_batch, t.accumulation,
                         t.eval_batches)
    key = hashlib.sha256(f"reward|{base.id}|{s!r}|{_digest(train_enc, val_enc)}".encode()
                         ).hexdigest()[:12]
    run_dir = ws.runs_dir / f"reward-{key}"
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", {"stage": "finetune", "model": base.id,
                                             "method": "reward", "data": list(s.data),
                                             "settings": t.to_dict()})
    device = resolve_device(t.device)
    amp = autocast_dtype(t, device)
    objective = BradleyTerry(model.design.d_model, seed=t.seed)
    model.to(device)
    objective.to(device)
    before = evaluate(model, objective, _EveryPair(source), device, amp)
    torch.manual_seed(t.seed)
    try:
        result = train(model, objective, source, t, run_dir, on_step=on_step,
                       show_progress=show_progress)
    except Interrupted as e:
        raise Interrupted(f"run {run_dir.name}: {e}") from None
    after = evaluate(model, objective, _EveryPair(source), device, amp)
    model.to("cpu").float()
    objective.to("cpu").float()
    metrics: dict[str, Any] = {
        "method": "reward", "steps": result.steps, "train_pairs": len(train_enc),
        "val_pairs": len(source.all_val), "train_loss": result.train_loss,
        "val_loss_before": before["loss"], "val_loss": after["loss"],
        "val_accuracy_before": before["accuracy"], "val_accuracy": after["accuracy"],
        "val_margin": after["margin"], "val_reward_chosen": after["reward_chosen"],
        "val_reward_rejected": after["reward_rejected"],
        "train_seconds": round(result.seconds, 1),
        **rerun_metrics(input_record([*refs, *s.val_data]), training_record(device.type),
                        {"read_sha256": read})}
    if notes:
        metrics["warnings"] = notes
    settings = {"method": "reward", "data": refs, "val_data": list(s.val_data),
                "val_fraction": s.val_fraction, **t.to_dict()}
    parents: dict[str, Any] = {"base": base.id}
    if "tokenizer" in base.parents:
        parents["tokenizer"] = base.parents["tokenizer"]
    body = (f"A reward model: {base.id} with a scalar head on the last token, trained with the "
            f"Bradley–Terry loss on {', '.join(refs)} ({len(train_enc)} pairs, {result.steps} "
            f"steps). Held-out pair accuracy {after['accuracy']:.3f} "
            f"({len(source.all_val)} pairs). The head is in {HEAD_WEIGHTS}.")
    with ws.staging() as d:
        save_model_dir(model, d, tok, model_card(model.design,
                                                 f"{model.design.name} (reward model)", body))
        save_file({k: v.detach().contiguous() for k, v in objective.head.state_dict().items()},
                  str(d / HEAD_WEIGHTS))
        atomic_write_json(d / CONFIG, {"format": "lmforge-reward-model", "head": "last-token",
                                       "base": base.id, "d_model": model.design.d_model})
        (d / "training_metrics.jsonl").write_bytes((run_dir / "metrics.jsonl").read_bytes())
        art = ws.register(d, kind=KIND, stage="finetune", parents=parents, settings=settings,
                          metrics=metrics, name=f"{model.design.name}-reward")
    return Outcome(art, summary(metrics), result)


def summary(m: dict[str, Any]) -> str:
    line = (f"reward: {m['steps']} steps on {m['train_pairs']:,} pairs in "
            f"{m['train_seconds']:.0f} s; held-out pair accuracy {m['val_accuracy_before']:.3f} "
            f"→ {m['val_accuracy']:.3f} ({m['val_pairs']} pairs), val loss "
            f"{m['val_loss_before']:.3f} → {m['val_loss']:.3f}")
    return line + "".join(f"; warning: {w}" for w in m.get("warnings", []))


def reward_artifact(ws: Workspace, ref: str) -> Artifact:
    """The reward-model artifact `ref` names, or a clear error naming how to make one."""
    record = ws.record(ref, kind=KIND)
    if record.kind != KIND:
        raise LmforgeError(f"{record.id} is a {record.kind}, not a reward model",
                           hint=f"make one with `{MAKE_ONE}`, or pass a reward-model id "
                                f"(`lmforge registry ls --kind {KIND}`)")
    return ws.resolve(record.id, kind=KIND)
