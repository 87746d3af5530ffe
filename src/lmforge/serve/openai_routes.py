"""The OpenAI endpoints: /v1/models, /v1/completions, /v1/chat/completions, streamed as
server-sent events when asked. Each request is stateless: the client sends the whole
conversation; the server keeps only a record of the answer for feedback."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer

from lmforge.serve import responses as R
from lmforge.serve.chat import (
    ChatPrompt,
    ToolStream,
    assistant_message,
    chat_stop_ids,
    completion_stop_ids,
    prompt_for,
)
from lmforge.serve.errors import APIError, bad_request, error_body
from lmforge.serve.generation import Generation
from lmforge.serve.guardrail_hooks import record_hit, screen_input
from lmforge.serve.sampling import (
    check_prompts,
    check_stops,
    check_supported,
    check_text,
    max_new_tokens,
    sampling_params,
)
from lmforge.serve.schemas import ChatCompletionRequest, CompletionRequest
from lmforge.serve.state import ServerState, server_state

log = logging.getLogger("lmforge.serve")

# Declares the bearer key in the OpenAPI schema; the check itself runs in GuardMiddleware,
# before the body is read.
_bearer = HTTPBearer(auto_error=False, description="An API key from --api-key-file (when "
                                                   "the server has one).")
router = APIRouter(prefix="/v1", dependencies=[Security(_bearer)], tags=["OpenAI"])
# The generating endpoints answer JSON, or with `"stream": true` server-sent events.
_STREAMABLE: dict[int | str, dict[str, Any]] = {200: {
    "description": "The answer as JSON; with `stream: true`, server-sent events (one JSON "
                   "chunk per `data:` line, an error object if generation fails midway), "
                   "ending with `data: [DONE]`.",
    "content": {"text/event-stream": {}}}}


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The served model, in OpenAI's list shape."""
    return {"object": "list", "data": [server_state(request).card()]}


@router.get("/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    state = server_state(request)
    state.check_model(model)
    return state.card()


class _ClientGone(Exception):
    pass


async def _until_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.5)


async def _collect(gen: Generation, request: Request) -> None:
    """Wait for every choice; a client that hangs up cancels them."""
    work = asyncio.ensure_future(gen.collect())
    watch = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work not in done:
        work.cancel()
        raise _ClientGone()
    work.result()  # the timeout's 503 or an engine error


def _store(state: ServerState, rid: str, endpoint: str, key_id: str | None,
           request: dict[str, Any], gen: Generation, usage: dict[str, int]) -> None:
    if state.feedback is None:
        return
    choices = [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason}
               for c in gen.choices]
    try:
        state.feedback.add_response(rid, endpoint, key_id, request, choices, usage)
    except Exception:  # noqa: BLE001 - the answer matters more than its record
        log.exception("could not store response %s for feedback", rid)


def _note(request: Request, **fields: Any) -> None:
    """Add fields to this request's access log line."""
    request.state.access.update(fields)


async def _answer(request: Request, state: ServerState, gen: Generation, rid: str,
                  endpoint: str, record: dict[str, Any], prompt_tokens: int,
                  body: Callable[[], dict[str, Any]]) -> Response:
    """The non-streamed answer: wait for all choices, record them, return `body()`."""
    try:
        await _collect(gen, request)
    except _ClientGone:
        _note(request, response_id=rid, outcome="client disconnected")
        return Response(status_code=499)
    finally:
        gen.close()
    usage = gen.usage(prompt_tokens)
    await run_in_threadpool(_store, state, rid, endpoint, request.state.key_id, record, gen,
                            usage)
    _note(request, response_id=rid, **usage,
          finish_reasons=[c.finish_reason for c in gen.choices],
          output=[c.text for c in gen.choices])
    return JSONResponse(body())


