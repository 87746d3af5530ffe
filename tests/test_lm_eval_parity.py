"""lm-evaluation-harness interop: the `lmforge` model class, and score parity.

The parity tests score the same multiple-choice items three ways on one briefly trained
model: lmforge's runner (`lmforge.eval.runner.evaluate`), lm-eval's `simple_evaluate` with
`LmforgeLM` on YAML tasks over the same items, and lm-eval with its own HF backend (`HFLM`)
on the model exported by `lmforge.model.hf.export_hf`. lmforge starts every context with
BOS (our models are trained on BOS-separated documents); HFLM does so only with
`add_bos_token=True` (its default adds none on the exported model), so the HFLM runs here
pass it explicitly and all three condition on identical token sequences.

Tolerances: the same request scored in different batches, paddings or thread counts (or by
another library's kernels) differs in fp32 summation order only, so scores are compared
within a stated tolerance and never with ==. A multiple-choice decision (acc, acc_norm) is
an argmax of such scores: it may differ only on an item whose top two candidates are closer
than twice that tolerance, and the tests allow exactly those.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lmforge.design.spec import ModelDesign  # noqa: E402
from lmforge.engine.generate import generate_tokens  # noqa: E402
from lmforge.engine.sampling import SamplingParams  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.eval.lm_eval_tasks import (  # noqa: E402
    lm_eval_task_name,
    make_lm,
    run_lm_eval,
    write_mc_task,
    write_task_yamls,
)
from lmforge.eval.runner import EvalSettings, evaluate  # noqa: E402
from lmforge.eval.scorer import LoglikelihoodScorer, encode_pair  # noqa: E402
from lmforge.eval.suites import base_suite  # noqa: E402
from lmforge.eval.tasks import MCItem  # noqa: E402
from lmforge.model.hf import export_hf  # noqa: E402
from lmforge.model.init import initialize  # noqa: E402
from lmforge.model.io import save_model_dir  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402
from lmforge.registry import Workspace  # noqa: E402
from lmforge.tokenizer import Tokenizer, train_tokenizer  # noqa: E402

DESIGN = ModelDesign(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, vocab_size=1024,
                     context_length=512, name="parity")
# lmforge's scorer against itself in another batch composition: fp32 rounding, ~1e-7 per
# log-prob (6e-7 measured on a sum of ~9 tokens with 2 threads against 1; 5e-6 on HellaSwag
# endings of -100 and below), so 1e-5 plus 1e-6 of the value.
SAME_ABS, SAME_REL = 1e-5, 1e-6
# lm-eval's HF backend: the same fp32 math through transformers' kernels, about 1e-4 on a
# short continuation and growing with its length (PIQA's run to ~100 tokens), hence relative.
HF_ABS, HF_REL = 1e-4, 1e-6
_BUILT: dict[str, object] = {}  # the trained model, built once for the whole file


class Req:
    """The part of lm-eval's `Instance` a model reads: `.args`."""

    def __init__(self, *args):
        self.args = args


