"""`lmforge tokenize`, `lmforge pretrain` (stage 4) and `lmforge finetune` (stage 6)."""

from __future__ import annotations

from pathlib import Path

import typer

from lmforge._toml import load_toml_file
from lmforge.cli.app import app, console, workspace
from lmforge.data.stage import TokenizeSettings, run_tokenize
from lmforge.errors import LmforgeError
from lmforge.train.finetune import FinetuneSettings, lora_options, training_settings
from lmforge.train.finetune import run as run_finetune
from lmforge.train.loop import Interrupted
from lmforge.train.stage import PretrainSettings, resume_values
from lmforge.train.stage import run as run_pretrain

PANEL = "Lifecycle stages"
FSDP_HELP = ("Under torchrun: shard parameters, gradients and optimizer states across the "
             "processes (FSDP2) instead of a whole replica each (DDP, the default).")


def parse_count(text: str | None) -> int:
    """'2M', '500k', '1.5B' or '20000' -> an integer count."""
    if text is None:
        return 0
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
    t = text.strip().lower().replace("_", "").replace(",", "")
    try:
        if t and t[-1] in scale:
            return int(float(t[:-1]) * scale[t[-1]])
        return int(float(t))
    except ValueError:
        raise LmforgeError(f"cannot read '{text}' as a count",
                           hint="write it like 2000000, 2M or 500k") from None


@app.command(rich_help_panel=PANEL,
             help="Tokenize a dataset into memory-mapped token shards with a train/validation "
                  "split, for pretraining.")
def tokenize(
    data: str = typer.Option(..., "--data", "-d",
                             help="A dataset artifact id, files/globs, or 'pydocs'."),
    tokenizer: str = typer.Option(..., "--tokenizer", "-t", help="A tokenizer artifact id."),
    val_fraction: float = typer.Option(
        None, help="Share of documents held out for validation \\[default: 0.05; 0 with "
                   "--val-data]."),
    val_data: str = typer.Option(
        None, "--val-data",
        help="A separate validation set (dataset id or files), e.g. a corpus's own "
             "validation split; then every document of --data is trained on."),
    seed: int = typer.Option(0, help="Seed of the document-level split."),
    workers: int = typer.Option(0, help="Processes (0 = one per core)."),
) -> None:
    out = run_tokenize(workspace(), TokenizeSettings(data, tokenizer, val_fraction, seed, workers,
                                                     val_data))
    console.print(f"tokens [bold]{out.artifact.id}[/]: {out.summary}")


@app.command(rich_help_panel=PANEL,
             help="Stage 4: pretrain a model on token shards. Checkpoints every N steps and on "
                  "Ctrl-C/SIGTERM; the same command (or --resume RUN) continues after any stop, "
                  "even kill -9. On several processes: torchrun --nproc_per_node N -m lmforge "
                  "pretrain ... (DDP; add --fsdp to shard), same global batch; see "
                  "docs/scaling.md.")
