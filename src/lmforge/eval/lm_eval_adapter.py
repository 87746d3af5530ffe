"""An lm-evaluation-harness model class for lmforge models, so any lm-eval task runs on them.

    from lmforge.eval.lm_eval_adapter import LmforgeLM
    lm = LmforgeLM(pretrained="path/to/model-dir")       # or an artifact id / alias
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])

Importing this module registers the class with lm-eval's model registry as "lmforge".
lm-eval 0.4.13 finds models only through that in-process registry (no entry points, and
`--include_path` adds tasks, not models), so on the command line run lm-eval through this
module, which registers the class and then hands its arguments to lm-eval's own CLI:

    python -m lmforge.eval.lm_eval_adapter --model lmforge \\
        --model_args pretrained=PATH_OR_REF,batch_size=32 --tasks hellaswag

The numbers are lmforge's own: `loglikelihood` encodes each request with
`lmforge.eval.scorer.encode_pair` (lm-eval's HFLM split, BOS first by default) and scores it
with `LoglikelihoodScorer`; `generate_until` decodes greedily through
`lmforge.engine.generate`. lm-eval is the optional extra `eval`; `import lmforge` never
imports it, only importing this module does.

Parity with lm-eval's own HF backend: every context here starts with BOS (`add_bos`, default
true), as our models saw every document in training. lm-eval's `HFLM` adds no BOS by default
on a model exported with `lmforge export MODEL --format hf --out DIR`, so it scores other
token sequences; it gives these numbers (within fp32 rounding) only with `add_bos_token=True`:

    lm_eval --model hf --model_args pretrained=EXPORT_DIR,add_bos_token=True --tasks ...
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lmforge.engine.generate import generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.errors import LmforgeError
from lmforge.eval.scorer import LoglikelihoodScorer, encode_pair
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer

try:
    import lm_eval.models  # noqa: F401  - registers lm-eval's own models first (see below)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - depends on the environment
    raise LmforgeError("lm-evaluation-harness is not installed",
                       hint="pip install 'lmforge[eval]' (or: pip install 'lm_eval[hf]')") from None

MODEL_NAME = "lmforge"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HFLM default


def _register(cls: type[LM]) -> type[LM]:
    """`@register_model("lmforge")`, except when `python -m` runs this file as __main__: then
    the importable module registers its class and this copy stays out of the registry (two
    classes under one name would collide)."""
    if __name__ == "__main__":
        return cls
    return register_model(MODEL_NAME)(cls)


def _parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise LmforgeError(f"model argument {name}={value!r} is not true or false",
                       hint=f"write {name}=true or {name}=false")


def _parse_batch_size(value: Any) -> int:
    """lm-eval passes an int, a string, or "auto" / "auto:N" from the command line; lmforge's
    scorer packs and sorts its own batches, so "auto" means its default of 32."""
    if value is None:
        return 32
    text = str(value).strip().lower()
    if text.startswith("auto"):
        return 32
    try:
        size = int(text)
    except ValueError:
        raise LmforgeError(f"batch_size={value!r} is not a number",
                           hint="give a positive integer, e.g. batch_size=32") from None
    if size < 1:
        raise LmforgeError(f"batch_size must be at least 1, got {size}")
    return size


def _load(pretrained: str | Path, workspace: str | Path | None, device: str,
          dtype: torch.dtype) -> tuple[Transformer, Tokenizer]:
    """A plain model directory, or an artifact reference resolved in a workspace."""
    from lmforge.model.io import load_model, load_model_dir
    from lmforge.registry import Workspace

    path = Path(pretrained).expanduser()
    if path.is_dir() and not (path / "manifest.json").exists():
        return load_model_dir(path, device, dtype)
    ws = Workspace.open(workspace)
    try:
        model, tok, _ = load_model(ws, str(pretrained), device, dtype)
    finally:
        ws.close()
    return model, tok


@_register
class LmforgeLM(LM):
    """lm-eval's `LM` over an lmforge `Transformer` and `Tokenizer`.

    Build it from objects (`model=`, `tokenizer=`) or from `pretrained=` (a model directory,
    an exported HF folder, or an artifact id/alias in `workspace`, default $LMFORGE_HOME).
    `add_bos` (default true) starts every context with BOS, as our models saw every document
    in training; lm-eval's HFLM does so only with `add_bos_token=True` (its default adds no
    BOS on an exported lmforge model), and matches these scores only then.
    """

    def __init__(self, pretrained: str | Path | None = None, *, model: Transformer | None = None,
                 tokenizer: Tokenizer | None = None, workspace: str | Path | None = None,
                 batch_size: int | str | None = 32, max_batch_size: int | None = None,
                 device: str | None = None, dtype: str = "float32", add_bos: bool | str = True,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, packed: bool | str = True,
                 **unused: Any):
        super().__init__()
        if unused:
            raise LmforgeError(f"unknown model argument(s) for lmforge: {', '.join(unused)}",
                               hint="known: pretrained, workspace, batch_size, device, dtype, "
                                    "add_bos, max_gen_toks, packed")
        dtype = "float32" if dtype == "auto" else dtype  # lm-eval's usual default spelling
        if dtype not in DTYPES:
            raise LmforgeError(f"unknown dtype '{dtype}'",
                               hint=f"choose one of: {', '.join(DTYPES)}")
        device = device or "cpu"
        if model is None:
            if pretrained is None:
                raise LmforgeError("LmforgeLM needs a model",
                                   hint="pass pretrained=PATH_OR_REF, or model= and tokenizer=")
            model, tokenizer = _load(pretrained, workspace, device, DTYPES[dtype])
        elif tokenizer is None:
            raise LmforgeError("LmforgeLM got a model but no tokenizer",
                               hint="pass tokenizer= with the model's lmforge Tokenizer")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.add_bos = _parse_bool(add_bos, "add_bos")
        self.max_gen_toks = int(max_gen_toks)
        size = _parse_batch_size(batch_size)
        if max_batch_size:
            size = min(size, int(max_batch_size))
        self.scorer = LoglikelihoodScorer(model, batch_size=size, prefix_id=tokenizer.bos_id,
                                          packed=_parse_bool(packed, "packed"))
        self._device = next(model.parameters()).device

    @property
    def max_length(self) -> int:
        return self.model.design.context_length

    @property
    def tokenizer_name(self) -> str:  # fingerprints lm-eval's request caches
        return "lmforge"

    # ---- scoring ----------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False
                      ) -> list[tuple[float, bool]]:
        """(log p(continuation | context), continuation is the greedy decode) per request."""
        pairs = [(str(r.args[0]), str(r.args[1])) for r in requests]
        encoded = [encode_pair(self.tokenizer, ctx, cont, add_bos=self.add_bos)
                   for ctx, cont in pairs]
        results = self.scorer.loglikelihood(encoded, progress=not disable_tqdm)
        for pair, result in zip(pairs, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        """Total log-likelihood of each whole string, its first token given BOS, over
        disjoint windows of the model's context (lm-eval's rolling scheme)."""
        texts = [str(r.args[0]) for r in requests]
        tokens = self.tokenizer.encode_batch(texts)
        totals = self.scorer.rolling_loglikelihood(tokens, progress=not disable_tqdm)
        for text, total in zip(texts, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    # ---- generation -------------------------------------------------------------------

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each context (greedy unless the task asks to sample) until one of its
        `until` strings, the end of the document (BOS/EOS), `max_gen_toks` or the context's
        end; the text is cut before the first stop string, as lm-eval expects."""
        outputs = []
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            text = self._generate(str(context), gen_kwargs)
            self.cache_hook.add_partial("generate_until", (context, req.args[1]), text)
            outputs.append(text)
        return outputs

    def _generate(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        until = gen_kwargs.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, list | tuple):
            raise LmforgeError(f"generation 'until' must be a string or a list, got {until!r}",
                               hint="fix generation_kwargs.until in the task YAML")
        stops = [s for s in until if s]
        max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
        params = self._sampling(gen_kwargs, max_new)
        ids = self.tokenizer.encode(context)
        # Keep room for the answer: cut the context from the left, as HFLM does.
        room = self.max_length - max_new - int(self.add_bos)
        ids = ids[-room:] if room > 0 else ids[-1:]
        prompt = ([self.tokenizer.bos_id] if self.add_bos or not ids else []) + ids
        decoder = self.tokenizer.stream_decoder(skip_special=True)
        text = ""
        tok = self.tokenizer
        for token in generate_tokens(self.model, prompt, params,
                                     stop_ids=(tok.bos_id, tok.eos_id)):
            text += decoder.add(token)
            cut = _first_stop(text, stops)
            if cut is not None:
                return text[:cut]
        text += decoder.flush()
        cut = _first_stop(text, stops)
        return text if cut is None else text[:cut]

    def _sampling(self, gen_kwargs: dict[str, Any], max_new: int) -> SamplingParams:
        do_sample = _parse_bool(gen_kwargs.pop("do_sample", False), "do_sample")
        temperature = float(gen_kwargs.pop("temperature", 0.0))
        top_k = int(gen_kwargs.pop("top_k", 0) or 0)
        top_p = float(gen_kwargs.pop("top_p", 1.0) or 1.0)
        seed = gen_kwargs.pop("seed", None)
        if not do_sample or temperature == 0:
            # lm-eval's convention: without do_sample a task means greedy decoding.
            return SamplingParams(temperature=0.0, max_new_tokens=max_new)
        return SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                              max_new_tokens=max_new,
                              seed=None if seed is None else int(seed))


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest stop string starts in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the "lmforge" model registered (see the module docstring)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    # Run the importable module's main so its registered class is the one lm-eval builds.
    from lmforge.eval.lm_eval_adapter import main as _main

    _main()