def _stories(shared_data: Path) -> list[str]:
    text = (shared_data / "tinystories" / "tinystories_v1_train_head_part00.txt").read_text(
        encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _train(tok: Tokenizer, docs: list[str], steps: int = 40) -> Transformer:
    """A few dozen AdamW steps on BOS-separated stories: far from uniform, in seconds."""
    ids = []
    for enc in tok.encode_batch(docs):
        ids += [tok.bos_id, *enc]
    data = torch.tensor(ids)
    model = initialize(Transformer(DESIGN), "gpt2", seed=0).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 129, (8,), generator=g)
        batch = torch.stack([data[s:s + 129] for s in starts])
        model(batch[:, :-1], targets=batch[:, 1:].contiguous()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture
def built(shared_data: Path, tmp_path_factory) -> dict:
    """A trained model registered in a workspace and exported to an HF folder."""
    if not _BUILT:
        root = tmp_path_factory.mktemp("lm_eval_parity")
        docs = _stories(shared_data)
        tok = train_tokenizer(docs, DESIGN.vocab_size, show_progress=False)
        model = _train(tok, docs)
        ws = Workspace.open(root / "ws")
        with ws.staging() as d:
            save_model_dir(model, d, tok, "# parity test model\n")
            art = ws.register(d, kind="model", stage="test", settings={"steps": 40},
                              state="pretrained", name="parity")
        hf_dir = root / "hf"
        export_hf(art, hf_dir)
        ws.close()
        _BUILT.update(model=model, tok=tok, art_id=art.id, ws=root / "ws", hf=hf_dir,
                      root=root, held_out=docs[-20:])
    return _BUILT


def _mc_tasks(shared_data: Path, names: tuple[str, ...], n: int):
    tasks = {t.name: t for t in base_suite(shared_data, limit=n, include_docstrings=False)}
    return [tasks[name] for name in names]


# ---- the model class ------------------------------------------------------------------

def test_importing_lmforge_does_not_import_lm_eval():
    code = ("import sys, lmforge, lmforge.eval, lmforge.eval.runner, lmforge.eval.suites; "
            "sys.exit(1 if 'lm_eval' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_lmforge_is_registered_beside_lm_evals_own_models():
    from lm_eval.api.registry import get_model

    from lmforge.eval.lm_eval_adapter import LmforgeLM

    assert get_model("lmforge") is LmforgeLM
    pytest.importorskip("accelerate")  # lm-eval's HF backend needs it (lm_eval[hf])
    # Registering ours must not hide lm-eval's built-in models (its lazy table loads first).
    assert get_model("hf").__name__ == "HFLM"


def test_the_model_is_trained_not_uniform(built):
    model, tok = built["model"], built["tok"]
    ids = torch.tensor([[tok.bos_id, *tok.encode(" ".join(built["held_out"]))[:256]]])
    loss = model(ids[:, :-1], targets=ids[:, 1:]).item()
    assert loss < math.log(DESIGN.vocab_size) - 1.5  # well below a uniform guess (6.93)


def _close(got, want):
    """Two lists of (loglikelihood, greedy) within SAME_ABS/SAME_REL; greedy flags equal (an
    argmax over the vocabulary flips only where two logits tie within ~1e-6; these
    requests' do not)."""
    assert len(got) == len(want)
    for (a, ga), (b, gb) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=SAME_REL, abs=SAME_ABS) and ga == gb


@pytest.mark.parametrize("batch_size", [1, 4])
def test_loglikelihood_is_lmforges_own_scorer(built, batch_size):
    from lmforge.eval.lm_eval_adapter import LmforgeLM

    model, tok = built["model"], built["tok"]
    lm = LmforgeLM(model=model, tokenizer=tok, batch_size=batch_size)
    pairs = [("Once upon a time", " there was a girl."), ("The dog ran ", "to the park."),
             ("", "Lily smiled."), ("Tom said", " hi")]
    got = lm.loglikelihood([Req(c, x) for c, x in pairs], disable_tqdm=True)
    encoded = [encode_pair(tok, c, x) for c, x in pairs]
    # The adapter's numbers are the scorer's, whatever either one's batch size: equal up to
    # fp32 summation order (SAME_ABS, SAME_REL), not bit for bit.
    for size in (1, 2, 32):
        _close(got, LoglikelihoodScorer(model, size).loglikelihood(encoded))
    # Independent check of the first pair: summed log-probs from full logits.
    ctx, cont = encode_pair(tok, *pairs[0])
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = model(ids[:, :-1]).log_softmax(-1)[0]
    naive = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
    assert got[0][0] == pytest.approx(naive, abs=1e-4)  # full logits: other kernels again
    assert all(isinstance(g, bool) for _, g in got)


def test_loglikelihood_rolling_scores_the_whole_text_after_bos(built):
    from lmforge.eval.lm_eval_adapter import LmforgeLM

    model, tok = built["model"], built["tok"]
    lm = LmforgeLM(model=model, tokenizer=tok)
    short = built["held_out"][0]
    long = " ".join(built["held_out"])  # longer than the 512-token context: several windows
    ids = [tok.bos_id, *tok.encode(short)]
    assert len(ids) < DESIGN.context_length
    with torch.no_grad():
        logp = model(torch.tensor([ids[:-1]])).log_softmax(-1)[0]
    naive = sum(logp[i, t].item() for i, t in enumerate(ids[1:]))
    got = lm.loglikelihood_rolling([Req(short), Req(long)], disable_tqdm=True)
    assert got[0] == pytest.approx(naive, abs=1e-3)
    assert len(tok.encode(long)) > DESIGN.context_length
    # Several windows of up to 512 tokens each: fp32 rounding grows with the token count.
    assert got[1] == pytest.approx(
        LoglikelihoodScorer(model, batch_size=3).rolling_loglikelihood([tok.encode(long)])[0],
        rel=1e-6, abs=1e-3)
    assert got[1] < got[0] < 0


def test_generate_until_is_greedy_and_stops_where_lm_eval_expects(built):
    from lmforge.eval.lm_eval_adapter import LmforgeLM

    model, tok = built["model"], built["tok"]
    lm = LmforgeLM(model=model, tokenizer=tok)
    prompt = "Once upon a time, there was a little"
    greedy = list(generate_tokens(model, [tok.bos_id, *tok.encode(prompt)],
                                  SamplingParams(temperature=0, max_new_tokens=40),
                                  stop_ids=(tok.bos_id, tok.eos_id)))
    full = tok.decode(greedy, skip_special=True)
    stop = full[len(full) // 2:len(full) // 2 + 3]  # a string that occurs mid-way
    assert stop and stop in full
    out = lm.generate_until([
        Req(prompt, {"until": [stop], "max_gen_toks": 40}),
        Req(prompt, {"until": "\u2603never\u2603", "max_gen_toks": 5}),
        Req(prompt, {"until": [stop], "max_gen_toks": 40, "do_sample": False,
                     "temperature": 0.0}),
    ])
    assert out[0] == full[:full.index(stop)]
    assert out[1] == tok.decode(greedy[:5], skip_special=True)
    assert out[2] == out[0]


def test_loads_from_a_workspace_artifact_and_an_exported_folder(built):
    from lmforge.eval.lm_eval_adapter import LmforgeLM

    pair = [Req("Lily had a red ball.", " She liked it.")]
    want = LmforgeLM(model=built["model"], tokenizer=built["tok"]).loglikelihood(pair, True)
    by_ref = LmforgeLM(pretrained=built["art_id"], workspace=str(built["ws"]))
    by_dir = LmforgeLM(pretrained=str(built["hf"]), batch_size="auto")
    # The same weights (read back from files) and the same request: equal up to fp32
    # summation order, which a reloaded tensor's memory layout may change.
    _close(by_ref.loglikelihood(pair, True), want)
    _close(by_dir.loglikelihood(pair, True), want)


def test_user_mistakes_are_clear_errors(built, shared_data, tmp_path):
    from lmforge.eval.lm_eval_adapter import LmforgeLM

    with pytest.raises(LmforgeError, match="needs a model"):
        LmforgeLM()
    with pytest.raises(LmforgeError, match="unknown model argument"):
        LmforgeLM(pretrained=str(built["hf"]), temperature=0.5)
    with pytest.raises(LmforgeError, match="not a number"):
        LmforgeLM(pretrained=str(built["hf"]), batch_size="big")
    with pytest.raises(LmforgeError, match="needs a model folder"):
        make_lm(tmp_path / "nothing", backend="hf")
    with pytest.raises(LmforgeError, match="unknown lm-eval backend"):
        make_lm(str(built["hf"]), backend="vllm")
    with pytest.raises(LmforgeError, match="no items"):
        write_mc_task("empty", [], tmp_path)
    with pytest.raises(LmforgeError, match="some items have a suffix"):
        write_mc_task("mixed", [MCItem("a", ["b", "c"], 0), MCItem("a", ["b", "c"], 1, 1, "d")],
                      tmp_path)
    suite = {t.name: t for t in base_suite(shared_data, limit=3, include_docstrings=False)}
    with pytest.raises(LmforgeError, match="only multiple_choice"):
        write_task_yamls([suite["wikitext"]], tmp_path)
    with pytest.raises(LmforgeError, match="5-shot"):
        write_task_yamls([dataclasses.replace(suite["piqa"], num_fewshot=5)], tmp_path)
    write_mc_task("one", [MCItem("Is it?", ["yes", "no"], 0)], tmp_path)
    with pytest.raises(LmforgeError, match="no lm-eval task named lmforge_other"):
        run_lm_eval(str(built["hf"]), tmp_path, ["other"])


def test_hflm_needs_add_bos_token_for_lmforges_numbers(built):
    """The promise the README makes: HFLM on the exported model gives lmforge's scores with
    `add_bos_token=True`; with lm-eval's default it scores the text without BOS and
    differs."""
    pytest.importorskip("accelerate")  # lm-eval's HF backend needs it (lm_eval[hf])
    from lm_eval.models.huggingface import HFLM

    from lmforge.eval.lm_eval_adapter import LmforgeLM

    reqs = [Req("Once upon a time", " there was a girl."), Req("The dog ran", " to the park.")]
    ours = LmforgeLM(model=built["model"], tokenizer=built["tok"]).loglikelihood(reqs, True)
    hf = str(built["hf"])
    with_bos = HFLM(pretrained=hf, device="cpu", dtype="float32", add_bos_token=True)
    default = HFLM(pretrained=hf, device="cpu", dtype="float32")
    got = with_bos.loglikelihood(reqs, disable_tqdm=True)
    plain = default.loglikelihood(reqs, disable_tqdm=True)
    for (a, _), (b, _), (c, _) in zip(ours, got, plain, strict=True):
        assert b == pytest.approx(a, rel=HF_REL, abs=HF_ABS)  # HF's kernels, fp32
        assert abs(c - a) > 100 * HF_ABS  # another token sequence, not rounding


# ---- parity: lmforge's runner, lm-eval + LmforgeLM, lm-eval + HFLM ------------------------

def _near_tie(lls: list[float], lengths: list[float], tol: float) -> bool:
    """Whether an error of `tol` per log-likelihood could change the item's argmax of totals
    (acc) or of totals per character (acc_norm)."""
    def tied(values: list[float], err: list[float]) -> bool:
        best = max(range(len(values)), key=values.__getitem__)
        return any(j != best and values[best] - values[j] <= err[best] + err[j]
                   for j in range(len(values)))
    return (tied(lls, [tol] * len(lls))
            or tied([x / n for x, n in zip(lls, lengths, strict=True)],
                    [tol / n for n in lengths]))


def _parity(built: dict, shared_data: Path, names: tuple[str, ...], n: int) -> dict:
    pytest.importorskip("accelerate")  # lm-eval's HF backend needs it (lm_eval[hf])
    from lm_eval.models.huggingface import HFLM

    model, tok = built["model"], built["tok"]
    tasks = _mc_tasks(shared_data, names, n)
    ours = evaluate(model, tok, tasks, EvalSettings(batch_size=32, add_bos=True),
                    progress=False)
    yaml_dir = built["root"] / f"yamls_{n}_{'_'.join(names)}"
    lm_names = write_task_yamls(tasks, yaml_dir)
    via_adapter = run_lm_eval((model, tok), yaml_dir, lm_names, batch_size=32)
    # add_bos_token=True, explicitly: lm-eval's HF backend adds no BOS by default, while
    # lmforge starts every context with BOS (as the model saw each document in training).
    # Without it HFLM scores other token sequences and the numbers differ (see
    # test_hflm_needs_add_bos_token_for_lmforges_numbers).
    hflm = HFLM(pretrained=str(built["hf"]), device="cpu", dtype="float32", batch_size=32,
                add_bos_token=True)
    via_hf = run_lm_eval(hflm, yaml_dir, lm_names, batch_size=32, backend="hf")
    figures = {}
    for task, name in zip(tasks, names, strict=True):
        mine = ours["tasks"][name]
        a = via_adapter["tasks"][lm_eval_task_name(name)]
        h = via_hf["tasks"][lm_eval_task_name(name)]
        assert mine["n"] == a["n"] == h["n"] == n
        assert mine["skipped"]["n"] == 0  # every item fits the 512-token context
        lengths = {item.index: [float(len(item.context + c if item.suffix is not None else c))
                                for c in item.choices] for item in task.load_items()}
        worst_adapter = worst_hf = worst_hf_rel = 0.0
        ties = {"adapter": 0, "hf": 0}  # items whose decision may flip within tolerance
        for x, y, z in zip(mine["items"], a["items"], h["items"], strict=True):
            assert x["index"] == y["index"] == z["index"] and x["gold"] == y["gold"] == z["gold"]
            lx_all = x["loglikelihoods"]
            largest = max(abs(v) for v in lx_all)
            for other, tol, key in ((y, SAME_ABS + SAME_REL * largest, "adapter"),
                                    (z, HF_ABS + HF_REL * largest, "hf")):
                if other["scores"] != x["scores"]:
                    assert _near_tie(lx_all, lengths[x["index"]], tol), (name, key, x["index"])
                    ties[key] += 1
            for lx, ly, lz in zip(lx_all, y["loglikelihoods"], z["loglikelihoods"],
                                  strict=True):
                worst_adapter = max(worst_adapter, abs(lx - ly))
                assert ly == pytest.approx(lx, rel=SAME_REL, abs=SAME_ABS), (name, x["index"])
                worst_hf = max(worst_hf, abs(lx - lz))
                worst_hf_rel = max(worst_hf_rel, abs(lx - lz) / abs(lx))
                assert lz == pytest.approx(lx, rel=HF_REL, abs=HF_ABS), (name, x["index"])
        # (The adapter runs lmforge's own scorer in lm-eval's batches, and the runner rounds
        # to 6 decimals: the same numbers up to fp32 summation order, checked above.)
        # Aggregates: equal, except for the items that were near ties (none so far).
        for metric in ("acc", "acc_norm"):
            v = mine["metrics"][metric]["value"]
            for other, key in ((a, "adapter"), (h, "hf")):
                assert other["metrics"][metric]["value"] == pytest.approx(
                    v, abs=ties[key] / n + 1e-9), (name, metric, key)
        lls = [ll for item in mine["items"] for ll in item["loglikelihoods"]]
        assert len(set(lls)) > len(lls) // 2  # the model tells the choices apart
        figures[name] = {"n": n, "acc": mine["metrics"]["acc"]["value"],
                         "acc_norm": mine["metrics"]["acc_norm"]["value"],
                         "max_ll_diff_adapter": worst_adapter, "max_ll_diff_hf": worst_hf,
                         "max_ll_rel_diff_hf": worst_hf_rel, "near_ties": ties}
    print("\nparity:", figures)
    return figures


def test_scores_match_lm_eval_on_hellaswag_and_arc_easy(built, shared_data):
    _parity(built, shared_data, ("hellaswag", "arc_easy"), 100)


@pytest.mark.slow
def test_scores_match_lm_eval_on_four_tasks_at_200_items(built, shared_data):
    _parity(built, shared_data, ("hellaswag", "arc_easy", "piqa", "winogrande"), 200)


@pytest.mark.slow
def test_lm_eval_command_line_runs_the_lmforge_model(built, shared_data, tmp_path):
    tasks = _mc_tasks(shared_data, ("arc_easy",), 4)
    write_task_yamls(tasks, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "lmforge.eval.lm_eval_adapter", "--model", "lmforge",
         "--model_args", f"pretrained={built['hf']}", "--batch_size", "8",
         "--include_path", str(tmp_path), "--tasks", "lmforge_arc_easy", "--device", "cpu"],
        capture_output=True, text=True, env={**__import__("os").environ,
                                              "HF_DATASETS_OFFLINE": "1",
                                              "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lmforge_arc_easy" in proc.stdout and "acc_norm" in proc.stdout