def pretrain(
    model: str = typer.Option(None, "--model", "-m", help="The model to start from (e.g. v0)."),
    data: str = typer.Option(None, "--data", "-d", help="A tokens artifact (lmforge tokenize)."),
    tokens: str = typer.Option(None, help="Training tokens, e.g. 2M."),
    steps: int = typer.Option(None, help="Optimizer steps (instead of --tokens)."),
    epochs: float = typer.Option(None, help="Passes over the training split."),
    config: str = typer.Option(None, help="A TOML file whose \\[train] table holds settings."),
    batch_tokens: int = typer.Option(None, help="Tokens per optimizer step."),
    micro_batch: int = typer.Option(None, help="Sequences per forward/backward."),
    seq_len: int = typer.Option(None, help="Sequence length."),
    lr: float = typer.Option(None, help="Peak learning rate (AdamW)."),
    optimizer: str = typer.Option(None, help="adamw, or muon (hidden matrices) + AdamW."),
    schedule: str = typer.Option(None, help="cosine, wsd or constant."),
    warmup_steps: int = typer.Option(None, help="Linear warmup steps."),
    eval_every: int = typer.Option(None, help="Validate every N steps."),
    checkpoint_every: int = typer.Option(None, help="Checkpoint every N steps."),
    sample_every: int = typer.Option(None, help="Print samples every N steps (0 = never)."),
    early_stop_patience: int = typer.Option(None, help="Stop after N evaluations without "
                                                      "improvement; keep the best weights."),
    seed: int = typer.Option(None, help="Seed of data order and init of the run."),
    device: str = typer.Option(None, help="auto, cpu, cuda, cuda:1, mps."),
    dtype: str = typer.Option(None, help="auto (bf16 where fast), float32, bfloat16."),
    compile: bool = typer.Option(None, "--compile/--no-compile", help="Use torch.compile."),
    fsdp: bool = typer.Option(None, "--fsdp/--no-fsdp", help=FSDP_HELP),
    activation_checkpointing: bool = typer.Option(
        None, "--activation-checkpointing/--no-activation-checkpointing",
        help="Recompute each block in backward: less memory, ~1/3 more compute."),
    resume: str = typer.Option(None, help="Continue a run by its id (runs/<id>), with its "
                                          "settings."),
) -> None:
    ws = workspace()
    values: dict = resume_values(ws, resume, model, data) if resume is not None else {}
    if resume is None:
        values.update(model=model, data=data)
    if values.get("model") is None or values.get("data") is None:
        raise LmforgeError("pretrain needs --model and --data (or --resume RUN)")
    if config is not None:
        values.update(load_toml_file(Path(config), "config file").get("train", {}))
    flags = dict(steps=steps, epochs=epochs, batch_tokens=batch_tokens, micro_batch=micro_batch,
                 seq_len=seq_len, lr=lr, optimizer=optimizer, schedule=schedule,
                 warmup_steps=warmup_steps, eval_every=eval_every,
                 checkpoint_every=checkpoint_every, sample_every=sample_every,
                 early_stop_patience=early_stop_patience, seed=seed, device=device, dtype=dtype,
                 compile=compile, fsdp=fsdp, activation_checkpointing=activation_checkpointing)
    values.update({k: v for k, v in flags.items() if v is not None})
    if tokens is not None:
        values["tokens"] = parse_count(tokens)
    settings = PretrainSettings.from_dict(values, "pretrain settings", Path.cwd())
    try:
        out = run_pretrain(ws, settings)
    except Interrupted as e:
        console.print(f"{e}; continue with the same command or --resume")
        raise typer.Exit(130) from None
    console.print(f"model [bold]{out.artifact.id}[/] (pretrained): {out.summary}")


_FINETUNE_HELP = """Stage 6: fine-tune a model with the same loop as pretraining.

\b
  lmforge finetune MODEL --method domain --data legal_docs/ --replay 0.1
      continued pretraining on a focused corpus; a tenth of the
      sequences replay the base's own pretraining tokens; domain and
      general bits per byte are measured before and after
  lmforge finetune MODEL --method sft --data chats.jsonl
      chat tuning: loss on assistant tokens only, conversations
      packed several to a row with document masks
  lmforge finetune SFT --method reward --data prefs.jsonl
      a reward model (kind reward-model): SFT + a scalar head,
      Bradley-Terry loss, held-out pair accuracy
  lmforge finetune SFT --method rlhf --reward RM --prompts p.jsonl --algo ppo
      RLHF against the reward model (ppo, grpo or rloo), KL to SFT;
      200 steps at lr 1e-4 unless --steps/--epochs/--lr say otherwise
  lmforge finetune SFT --method dpo --data prefs.jsonl --loss sigmoid --beta 0.1
      DPO on preference pairs (prompt/chosen/rejected, or Anthropic HH),
      reference log-probs computed once; 'pydocs-prefs' is built in
  lmforge finetune production --from-feedback --since 2026-11-01
      stage 10: a successor tuned on what the served model's users said
      (thumbs-up answers and preferred answers as SFT, preferred vs
      rejected as DPO; spam and duplicates filtered), evaluated on the
      predecessor's suites; PROMOTE only if no checked metric loses more
      than --max-regression (docs/feedback.md)

Domain data: files, folders, globs, dataset artifacts or 'pydocs'. SFT data: chat JSONL \
(OpenAI messages, or Alpaca / Dolly / self-instruct records). The result is a model in \
state `tuned` whose parent is the base. The same command continues after any stop.

On several processes or GPUs (domain, sft, reward, dpo): torchrun --nproc_per_node N -m \
lmforge finetune ... (DDP; --fsdp shards the model); see docs/scaling.md.
"""


