"""The continuous-batching engine: requests that join and leave a running batch get exactly
what one-at-a-time generation gives them; stop strings, budgets, cancels, errors and asyncio."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest
import torch

from lmforge.design.spec import ModelDesign
from lmforge.engine import scheduler
from lmforge.engine.generate import generate_tokens
from lmforge.engine.sampling import SamplingParams
from lmforge.engine.scheduler import Engine, EngineOverloaded, GenerationRequest, RequestTooLarge
from lmforge.engine.streams import StopText
from lmforge.errors import LmforgeError
from lmforge.model.init import initialize
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

TEXT = ["The cat sat on the mat and looked at the dog.",
        "A dog is a loyal animal that likes to play outside.",
        "Python functions return values; modules group functions together."] * 20
GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXT, 400, show_progress=False)


@pytest.fixture(scope="module")
def model(tok):
    d = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size,
                    context_length=64, name="test")
    # As in test_engine: a sharpened output head keeps greedy choices far apart, so batching's
    # float noise (~1e-6) cannot flip one while a masking or position bug does.
    m = initialize(Transformer(d), "gpt2", 0).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(20)
    return m


@pytest.fixture
def batch_sizes(model, monkeypatch):
    """Rows in every forward the engine runs (decode steps have one token per row)."""
    seen: list[tuple[int, int]] = []
    real = model.hidden

    def spy(ids, cache=None, **kw):
        seen.append(tuple(ids.shape))
        return real(ids, cache, **kw)

    monkeypatch.setattr(model, "hidden", spy)
    real_step = scheduler.decode_step  # the engine's decode steps of a small model

    def step_spy(model, weights, token, cache, ends):
        seen.append((token.shape[0], 1))
        return real_step(model, weights, token, cache, ends)

    monkeypatch.setattr(scheduler, "decode_step", step_spy)
    return seen


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(7, 300, (n,), generator=g).tolist() for n in lengths]


def _collect(stream):
    events = list(stream)
    assert [e.finish_reason is None for e in events] == [True] * (len(events) - 1) + [False]
    tokens = [e.token for e in events if e.token is not None]
    return tokens, "".join(e.text for e in events), events[-1]


def test_greedy_equals_one_at_a_time_with_requests_joining_mid_flight(model, tok, batch_sizes):
    prompts = _prompts([3, 17, 9, 1, 30, 5, 22, 12, 8, 40])
    params = [SamplingParams(temperature=0, max_new_tokens=n)
              for n in (12, 5, 20, 9, 3, 15, 7, 11, 2, 16)]
    with Engine(model, tok, max_batch=4) as engine:
        streams = [engine.submit(GenerationRequest(p, s)) for p, s in zip(prompts[:3], params)]
        events = iter(streams[0])  # kept: dropping a half-read iterator cancels its request
        first = next(events)  # decoding is under way: the rest join a running batch
        streams += [engine.submit(GenerationRequest(p, s))
                    for p, s in zip(prompts[3:], params[3:])]
        results = [_collect(events)] + [_collect(s) for s in streams[1:]]
        stats = engine.stats()
    for (p, s), (tokens, text, last), stream in zip(zip(prompts, params), results, streams):
        expected = list(generate_tokens(model, p, s))
        got = tokens if stream is not streams[0] else [first.token] + tokens
        assert got == expected
        assert last.finish_reason == "length" and last.completion_tokens == s.max_new_tokens
        assert last.prompt_tokens == len(p)
        if stream is not streams[0]:
            assert text == tok.decode(expected, skip_special=True)
    decode_rows = [b for b, t in batch_sizes if t == 1]
    first_step = batch_sizes.index((1, 1))
    assert any(t > 1 for _, t in batch_sizes[first_step:])  # prompts prefilled mid-flight
    assert max(decode_rows) == 4 and max(b for b, _ in batch_sizes) <= 4
    assert stats["generation_tokens"] == sum(s.max_new_tokens for s in params)
    assert stats["finished"]["length"] == 10 and stats["running"] == 0
    assert stats["steps"] < sum(s.max_new_tokens for s in params)  # rows shared steps


def test_seeded_sampling_does_not_depend_on_neighbours(model, tok):
    prompt = _prompts([6], seed=3)[0]
    seeded = SamplingParams(temperature=1.0, top_k=50, top_p=0.9, max_new_tokens=10, seed=7)
    with Engine(model, tok, max_batch=4) as engine:
        alone, _, _ = _collect(engine.submit(GenerationRequest(prompt, seeded)))
        crowd = [engine.submit(GenerationRequest(p, SamplingParams(temperature=t, seed=s,
                                                                   max_new_tokens=10)))
                 for p, t, s in zip(_prompts([4, 11, 2], seed=4), (1.0, 0, 0.7), (1, 2, None))]
        together, _, _ = _collect(engine.submit(GenerationRequest(prompt, seeded)))
        for s in crowd:
            _collect(s)
    assert together == alone == list(generate_tokens(model, prompt, seeded))


def test_stop_string_split_across_tokens_is_never_shown(model, tok):
    prompt = _prompts([5], seed=5)[0]
    params = SamplingParams(temperature=0, max_new_tokens=30)
    free = list(generate_tokens(model, prompt, params))
    pieces = [tok.decode([t], skip_special=True) for t in free]
    full = "".join(pieces)
    j = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and pieces[i + 1])
    stop = pieces[j][1:] + pieces[j + 1][:1]  # starts inside one token, ends in the next
    expected = full[:full.index(stop)]
    with Engine(model, tok) as engine:
        stream = engine.submit(GenerationRequest(prompt, params, stop_strings=("zzzq", stop)))
        shown = ""
        for event in stream:
            shown += event.text
            assert stop not in shown and expected.startswith(shown)
        assert shown == expected and event.finish_reason == "stop"
        # A held-back tail that never becomes a stop string is released at the end.
        tail = full[-1] + "\x01never"
        _, text, last = _collect(engine.submit(GenerationRequest(prompt, params,
                                                                 stop_strings=(tail,))))
    assert text == full and last.finish_reason == "length"


def test_stop_text_holds_back_only_possible_starts():
    stop = StopText(("END", "xy"))
    assert stop.add("abcE") == ("abc", False)  # "E" may start "END"
    assert stop.add("N") == ("", False)
    assert stop.add("x") == ("EN", False)  # "ENx" cannot become "END"; "x" may start "xy"
    assert stop.add("zEND!") == ("xz", True)
    stop = StopText(("END",))
    assert stop.add("cEN") == ("c", False)
    assert stop.finish("") == ("EN", False)  # at the end a partial stop string is just text
    assert StopText(()).add("END") == ("END", False)


def test_stop_id_and_max_tokens(model, tok):
    prompt = _prompts([7], seed=6)[0]
    free = list(generate_tokens(model, prompt, GREEDY))
    stop = free[4]
    cut = free[:free.index(stop) + 1]
    with Engine(model, tok) as engine:
        tokens, text, last = _collect(engine.submit(GenerationRequest(prompt, GREEDY,
                                                                      stop_ids=(stop,))))
        short, _, end = _collect(engine.submit(GenerationRequest(
            prompt, SamplingParams(temperature=0, max_new_tokens=3))))
        # Near the context's end the budget is cut there, as generate_tokens does.
        long_prompt = _prompts([60], seed=7)[0]
        edge, _, edge_end = _collect(engine.submit(GenerationRequest(long_prompt, GREEDY)))
    assert tokens == cut and last.token == stop and last.finish_reason == "stop"
    assert text == tok.decode(cut[:-1], skip_special=True)  # the stop id's text is not shown
    assert short == free[:3] and end.finish_reason == "length" and end.completion_tokens == 3
    assert len(edge) == 4 and edge_end.finish_reason == "length"


def test_cancel_and_abandon_free_the_row(model, tok, monkeypatch):
    long = SamplingParams(temperature=0, max_new_tokens=40)
    prompt = _prompts([4], seed=8)[0]
    cancelled = threading.Event()
    real_step = scheduler.decode_step

    def held_step(*args):  # decoding waits for the cancel, so it cannot finish all 40 first
        cancelled.wait(timeout=30)
        return real_step(*args)

    monkeypatch.setattr(scheduler, "decode_step", held_step)
    with Engine(model, tok, max_batch=1) as engine:
        a = engine.submit(GenerationRequest(prompt, long))
        b = engine.submit(GenerationRequest(prompt, GREEDY))
        events = iter(a)
        next(events)  # the prefill's token; the first decode step waits
        a.cancel()
        cancelled.set()
        rest = list(events)
        assert rest[-1].finish_reason == "abort" and rest[-1].completion_tokens < 40
        assert _collect(b)[2].finish_reason == "length"
        # Leaving the loop early frees the row too, and so does dropping an unread stream.
        c = engine.submit(GenerationRequest(prompt, long))
        for _ in c:
            break
        engine.submit(GenerationRequest(prompt, long))  # dropped at once
        gc.collect()
        d = engine.submit(GenerationRequest(prompt, GREEDY))
        assert _collect(d)[0] == list(generate_tokens(model, prompt, GREEDY))
        assert engine.stats()["finished"]["abort"] == 3


def test_queue_bound_and_oversized_requests(model, tok):
    engine = Engine(model, tok, max_queue=2, max_tokens_in_flight=40)
    streams = [engine.submit(GenerationRequest([5, 6], GREEDY)) for _ in range(2)]
    with pytest.raises(EngineOverloaded, match="2 requests already wait"):
        engine.submit(GenerationRequest([5, 6], GREEDY))
    assert isinstance(EngineOverloaded("x"), LmforgeError)
    streams.pop().cancel()  # a cancelled request gives up its place in the queue
    streams.append(engine.submit(GenerationRequest([5, 6], GREEDY)))
    with pytest.raises(LmforgeError, match="token ids must be in 0..[0-9]+"):
        engine.submit(GenerationRequest([5, model.design.vocab_size], GREEDY))
    with pytest.raises(RequestTooLarge, match="context is 64"):
        engine.submit(GenerationRequest(list(range(7, 71)), GREEDY))
    with pytest.raises(RequestTooLarge, match="need 50 tokens"):
        engine.submit(GenerationRequest(list(range(7, 37)), SamplingParams(max_new_tokens=20)))
    with pytest.raises(LmforgeError, match="empty"):
        engine.submit(GenerationRequest([], GREEDY))
    engine.stop()  # never started: the waiting requests are aborted, not left hanging
    assert [_collect(s)[2].finish_reason for s in streams] == ["abort", "abort"]
    with pytest.raises(LmforgeError, match="stopped"):
        engine.submit(GenerationRequest([5, 6], GREEDY))


def test_token_budget_bounds_the_batch(model, tok, batch_sizes):
    prompts = _prompts([8] * 6, seed=9)
    params = SamplingParams(temperature=0, max_new_tokens=12)  # 20 tokens each
    with Engine(model, tok, max_batch=8, max_tokens_in_flight=45) as engine:
        results = [_collect(s) for s in [engine.submit(GenerationRequest(p, params))
                                         for p in prompts]]
    assert [r[0] for r in results] == [list(generate_tokens(model, p, params)) for p in prompts]
    assert max(b for b, t in batch_sizes if t == 1) == 2  # 2 x 20 <= 45 < 3 x 20


def test_an_error_in_the_model_reaches_the_streams_and_the_loop_goes_on(model, tok,
                                                                       monkeypatch):
    calls = {"n": 0}
    real = model.lm_head.forward

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in the head")
        return real(x)

    monkeypatch.setattr(model.lm_head, "forward", flaky)
    real_step = scheduler.decode_step  # decode steps of a small model skip lm_head.forward

    def flaky_step(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom in the head")
        return real_step(*args)

    monkeypatch.setattr(scheduler, "decode_step", flaky_step)
    prompts = _prompts([5, 9], seed=10)
    with Engine(model, tok) as engine:
        streams = [engine.submit(GenerationRequest(p, GREEDY)) for p in prompts]
        for s in streams:
            with pytest.raises(RuntimeError, match="boom in the head"):
                list(s)
        after = _collect(engine.submit(GenerationRequest(prompts[0], GREEDY)))
        assert engine.stats()["finished"]["error"] == 2
    assert after[0] == list(generate_tokens(model, prompts[0], GREEDY))
    assert not engine._thread.is_alive()


def test_stop_aborts_running_requests(model, tok, monkeypatch):
    engine = Engine(model, tok)
    real_step = scheduler.decode_step

    def held_step(*args):  # decoding waits for stop(), so the request cannot finish first
        deadline = time.monotonic() + 30
        while not engine._stopping and time.monotonic() < deadline:
            time.sleep(0.001)
        return real_step(*args)

    monkeypatch.setattr(scheduler, "decode_step", held_step)
    engine.start()
    stream = engine.submit(GenerationRequest([5, 6, 7], SamplingParams(max_new_tokens=50)))
    events = iter(stream)
    next(events)
    engine.stop()
    assert not engine._thread.is_alive()
    assert list(events)[-1].finish_reason == "abort"


def test_async_iteration_inside_an_event_loop(model, tok):
    prompts = _prompts([3, 14, 8], seed=11)

    async def read(stream):
        return [e.token async for e in stream if e.token is not None]

    async def main(engine):
        # The engine starts only after the readers wait: had waiting blocked the event loop,
        # this coroutine could never get to start it.
        readers = [asyncio.create_task(read(engine.submit(GenerationRequest(p, GREEDY))))
                   for p in prompts]
        for _ in range(3):
            await asyncio.sleep(0)
        assert not any(r.done() for r in readers)
        engine.start()
        got = await asyncio.gather(*readers)
        # Breaking out of `async for` frees the row (max_batch is 1).
        stream = engine.submit(GenerationRequest(prompts[0], SamplingParams(max_new_tokens=50)))
        async for _ in stream:
            break
        return got, await read(engine.submit(GenerationRequest(prompts[1], GREEDY)))

    engine = Engine(model, tok, max_batch=1)
    try:
        got, after = asyncio.run(main(engine))
    finally:
        engine.stop()
    assert got == [list(generate_tokens(model, p, GREEDY)) for p in prompts]
    assert after == got[1]
    assert engine.stats()["finished"] == {"stop": 0, "length": 4, "abort": 1, "error": 0}
