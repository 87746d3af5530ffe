"""The review page's API: GET /v1/review/next samples two answers to one prompt (two seeds of
the served model, shown in random order as A and B) and records the pair; POST /v1/review
stores which one a person preferred. The pairs are preference data for the tuning stage
(serve/preferences.py reads them out)."""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lmforge.serve import responses as R
from lmforge.serve.chat import chat_stop_ids, prompt_for
from lmforge.serve.errors import APIError, bad_request
from lmforge.serve.feedback import FeedbackStore
from lmforge.serve.generation import Generation
from lmforge.serve.preferences import add_pair, get_pair, judge, stored_prompt
from lmforge.serve.sampling import check_prompts, check_text, max_new_tokens, sampling_params
from lmforge.serve.schemas import ChatCompletionRequest
from lmforge.serve.state import ServerState, server_state

router = APIRouter(prefix="/v1", dependencies=[Security(HTTPBearer(auto_error=False))],
                   tags=["Review"])

# Two samples can come out the same (a short answer, a confident model); a pair that
# differs is worth a few more tries before a reviewer sees twins.
ATTEMPTS = 3
_rng = random.SystemRandom()  # seeds and the A/B order; tests may swap in a seeded one


class ReviewVerdict(BaseModel):
    """POST /v1/review: which answer of a pair is better."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, max_length=128,
                    description="The pair's `id` from GET /v1/review/next.")
    choice: Literal["A", "B", "tie", "neither"] = Field(
        ..., description="A or B is better, both are as good (tie), or neither is good.")
    comment: str | None = Field(None, max_length=10_000)


def _store(state: ServerState) -> FeedbackStore:
    if state.feedback is None:
        raise APIError(404, "Review is off on this server (it runs with "
                            "--no-store-responses).", code="review_disabled")
    return state.feedback


def _request(state: ServerState, messages: list[dict[str, Any]], temperature: float,
             max_tokens: int | None) -> ChatCompletionRequest:
    """The pair's sampling settings as a chat request, so they are checked as chat's are."""
    try:
        body = ChatCompletionRequest(model=state.served.name, messages=messages, n=2,
                                     temperature=temperature, max_tokens=max_tokens)
    except ValidationError as e:
        raise bad_request(f"The prompt cannot be sampled: {e.errors()[0]['msg']}",
                          "prompt") from None
    check_text(body)
    return body


async def _two_answers(state: ServerState, messages: list[dict[str, Any]],
                       body: ChatCompletionRequest) -> tuple[list[dict[str, Any]], int]:
    """Two samples (seeds s and s+1), in their seeds' order; the new-token budget."""
    tok = state.served.tok
    prompt = await run_in_threadpool(prompt_for, tok, messages, None)
    check_prompts(state, [prompt.ids], 2)
    params = sampling_params(body, max_new_tokens(state, body.max_tokens, "max_tokens",
                                                  [prompt.ids]))
    answers: list[dict[str, Any]] = []
    for _ in range(ATTEMPTS):
        seed = _rng.randrange(2**31)
        gen = Generation(state.engine, state.metrics, arrived=time.monotonic(),
                         timeout_s=state.cfg.timeout_s)
        gen.submit([prompt.ids], dataclasses.replace(params, seed=seed), 2,
                   chat_stop_ids(tok), ())
        try:
            await gen.collect()
        finally:
            gen.close()
        answers = [{"content": c.text, "seed": seed + c.index,
                    "finish_reason": c.finish_reason} for c in gen.choices]
        if answers[0]["content"] != answers[1]["content"]:
            break
    return answers, params.max_new_tokens


@router.get("/review/next")
async def next_pair(
    request: Request,
    prompt: str | None = Query(None, max_length=20_000, description="A prompt to sample "
                               "two answers to; left out: the newest stored chat prompt "
                               "not reviewed yet."),
    system: str | None = Query(None, max_length=20_000,
                               description="A system prompt for a typed prompt."),
    temperature: float = Query(1.0, gt=0, le=2, description="Sampling temperature of both "
                               "answers (above 0: two greedy answers are the same)."),
    max_tokens: int | None = Query(None, ge=1),
) -> dict[str, Any]:
    """Two answers to one prompt, as A and B in random order, recorded as a pair to judge."""
    state = server_state(request)
    store = _store(state)
    refusal = state.lifecycle.current().refusal(state.served.name)
    if refusal is not None:
        raise refusal
    if state.served.chat_problem:
        raise bad_request(state.served.chat_problem, "model", "model_not_chat")
    key_id = request.state.key_id
    source: str | None = None
    if prompt is not None and prompt.strip():
        messages = ([{"role": "system", "content": system}] if system else []) \
            + [{"role": "user", "content": prompt}]
    else:
        found = await run_in_threadpool(stored_prompt, store, key_id)
        if found is None:
            raise APIError(404, "No stored chat prompt is left to review; type one "
                                "(GET /v1/review/next?prompt=...).", param="prompt",
                           code="no_prompt_to_review")
        source, messages = found
    body = _request(state, messages, temperature, max_tokens)
    answers, budget = await _two_answers(state, messages, body)
    if _rng.random() < 0.5:  # blind: which seed is A says nothing
        answers.reverse()
    pair_id = R.new_id("review")
    settings = {"temperature": temperature, "max_tokens": budget}
    await run_in_threadpool(add_pair, store, pair_id, key_id, source, messages, answers,
                            settings)
    request.state.access.update(review=pair_id, source=source)
    return {"id": pair_id, "object": "review.pair", "created": R.now(),
            "model": state.served.name, "source": "stored" if source else "typed",
            "messages": messages,
            "answers": [{"label": label, "content": a["content"],
                         "finish_reason": a["finish_reason"]}
                        for label, a in zip(("A", "B"), answers)]}


@router.post("/review")
async def review(body: ReviewVerdict, request: Request) -> dict[str, Any]:
    """The verdict on a pair: A or B better, a tie, or neither good. Once per pair."""
    state = server_state(request)
    store = _store(state)
    check_text(body)
    key_id = request.state.key_id
    pair = await run_in_threadpool(get_pair, store, body.id)
    # Another key's pairs are as unknown as missing ones, as with feedback.
    if pair is None or (state.keys is not None and pair.key_id != key_id):
        raise APIError(404, f"No review pair with id `{body.id}` on this server.",
                       param="id", code="review_not_found")
    when = None
    if pair.verdict is None:
        when = await run_in_threadpool(judge, store, body.id, body.choice, body.comment,
                                       key_id)
    if when is None:
        raise APIError(409, f"Pair `{body.id}` has already been reviewed.", param="id",
                       code="already_reviewed")
    request.state.access.update(review=body.id, verdict=body.choice)
    return {"id": body.id, "object": "review", "choice": body.choice, "created": when}