@app.command(rich_help_panel=PANEL, help=_FINETUNE_HELP)
def finetune(
    model: str = typer.Argument(..., help="The model to tune (id, prefix or alias)."),
    method: str = typer.Option(None, "--method", help="domain, sft, reward, rlhf or dpo "
                                                      "(with --from-feedback: sft or dpo "
                                                      "\\[default: dpo with 16 pairs or more, "
                                                      "else sft])."),
    data: list[str] = typer.Option([], "--data", "-d", help="Repeatable. Training data."),
    val_data: list[str] = typer.Option([], "--val-data", help="Repeatable. A separate "
                                                              "validation set."),
    val_fraction: float = typer.Option(0.05, help="Share held out for validation (without "
                                                  "--val-data)."),
    replay: float = typer.Option(0.0, help="domain: share of training sequences replayed from "
                                           "the base's pretraining data."),
    text_field: str = typer.Option("text", help="JSONL field holding the text (domain)."),
    lora: str = typer.Option(None, help="Train LoRA adapters only, e.g. r=16,alpha=32,"
                                        "dropout=0.05,targets=q_proj+v_proj ('' for the "
                                        "defaults); the result is a lora-adapter artifact "
                                        "(lmforge merge-lora makes a plain model of it)."),
    config: str = typer.Option(None, help="A TOML file whose \\[train] table holds settings."),
    steps: int = typer.Option(None, help="Optimizer steps (default: one epoch)."),
    epochs: float = typer.Option(None, help="Passes over the training data \\[default: 1]."),
    lr: float = typer.Option(None, help="Peak learning rate (AdamW) \\[default: 3e-4; rlhf "
                                        "1e-4; dpo 2e-5]."),
    optimizer: str = typer.Option(None, help="adamw, or muon (hidden matrices) + AdamW."),
    batch_tokens: int = typer.Option(None, help="Tokens per optimizer step \\[default: 4096]."),
    micro_batch: int = typer.Option(None, help="Rows per forward/backward \\[default: 8]."),
    seq_len: int = typer.Option(None, help="Row length \\[default: 256]."),
    eval_every: int = typer.Option(None, help="Validate every N steps."),
    seed: int = typer.Option(None, help="Seed of data order and the validation split."),
    device: str = typer.Option(None, help="auto, cpu, cuda, cuda:1, mps."),
    fsdp: bool = typer.Option(None, "--fsdp/--no-fsdp", help=FSDP_HELP),
    activation_checkpointing: bool = typer.Option(
        None, "--activation-checkpointing/--no-activation-checkpointing",
        help="Recompute each block in backward: less memory, ~1/3 more compute."),
    reward: str = typer.Option(None, help="rlhf: the reward model (--method reward made it)."),
    prompts: list[str] = typer.Option([], "--prompts", help="rlhf: repeatable. Prompt files "
                                      "(JSONL of messages, prompt or text) \\[default: the "
                                      "built-in pydocs-chat questions]."),
    algo: str = typer.Option("ppo", help="rlhf: ppo, grpo or rloo."),
    reference: str = typer.Option(None, help="rlhf, dpo: the frozen reference \\[default: "
                                             "MODEL]."),
    kl_coef: float = typer.Option(None, help="rlhf: the starting KL coefficient \\[default: "
                                             "0.1]."),
    kl_target: float = typer.Option(None, help="rlhf: KL per answer (nats) the adaptive "
                                               "coefficient aims at; 0 = fixed \\[default: 4]."),
    length_penalty: float = typer.Option(None, help="rlhf: subtracted from the reward per "
                                                    "answer token \\[default: 0]."),
    rl: str = typer.Option(None, help="rlhf: more settings, e.g. prompts_per_step=8,"
                                      "max_new_tokens=48,epochs=2 (train/rlhf.py)."),
    beta: float = typer.Option(None, help="dpo: strength of the pull to the reference "
                                          "(higher: closer) \\[default: 0.1]."),
    loss: str = typer.Option(None, "--loss", help="dpo: sigmoid, ipo or hinge \\[default: "
                                                  "sigmoid]."),
    label_smoothing: float = typer.Option(None, help="dpo: share of labels that may be "
                                                     "flipped (cDPO, sigmoid) \\[default: 0]."),
    sft_weight: float = typer.Option(None, help="dpo: weight of the chosen answers' NLL "
                                                "added to the loss (RPO) \\[default: 0]."),
    from_feedback: bool = typer.Option(False, "--from-feedback", help="Stage 10: tune on the "
                                       "feedback stored by MODEL's server, then compare with "
                                       "MODEL on the suites and gates of its eval reports "
                                       "(docs/feedback.md)."),
    since: str = typer.Option(None, help="--from-feedback: only feedback given on or after "
                                         "this date (UTC), e.g. 2026-11-01."),
    max_regression: float = typer.Option(0.02, help="--from-feedback: how much each checked "
                                                    "metric may lose (absolute) for PROMOTE."),
    feedback_of: list[str] = typer.Option([], "--feedback-of", help="--from-feedback: "
                                          "repeatable. Also read the feedback on this model "
                                          "(e.g. an earlier version)."),
    feedback_store: list[str] = typer.Option([], "--feedback-store", help="--from-feedback: "
                                             "repeatable. Also read this store file (a "
                                             "replica's on another machine)."),
    alias: str = typer.Option(None, help="--from-feedback: point this alias (e.g. staging) at "
                                         "the successor when it passes."),
) -> None:
    if from_feedback:
        _from_feedback(model, method, since, max_regression, feedback_of, feedback_store,
                       alias, data, val_data, lora, reward, prompts, config, val_fraction,
                       dict(steps=steps, epochs=epochs, lr=lr, optimizer=optimizer,
                            batch_tokens=batch_tokens, micro_batch=micro_batch,
                            seq_len=seq_len, eval_every=eval_every, seed=seed, fsdp=fsdp,
                            activation_checkpointing=activation_checkpointing),
                       dict(beta=beta, dpo_loss=loss, label_smoothing=label_smoothing,
                            sft_weight=sft_weight), device)
        return
    if method is None:
        raise LmforgeError("finetune needs --method (domain, sft, reward, rlhf or dpo)",
                           hint="e.g. lmforge finetune MODEL --method sft --data chats.jsonl, "
                                "or --from-feedback to tune on a served model's feedback")
    if since is not None or feedback_of or feedback_store or alias is not None:
        raise LmforgeError("--since, --feedback-of, --feedback-store and --alias are for "
                           "--from-feedback",
                           hint="lmforge finetune production --from-feedback --since "
                                "2026-11-01")
    values: dict = {}
    if config is not None:
        values.update(load_toml_file(Path(config), "config file").get("train", {}))
    rl_flags = {k: v for k, v in (("kl_coef", kl_coef), ("kl_target", kl_target),
                                  ("length_penalty", length_penalty)) if v is not None}
    dpo_flags = {k: v for k, v in (("beta", beta), ("dpo_loss", loss),
                                   ("label_smoothing", label_smoothing),
                                   ("sft_weight", sft_weight)) if v is not None}
    if method != "dpo" and dpo_flags:
        raise LmforgeError("--beta, --loss, --label-smoothing and --sft-weight are for "
                           "--method dpo",
                           hint="lmforge finetune SFT --method dpo --data prefs.jsonl")
    if method == "dpo" and reference:  # dpo takes --reference too
        dpo_flags["reference"], reference = reference, None
    if method != "rlhf" and (prompts or reward or reference or rl or rl_flags):
        raise LmforgeError("--reward, --prompts, --reference and the RL settings are for "
                           "--method rlhf", hint="lmforge finetune SFT --method rlhf --reward "
                                                 "RM --prompts p.jsonl")
    flags = dict(steps=steps, epochs=epochs, lr=lr, optimizer=optimizer,
                 batch_tokens=batch_tokens, micro_batch=micro_batch, seq_len=seq_len,
                 eval_every=eval_every, seed=seed, device=device, fsdp=fsdp,
                 activation_checkpointing=activation_checkpointing)
    values.update({k: v for k, v in flags.items() if v is not None})
    settings = FinetuneSettings(model, method, tuple(data) + tuple(prompts),
                                training_settings(values, "finetune settings", method),
                                tuple(val_data), val_fraction, replay, text_field,
                                lora=() if lora is None else lora_options(lora, "--lora"),
                                **_rl_fields(method, reward, reference, algo, rl, rl_flags),
                                **dpo_flags)
    try:
        out = run_finetune(workspace(), settings)
    except Interrupted as e:
        console.print(f"{e}; continue with the same command")
        raise typer.Exit(130) from None
    what = {"lora-adapter": "adapter", "reward-model": "reward model"}.get(out.artifact.kind,
                                                                            "model")
    state = "" if out.artifact.kind == "reward-model" else " (tuned)"
    console.print(f"{what} [bold]{out.artifact.id}[/]{state}: {out.summary}", highlight=False)


