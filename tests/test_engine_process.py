"""The engine in a process of its own (engine/process.py): the same answers as the in-process
engine, the same refusals at submit, cancels that reach the child, and no client left
waiting when the child dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.engine.process import ProcessEngine
from lmforge.engine.sampling import SamplingParams
from lmforge.engine.scheduler import (
    Engine,
    EngineOverloaded,
    EngineUnavailable,
    GenerationRequest,
    RequestTooLarge,
)
from lmforge.engine.streams import RequestStream, TokenEvent
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

TEXT = ["The cat sat on the mat and looked at the dog.",
        "A dog is a loyal animal that likes to play outside."] * 30


@pytest.fixture(scope="module")
def model_and_tok():
    tok = train_tokenizer(TEXT, 320, show_progress=False)
    design = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2,
                         vocab_size=tok.vocab_size, context_length=64)
    model = initialize(Transformer(design), "gpt2", 0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # well-separated greedy choices
    return model, tok


@pytest.fixture(scope="module")
def engine(model_and_tok):
    model, tok = model_and_tok
    with ProcessEngine(model, tok, max_batch=4, max_queue=8, threads=1) as e:
        yield e


def _prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(5, 300, (n,), generator=g).tolist() for n in (3, 11, 7, 1, 20, 5)]


def _run(engine, prompts, params) -> list[list[TokenEvent]]:
    streams = [engine.submit(GenerationRequest(list(p), params)) for p in prompts]
    return [list(s) for s in streams]


def test_greedy_answers_equal_the_in_process_engine(model_and_tok, engine):
    model, tok = model_and_tok
    params = SamplingParams(temperature=0, max_new_tokens=12)
    with Engine(model, tok, max_batch=4) as local:
        expected = _run(local, _prompts(), params)
    got = _run(engine, _prompts(), params)  # 6 requests on 4 rows: some join mid-batch
    assert [[e.token for e in s] for s in got] == [[e.token for e in s] for s in expected]
    assert [s[-1].finish_reason for s in got] == ["length"] * 6
    assert ["".join(e.text for e in s) for s in got] == \
        ["".join(e.text for e in s) for s in expected]


def test_seeded_sampling_is_reproducible_across_the_pipe(model_and_tok, engine):
    model, tok = model_and_tok
    params = SamplingParams(temperature=1.0, top_k=40, max_new_tokens=10, seed=7)
    with Engine(model, tok, max_batch=4) as local:
        expected = _run(local, _prompts()[:3], params)
    got = _run(engine, _prompts()[:3], params)
    assert [[e.token for e in s] for s in got] == [[e.token for e in s] for s in expected]


def test_bad_and_oversized_requests_are_refused_at_submit(engine):
    with pytest.raises(RequestTooLarge):
        engine.submit(GenerationRequest(list(range(5, 70)), SamplingParams(temperature=0)))
    with pytest.raises(Exception, match="prompt token ids"):
        engine.submit(GenerationRequest([10**6], SamplingParams(temperature=0)))
    with pytest.raises(Exception, match="empty"):
        engine.submit(GenerationRequest([], SamplingParams(temperature=0)))


def test_cancel_reaches_the_child_and_frees_the_row(engine):
    stream = engine.submit(GenerationRequest([5, 6, 7], SamplingParams(
        temperature=0, max_new_tokens=60)))
    first = next(iter(stream))
    os.kill(engine._process.pid, signal.SIGSTOP)  # a few steps ahead at most, not 59
    try:
        assert first.finish_reason is None
        stream.cancel()
    finally:
        os.kill(engine._process.pid, signal.SIGCONT)
    rest = list(stream)
    assert rest[-1].finish_reason == "abort" and rest[-1].completion_tokens < 60
    deadline = time.monotonic() + 10
    while engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats()["running"] == 0


def test_a_full_queue_is_refused_at_once_and_frees_when_it_moves(model_and_tok):
    model, tok = model_and_tok
    with ProcessEngine(model, tok, max_batch=1, max_queue=2, threads=1) as e:
        os.kill(e._process.pid, signal.SIGSTOP)  # nothing starts: every request waits
        try:
            params = SamplingParams(temperature=0, max_new_tokens=3)
            waiting = [e.submit(GenerationRequest([5, 6], params)) for _ in range(2)]
            with pytest.raises(EngineOverloaded):
                e.submit(GenerationRequest([5, 6], params))
        finally:
            os.kill(e._process.pid, signal.SIGCONT)
        assert [s[-1].finish_reason for s in map(list, waiting)] == ["length", "length"]
        assert len(list(e.submit(GenerationRequest([5, 6], params)))) == 3


def test_async_readers_get_every_token_and_merged_chunks_when_behind(engine):
    params = SamplingParams(temperature=0, max_new_tokens=16)

    async def read(merge: bool, lag: float) -> list[TokenEvent]:
        stream = engine.submit(GenerationRequest([9, 8, 7], params))
        events = []
        async for event in (stream.merged() if merge else stream):
            events.append(event)
            await asyncio.sleep(lag)  # a slow client: the engine runs ahead
        return events

    plain = asyncio.run(read(False, 0.0))
    merged = asyncio.run(read(True, 0.05))
    assert len(plain) == 16 and plain[-1].completion_tokens == 16
    assert "".join(e.text for e in merged) == "".join(e.text for e in plain)
    assert len(merged) < 16 and merged[-1].finish_reason == "length"
    assert merged[-1].completion_tokens == 16


def test_merged_joins_only_what_already_waits():
    stream = RequestStream("r")
    for i, piece in enumerate(["a", "b", "c"]):
        stream._put(TokenEvent("r", i, piece, None, 2, i + 1))

    async def read() -> list[TokenEvent]:
        out = []
        async for event in stream.merged():
            out.append(event)
            if len(out) == 1:
                stream._put(TokenEvent("r", 3, "d", "stop", 2, 4))
        return out

    out = asyncio.run(read())
    assert [(e.text, e.token, e.completion_tokens, e.finish_reason) for e in out] == \
        [("abc", 2, 3, None), ("d", 3, 4, "stop")]


def test_stop_aborts_open_requests(model_and_tok):
    model, tok = model_and_tok
    e = ProcessEngine(model, tok, max_batch=2, threads=1)
    e.start()
    stream = e.submit(GenerationRequest([5, 6, 7], SamplingParams(temperature=0,
                                                                  max_new_tokens=60)))
    next(iter(stream))
    e.stop()
    assert list(stream)[-1].finish_reason in ("abort", "length")
    assert not e._process.is_alive()


def test_a_dead_child_ends_every_stream_with_an_error_and_refuses_new_work(model_and_tok):
    model, tok = model_and_tok
    e = ProcessEngine(model, tok, max_batch=2, threads=1)
    e.start()
    try:
        os.kill(e._process.pid, signal.SIGSTOP)
        stream = e.submit(GenerationRequest([5, 6], SamplingParams(temperature=0,
                                                                   max_new_tokens=20)))
        os.kill(e._process.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="ended unexpectedly"):
            list(stream)
        assert time.monotonic() - started < 10
        assert not e.alive
        with pytest.raises(EngineUnavailable):
            e.submit(GenerationRequest([5, 6], SamplingParams(temperature=0)))
    finally:
        e.stop()
