"""Side-by-side samples from several models: what each writes after the same prompt."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lmforge.engine.generate import complete
from lmforge.engine.sampling import SamplingParams
from lmforge.model.stage import load_model
from lmforge.registry import Workspace


def sample_text(ws: Workspace, model_ref: str, prompt: str, max_tokens: int, seed: int) -> str:
    model, tok, _ = load_model(ws, model_ref)
    params = SamplingParams(temperature=0.7, top_k=40, max_new_tokens=max_tokens, seed=seed)
    return complete(model, tok, prompt, params)


def compare_samples(ws: Workspace, models: list[str], prompt: str, max_tokens: int, seed: int,
                    console: Console) -> dict[str, str]:
    texts = {m: sample_text(ws, m, prompt, max_tokens, seed) for m in models}
    table = Table(title=f"after {prompt!r}", show_lines=True)
    for m in models:
        rec = ws.record(m)
        table.add_column(f"{rec.id}\n({ws.state_of(rec.id) or rec.stage})", ratio=1)
    table.add_row(*(prompt + texts[m] for m in models))
    console.print(table)
    return texts