def _rl_fields(method: str, reward: str | None, reference: str | None, algo: str,
               rl: str | None, flags: dict) -> dict:
    """FinetuneSettings' RLHF fields from the flags (the prompts travel as its data)."""
    if method != "rlhf":
        return {}
    from lmforge.train.rlhf import rl_options

    options = dict(rl_options(rl or "", "--rl"))
    options.update(flags)
    return {"reward": reward, "reference": reference, "algo": algo,
            "rl": tuple(sorted(options.items()))}


def _from_feedback(model: str, method: str | None, since: str | None, max_regression: float,
                   feedback_of: list[str], feedback_store: list[str], alias: str | None,
                   data: list[str], val_data: list[str], lora: str | None, reward: str | None,
                   prompts: list[str], config: str | None, val_fraction: float,
                   train_flags: dict, dpo_flags: dict, device: str | None) -> None:
    """`finetune MODEL --from-feedback`: stage 10 (lifecycle/feedback_tune.py)."""
    from lmforge.lifecycle.feedback_data import FeedbackRules, parse_since
    from lmforge.lifecycle.feedback_tune import FeedbackTuneSettings
    from lmforge.lifecycle.feedback_tune import run as run_feedback

    if data or val_data or lora is not None or reward or prompts:
        raise LmforgeError("--from-feedback reads its data from the feedback store: --data, "
                           "--val-data, --lora, --reward and --prompts do not apply",
                           hint="lmforge finetune production --from-feedback --since "
                                "2026-11-01 [--method sft|dpo]")
    values: dict = {}
    if config is not None:
        values.update(load_toml_file(Path(config), "config file").get("train", {}))
    values.update({k: v for k, v in train_flags.items() if v is not None})
    dpo = {k: v for k, v in dpo_flags.items() if v is not None}
    if dpo and method != "dpo":
        raise LmforgeError("--beta, --loss, --label-smoothing and --sft-weight are for "
                           "--method dpo", hint="add --method dpo")
    settings = FeedbackTuneSettings(
        model, method, FeedbackRules(since=parse_since(since)), tuple(feedback_of),
        tuple(str(Path(p).resolve()) for p in feedback_store), max_regression, alias,
        tuple(sorted(values.items())), tuple(sorted(dpo.items())), val_fraction, device)
    try:
        out = run_feedback(workspace(), settings)
    except Interrupted as e:
        console.print(f"{e}; continue with the same command")
        raise typer.Exit(130) from None
    console.print(out.show)
    console.print(f"model [bold]{out.artifact.id}[/] (tuned): {out.summary}", highlight=False)
