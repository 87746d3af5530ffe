"""The chat suite's `pydocs_tools` task: does the model call the docstring tool when, and only
when, a question needs it?

With the `docstring` tool offered (as the built-in SFT data offers it), the model is asked:
- every held-out question of `pydocs_qa` (names SFT never showed): it should answer with one
  well-formed call `docstring(name=<that name>)`. The tool then really runs on whatever the
  model asked for, its result is fed back, and the model's final answer is checked for the
  summary shape of `pydocs_qa`;
- the `NO_TOOL_PROMPTS` (greetings, small talk, harmful asks; never trained on): it should
  answer without calling anything.

Metrics, each with its standard error over its own items:
- `call_accuracy`: share of held-out questions answered with exactly one call to `docstring`
  whose arguments are {"name": the name asked about} (the figure: >= 0.8);
- `well_formed`: share of held-out questions whose reply holds at least one parseable call;
- `answer_summary_shaped`: share of held-out questions whose final answer (after the tool's
  result, or the direct answer when no call was made) is summary-shaped;
- `false_calls`: share of no-tool prompts whose reply tries to call a tool (the figure: <= 0.1).
"""

from __future__ import annotations

import time
from typing import Any

from lmforge.chat_format import TOOL_CALL_OPEN, parse_tool_calls

TASK = "pydocs_tools"
NO_TOOL_INDEX = 1_000_000  # item indices of the no-tool prompts start here (pairing by index)


def run_pydocs_tools(model: Any, tok: Any, settings: Any, limit: int | None = None,
                     progress: bool = True) -> dict:
    """Ask the held-out questions (or a seeded sample of `limit`) and the no-tool prompts (the
    first `limit` of them) with the docstring tool offered; the report's task entry. Greedy
    unless settings say otherwise; the same settings as `pydocs_qa`."""
    from lmforge.data.corpora.pydocs_chat import NO_TOOL_PROMPTS, docstring_tools
    from lmforge.engine import generate as gen
    from lmforge.engine.sampling import SamplingParams
    from lmforge.engine.tools import docstring_tool, run_call
    from lmforge.eval.chat_suite import _metric, _progress, _setting
    from lmforge.eval.pydocs_qa import DEFAULT_MAX_NEW_TOKENS, check_answer, heldout_items

    max_new = int(_setting(settings, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    seed = int(_setting(settings, "seed", 0))
    temperature = float(_setting(settings, "temperature", 0.0))
    batch = max(1, int(_setting(settings, "batch_size", 32)))
    tools, runnable = docstring_tools(), {"docstring": docstring_tool()}
    questions = heldout_items(seed, limit)
    asks = [(q.index, q.question, q) for q in questions]
    asks += [(NO_TOOL_INDEX + i, p, None) for i, p in enumerate(NO_TOOL_PROMPTS[:limit])]
    stops = tuple(range(7))  # every special token ends a turn's generation
    context = model.design.context_length

    def params(index: int) -> SamplingParams:
        return SamplingParams(temperature=temperature, top_k=int(_setting(settings, "top_k", 0)),
                              top_p=float(_setting(settings, "top_p", 1.0)),
                              max_new_tokens=max_new,
                              seed=None if temperature == 0 else seed * 1_000_003 + index)

    def generate(conversations: list[list[dict]], indices: list[int]) -> list[tuple[str, bool]]:
        """(reply text, ended with <|end|>) for each conversation; one that leaves no room
        in the context gets ("", False)."""
        prompts = [tok.render_chat(c, add_generation_prompt=True, tools=tools)[0]
                   for c in conversations]
        fits = [i for i, p in enumerate(prompts) if len(p) < context]
        outs = gen.generate_batch(model, [prompts[i] for i in fits],
                                  [params(indices[i]) for i in fits], stop_ids=stops)
        replies = [("", False)] * len(prompts)
        for i, out in zip(fits, outs):
            ended = bool(out) and out[-1] == tok.end_id
            body = out[:-1] if out and out[-1] in stops else out
            replies[i] = (tok.decode(body, skip_special=True), ended)
        return replies

    start, items = time.perf_counter(), []
    bar = _progress(progress, len(asks))
    with bar:
        task = bar.add_task(TASK, total=len(asks))
        for lo in range(0, len(asks), batch):
            chunk = asks[lo:lo + batch]
            first = [[{"role": "user", "content": text}] for _, text, _ in chunk]
            replies = generate(first, [i for i, _, _ in chunk])
            parsed = [parse_tool_calls(text) for text, _ in replies]
            # The second turn: after the tool's real result where the model called it.
            follow = [k for k, (p, (_, _, q)) in enumerate(zip(parsed, chunk))
                      if q is not None and p.calls]
            convs = []
            for k in follow:
                call = parsed[k].calls[0]
                convs.append([*first[k], {"role": "assistant", "content": parsed[k].content,
                                          "tool_calls": [{"type": "function",
                                                          "function": call}]},
                              {"role": "tool", "content": run_call(runnable, call)}])
            finals = dict(zip(follow, generate(convs, [chunk[k][0] for k in follow])))
            for k, (index, text, q) in enumerate(chunk):
                items.append(_item(index, text, q, replies[k], parsed[k], finals.get(k),
                                   check_answer))
            bar.advance(task, len(chunk))
    metrics = {}
    needs = [it for it in items if it["kind"] == "needs_tool"]
    no_need = [it for it in items if it["kind"] == "no_tool"]
    if needs:
        for name in ("call_accuracy", "well_formed", "answer_summary_shaped"):
            metrics[name] = _metric([it["scores"][name] for it in needs])
    metrics["false_calls"] = _metric([it["scores"]["false_calls"] for it in no_need])
    return {"kind": "generation", "n": len(items), "num_fewshot": 0,
            "source": f"builtin:pydocs-chat heldout + no-tool prompts (seed={seed})",
            "metrics": metrics, "items": items, "seconds": time.perf_counter() - start}


def _item(index: int, prompt: str, q: Any, reply: tuple[str, bool], parsed: Any,
          final: tuple[str, bool] | None, check_answer: Any) -> dict:
    text, _ = reply
    item: dict[str, Any] = {"index": index, "prompt": prompt, "output": text}
    if q is None:
        item.update(kind="no_tool", scores={"false_calls": float(TOOL_CALL_OPEN in text)})
        return item
    right = (len(parsed.calls) == 1 and parsed.calls[0]["name"] == "docstring"
             and parsed.calls[0]["arguments"] == {"name": q.name})
    answer, ended = final if final is not None else reply
    results = check_answer(q, answer, ended)
    item.update(kind="needs_tool", name=q.name, expected=q.expected,
                calls=parsed.calls, malformed=parsed.malformed, answer=answer,
                checks=[r.to_dict() for r in results],
                scores={"call_accuracy": float(right),
                        "well_formed": float(bool(parsed.calls)),
                        "answer_summary_shaped": float(all(r.passed for r in results))})
    return item