def _sse(stream: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _streamed(request: Request, state: ServerState, gen: Generation, rid: str,
                    endpoint: str, record: dict[str, Any], prompt_tokens: int,
                    opening: list[bytes], piece: Callable[[int, str, str | None], bytes],
                    usage_obj: str, include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE body: `opening` chunks, one chunk per released piece of text (and one with
    the finish reason), the usage chunk when asked, then [DONE]. An error after the first
    byte arrives as an OpenAI error object in the stream."""
    model = state.served.name
    created = R.now()
    try:
        for chunk in opening:
            yield chunk
        async for choice, event in gen.events():
            if event.text:
                yield piece(choice.index, event.text, None)
            if event.finish_reason is not None:
                yield piece(choice.index, "", event.finish_reason)
        if include_usage:
            yield R.sse(R.usage_chunk(rid, created, model, usage_obj,
                                      gen.usage(prompt_tokens)))
    except APIError as e:
        yield R.sse(e.body())
        _note(request, error=e.code)
    except Exception:  # noqa: BLE001 - the stream has started: say so in it, and log
        log.exception("generation failed in stream %s", rid)
        yield R.sse(error_body("The server had an error while generating.", "server_error",
                               None, "internal_error"))
        _note(request, error="internal_error")
    finally:
        gen.close()
        usage = gen.usage(prompt_tokens)
        # Synchronous on purpose: this also runs when the client left and the task is
        # being cancelled, where no await may follow.
        _store(state, rid, endpoint, request.state.key_id, record, gen, usage)
        _note(request, response_id=rid, **usage,
              finish_reasons=[c.finish_reason for c in gen.choices],
              output=[c.text for c in gen.choices])
    yield R.DONE


def _start(state: ServerState, arrived: float, request: Request) -> Generation:
    return Generation(state.engine, state.metrics, arrived=arrived,
                      timeout_s=state.cfg.timeout_s, guardrails=state.guardrails,
                      on_hit=lambda match: record_hit(request, state, match))


async def _completion_prompts(state: ServerState, prompt: Any) -> list[list[int]]:
    """Text is read as a new document (BOS first); token ids are taken as given."""
    tok = state.served.tok
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise bad_request("The prompt is empty.", "prompt")
    if isinstance(prompt[0], str):
        encoded = await run_in_threadpool(tok.encode_batch, prompt)
        return [[tok.bos_id, *ids] for ids in encoded]
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return [list(p) for p in prompt]


@router.post("/completions", response_model=None, responses=_STREAMABLE)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Continue a prompt (any model, base or tuned)."""
    arrived = time.monotonic()
    state = server_state(request)
    check_text(body)
    state.check_model(body.model)
    check_supported(body)
    stops = check_stops(body)
    prompts = await _completion_prompts(state, body.prompt)
    check_prompts(state, prompts, body.n)
    params = sampling_params(body, max_new_tokens(state, body.max_tokens, "max_tokens",
                                                  prompts))
    prompt_tokens = sum(len(p) for p in prompts)
    _note(request, model=state.served.name, stream=body.stream, n=body.n,
          prompt=body.prompt)
    gen = _start(state, arrived, request)
    refused = screen_input(request, state, prompt=body.prompt, prompt_ids=prompts)
    if refused is not None:  # an input guardrail: its refusal, nothing generated
        gen.refuse(len(prompts) * body.n, refused)
    else:
        gen.submit(prompts, params, body.n, completion_stop_ids(state.served.tok), stops)
    rid, created, model = R.new_id("cmpl"), R.now(), state.served.name
    record = body.model_dump(exclude_none=True)
    if body.stream:
        include = bool(body.stream_options and body.stream_options.include_usage)

        def piece(index: int, text: str, finish: str | None) -> bytes:
            return R.sse(R.completion_chunk(rid, created, model, index, text, finish))

        return _sse(_streamed(request, state, gen, rid, "completions", record,
                              prompt_tokens, [], piece, "text_completion", include))

    def full() -> dict[str, Any]:
        return R.completion_body(rid, created, model, [
            {"index": c.index, "text": c.text, "finish_reason": c.finish_reason}
            for c in gen.choices], gen.usage(prompt_tokens))

    return await _answer(request, state, gen, rid, "completions", record, prompt_tokens,
                         full)


@router.post("/chat/completions", response_model=None, responses=_STREAMABLE)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """The next assistant message of a conversation (models with a chat template)."""
    arrived = time.monotonic()
    state = server_state(request)
    check_text(body)
    state.check_model(body.model)
    if state.served.chat_problem:
        raise bad_request(state.served.chat_problem, "model", "model_not_chat")
    check_supported(body)
    stops = check_stops(body)
    tok = state.served.tok
    messages = body.message_dicts()
    prompt = await run_in_threadpool(prompt_for, tok, messages, body.tools, body.tool_choice)
    ids = prompt.ids
    check_prompts(state, [ids], body.n)
    requested = body.max_completion_tokens or body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    params = sampling_params(body, max_new_tokens(state, requested, param, [ids]))
    _note(request, model=state.served.name, stream=body.stream, n=body.n, messages=messages)
    gen = _start(state, arrived, request)
    refused = screen_input(request, state, messages=messages)
    if refused is not None:  # an input guardrail: its refusal (plain text), nothing generated
        gen.refuse(body.n, refused)
        prompt = ChatPrompt(ids)
    else:
        gen.submit([ids], params, body.n, chat_stop_ids(tok), stops)
    rid, created, model = R.new_id("chatcmpl"), R.now(), state.served.name
    record = body.model_dump(exclude_none=True)
    if body.stream:
        include = bool(body.stream_options and body.stream_options.include_usage)
        opening = [R.sse(R.chat_chunk(rid, created, model, i, {"role": "assistant",
                                                                "content": ""}, None))
                   for i in range(body.n)]
        held = [ToolStream(prompt) for _ in range(body.n)] if prompt.tools else None

        def piece(index: int, text: str, finish: str | None) -> bytes:
            if held is None:
                delta = {"content": text} if text else {}
                return R.sse(R.chat_chunk(rid, created, model, index, delta, finish))
            out = b""
            shown = held[index].add(text)
            if shown:
                out += R.sse(R.chat_chunk(rid, created, model, index, {"content": shown},
                                          None))
            if finish is None:
                return out
            tail, calls = held[index].finish()
            if tail:
                out += R.sse(R.chat_chunk(rid, created, model, index, {"content": tail},
                                          None))
            if calls:
                out += R.sse(R.chat_chunk(rid, created, model, index, {"tool_calls": calls},
                                          None))
                finish = "tool_calls" if finish == "stop" else finish
            return out + R.sse(R.chat_chunk(rid, created, model, index, {}, finish))

        return _sse(_streamed(request, state, gen, rid, "chat.completions", record, len(ids),
                              opening, piece, "chat.completion.chunk", include))

    def full() -> dict[str, Any]:
        choices = []
        for c in gen.choices:
            if c.finish_reason == "content_filter":  # a guardrail's refusal: plain text
                message, calls = {"role": "assistant", "content": c.text}, False
            else:
                message, calls = assistant_message(c.text, prompt)
            finish = "tool_calls" if calls and c.finish_reason == "stop" else c.finish_reason
            choices.append({"index": c.index, "message": message, "finish_reason": finish})
        return R.chat_body(rid, created, model, choices, gen.usage(len(ids)))

    return await _answer(request, state, gen, rid, "chat.completions", record, len(ids),
                         full)
