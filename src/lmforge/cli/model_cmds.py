"""`lmforge init`, `generate`, `export`, `import`: making, sampling and moving models."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from lmforge.cli.app import app, console, workspace
from lmforge.engine.generate import generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.errors import LmforgeError
from lmforge.lifecycle.card import gather
from lmforge.lifecycle.card_render import to_markdown
from lmforge.model.hf import DTYPES, export_hf, import_hf
from lmforge.model.init import SCHEMES
from lmforge.model.io import load_model
from lmforge.model.stage import InitSettings
from lmforge.model.stage import run as run_init
from lmforge.registry import atomic_write_text


@app.command(rich_help_panel="Lifecycle stages",
             help="Stage 3: create model v0 with random weights from a design and a tokenizer. "
                  "It can produce output, but the output is random.")
def init(
    design: str = typer.Option(..., "--design", "-d",
                               help="A preset name, a design TOML, or a design artifact id."),
    tokenizer: str = typer.Option(..., "--tokenizer", "-t", help="A tokenizer artifact id."),
    scheme: str = typer.Option("gpt2", help=f"Initialization scheme: {', '.join(SCHEMES)}."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same weights."),
    vocab_size: int = typer.Option(None, help="Override the design's vocabulary size."),
) -> None:
    out = run_init(workspace(), InitSettings(design, tokenizer, scheme, seed, vocab_size))
    console.print(f"[bold]{out.artifact.id}[/]: {out.summary}")


@app.command(rich_help_panel="Use and move models",
             help="Generate text from a model (artifact id, alias or model folder), "
                  "streamed to the terminal.")
def generate(
    model: str = typer.Argument(..., help="Model artifact id/prefix/alias, or a model folder."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Text to continue."),
    chat: bool = typer.Option(False, help="Wrap the prompt as a user turn (chat template)."),
    max_tokens: int = typer.Option(64, help="Most new tokens to generate."),
    temperature: float = typer.Option(0.8, help="0 for greedy decoding."),
    top_k: int = typer.Option(0, help="Sample among the k likeliest tokens (0 = off)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass (1 = off)."),
    seed: int = typer.Option(None, help="Seed for reproducible sampling."),
) -> None:
    params = SamplingParams(temperature, top_k, top_p, max_tokens, seed)
    net, tok, _ = load_model(workspace(), model)
    if chat:
        ids, _ = tok.render_chat([{"role": "user", "content": prompt}],
                                 add_generation_prompt=True)
    else:
        ids = [tok.bos_id] + tok.encode(prompt)
    stream = tok.stream_decoder()
    sys.stdout.write(prompt if not chat else "")
    for token in generate_tokens(net, ids, params, stop_ids=(tok.eos_id, tok.end_id)):
        sys.stdout.write(stream.add(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")


@app.command("export", rich_help_panel="Use and move models",
             help="Write a model in Hugging Face format (loads as LlamaForCausalLM "
                            "in transformers, vLLM and friends), with its model card from the "
                            "record as README.md.")
def export(
    model: str = typer.Argument(..., help="Model artifact id/prefix/alias."),
    out: Path = typer.Option(..., "--out", "-o", help="A new, empty folder."),
    fmt: str = typer.Option("hf", "--format", help="Export format (hf)."),
    dtype: str = typer.Option("float32", help=f"Weight dtype: {', '.join(DTYPES)}."),
) -> None:
    if fmt != "hf":
        raise LmforgeError(f"unknown export format '{fmt}'", hint="use --format hf")
    ws = workspace()
    art = ws.resolve(model, kind="model")
    files = export_hf(art, out, dtype)
    # The model card from the record, where the Hugging Face hub looks for one.
    atomic_write_text(out / "README.md", to_markdown(gather(ws, art.id)))
    files.append("README.md")
    console.print(f"exported {art.id} to {out} ({', '.join(files)})")


@app.command("import", rich_help_panel="Use and move models",
             help="Register a Hugging Face Llama checkpoint folder as a model.")
def import_(
    folder: Path = typer.Argument(...,
                                  help="Folder with config.json, safetensors, tokenizer.json."),
    name: str = typer.Option(None, help="A human name for the model."),
) -> None:
    art = import_hf(workspace(), folder, name)
    console.print(f"imported model [bold]{art.id}[/] ({art.metrics['params']:,} parameters)")
