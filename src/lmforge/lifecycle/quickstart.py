"""The quickstart lifecycle on the embedded corpus, as far as lmforge's stages reach today:
corpus -> tokenizer -> design -> init (model v0) -> a sample from v0.

Every stage registers a content-addressed artifact, so a second run finds the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from lmforge.data.stage import register_pydocs, train_tokenizer_stage
from lmforge.design.spec import from_preset
from lmforge.design.stage import register_design
from lmforge.model.stage import init_stage, load_model
from lmforge.registry import Workspace
from lmforge.serve.generate import generate_tokens
from lmforge.serve.sampling import SamplingParams

PROMPT = "What does os.path.join do?"


@dataclass(frozen=True)
class QuickstartSettings:
    preset: str = "tiny"
    vocab_size: int = 4096
    scheme: str = "gpt2"
    seed: int = 0
    sample_tokens: int = 40


def sample(ws: Workspace, model_id: str, prompt: str, tokens: int, seed: int) -> str:
    model, tok, _ = load_model(ws, model_id)
    ids = [tok.bos_id] + tok.encode(prompt)
    params = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=tokens, seed=seed)
    return tok.decode(list(generate_tokens(model, ids, params, stop_ids=(tok.eos_id,))))


def run_quickstart(ws: Workspace, s: QuickstartSettings, console: Console) -> dict[str, str]:
    console.rule("[bold]lmforge quickstart")
    data = register_pydocs(ws)
    console.print(f"[green]corpus[/]     {data.id}: {data.metrics['documents']:,} documents, "
                  f"{data.metrics['characters']:,} characters of Python documentation")
    tok = train_tokenizer_stage(ws, [data.id], s.vocab_size, show_progress=False)
    console.print(f"[green]tokenizer[/]  {tok.id}: byte-level BPE, {tok.metrics['vocab_size']} "
                  "tokens")
    design = from_preset(s.preset).replace(vocab_size=s.vocab_size)
    design_art, report = register_design(ws, design)
    console.print(f"[green]design[/]     {design_art.id}: {s.preset}, "
                  f"{report['params']['total']:,} parameters")
    model = init_stage(ws, design_art.id, tok.id, s.scheme, s.seed)
    console.print(f"[green]init[/]       {model.id}: model v0 ({s.scheme} init), state "
                  f"{ws.state_of(model.id)}")
    text = sample(ws, model.id, PROMPT, s.sample_tokens, s.seed)
    console.print(f"\n[bold]v0 after[/] {PROMPT!r}:\n{text!r}\n"
                  "(random weights: it can produce output, but the output is random)")
    return {"dataset": data.id, "tokenizer": tok.id, "design": design_art.id,
            "model": model.id}
