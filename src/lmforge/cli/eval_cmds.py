"""`lmforge eval` (stages 5 and 7), `lmforge eval compare`, and `lmforge review` (human review)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from lmforge.cli.app import app, console, err_console, workspace
from lmforge.errors import LmforgeError

_EVAL_HELP = """Stages 5 and 7: evaluate a model (base or chat) and register the report.

\b
  lmforge eval MODEL --suite base          # HellaSwag, ARC, PIQA, WinoGrande, LAMBADA,
                                           # WikiText bpb, held-out docstrings
  lmforge eval MODEL --suite pydocs        # held-out docstrings only (no data files needed)
  lmforge eval MODEL --suite chat          # IFEval-style instructions + edge cases
  lmforge eval MODEL --tasks hellaswag,arc_easy   # built-in tasks by name, as in lm-eval
  lmforge eval MODEL --tasks my_tasks.toml # your own multiple-choice/generation/perplexity tasks
  lmforge eval MODEL --suite base --gate 'hellaswag/acc_norm >= 0.3'
  lmforge eval compare MODEL_A MODEL_B     # paired deltas with 95% intervals (--png chart)
  lmforge eval compare SFT DPO RLHF --judge RM   # win rates against the first model, judged
                                           # by a reward model on held-out prompts

Every metric has a standard error. MODEL is a model id, alias, or model folder. A report \
that passes its gates lets the model be approved (`lmforge registry promote`). Benchmark \
files come from --data-root, $LMFORGE_EVAL_DATA, or the shared/data folder beside a checkout; \
the base suite runs the benchmarks that folder holds and names the others. An item longer \
than the model's context is skipped and counted in the report. With --json, stdout is the \
report alone.
"""


@app.command("eval", rich_help_panel="Lifecycle stages", help=_EVAL_HELP)
def eval_cmd(
    targets: list[str] = typer.Argument(..., metavar="MODEL | compare A B",
                                        help="A model to evaluate, or `compare` and two "
                                             "models/reports."),
    suite: str = typer.Option(None, "--suite", help="base, pydocs or chat."),
    tasks: str = typer.Option(None, "--tasks", help="Built-in task names, comma-separated "
                                                    "(hellaswag,arc_easy,arc_challenge,piqa,"
                                                    "winogrande,lambada,wikitext,docstrings_mc,"
                                                    "docstrings_bpb), or a task file FILE.toml "
                                                    "of \\[tasks.NAME] tables (README, "
                                                    "Evaluation)."),
    gate: list[str] = typer.Option([], "--gate", help="Repeatable. 'TASK/METRIC OP NUMBER', "
                                                      "e.g. 'wikitext/bpb <= 2.5'."),
    limit: int = typer.Option(None, help="Items per task (default: 500 for benchmarks)."),
    min_items: int = typer.Option(None, "--min-items", help="Gated tasks measured on fewer "
                                  "items fail the gates (recorded; approval checks it again)."),
    batch_size: int = typer.Option(32, help="Requests scored per forward pass."),
    seed: int = typer.Option(0, help="Few-shot and sampling seed."),
    data_root: str = typer.Option(None, help="Folder of benchmark files (hellaswag/, arc/ ...)."),
    device: str = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or "
                                            "mps."),
    max_new_tokens: int = typer.Option(64, help="Generation length for generation tasks."),
    png: Path = typer.Option(None, help="compare: write a chart of the deltas here."),
    force: bool = typer.Option(False, help="compare: compare reports whose settings differ."),
    judge: str = typer.Option(None, help="compare: a reward model that judges the models' "
                                         "answers: win rates against the first model."),
    prompts: list[str] = typer.Option([], "--prompts", help="compare --judge: prompt files "
                                      "\\[default: pydocs-chat:heldout]; --limit of them (500)."),
    temperature: float = typer.Option(0.0, help="compare --judge: 0 answers greedily."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    ws = workspace()
    if targets[0] != "compare" and (judge is not None or prompts):
        raise LmforgeError("--judge and --prompts are for `eval compare`",
                           hint="lmforge eval compare SFT TUNED --judge RM")
    if targets[0] == "compare" and judge is not None:
        _judged(ws, targets[1:], judge, prompts, limit, max_new_tokens, temperature, seed,
                device, as_json)
        return
    if targets[0] == "compare":
        if len(targets) != 3:
            raise LmforgeError("eval compare takes two models or reports",
                               hint="lmforge eval compare MODEL_A MODEL_B")
        _compare(ws, targets[1], targets[2], suite, png, force, as_json)
        return
    if len(targets) != 1:
        raise LmforgeError(f"eval takes one model, got {len(targets)}: {' '.join(targets)}",
                           hint="to compare two, use `lmforge eval compare A B`")
    from lmforge.eval.render_report import render_report
    from lmforge.eval.stage import EvalStageSettings
    from lmforge.eval.stage import run as run_eval

    out = run_eval(ws, EvalStageSettings(targets[0], suite, tasks, tuple(gate), data_root, limit,
                                         batch_size, seed, device, max_new_tokens,
                                         min_items))
    art, report = out.artifact, out.details
    passed = report["gates"]["passed"]
    verdict = "" if passed is None else (" — gates [green]passed[/]" if passed
                                         else " — gates [red]FAILED[/]")
    if as_json:
        # stdout is one JSON document (the report, with its artifact id) for `| jq` and
        # json.loads; the human line goes to stderr.
        sys.stdout.write(json.dumps({**report, "artifact": art.id}, indent=2) + "\n")
        err_console.print(f"eval report [bold]{art.id}[/]{verdict}")
        return
    render_report(report, console)
    console.print(f"eval report [bold]{art.id}[/]{verdict}")


def _compare(ws, a: str, b: str, suite: str | None, png: Path | None, force: bool,
             as_json: bool) -> None:
    from lmforge.eval.compare import compare_reports
    from lmforge.eval.render_report import render_comparison, save_comparison_png
    from lmforge.eval.stage import load_report

    art_a, rep_a = load_report(ws, a, suite)
    art_b, rep_b = load_report(ws, b, suite)
    cmp = compare_reports(rep_a, rep_b, force=force)
    if as_json:
        sys.stdout.write(json.dumps(cmp, indent=2) + "\n")
    else:
        console.print(f"A = {art_a.id} ({rep_a.get('model')}), B = {art_b.id} "
                      f"({rep_b.get('model')})", highlight=False)
        render_comparison(cmp, console)
    if png:  # with --json, stdout stays the JSON alone
        (err_console if as_json else console).print(f"chart: {save_comparison_png(cmp, png)}")


def _judged(ws, models: list[str], judge: str, prompts: list[str], limit: int | None,
            max_new_tokens: int, temperature: float, seed: int, device: str,
            as_json: bool) -> None:
    from lmforge.eval.judge_stage import JudgeSettings
    from lmforge.eval.judge_stage import run as run_judged

    out = run_judged(ws, JudgeSettings(tuple(models), judge, tuple(prompts), limit=limit or 500,
                                       max_new_tokens=max_new_tokens, temperature=temperature,
                                       seed=seed, device=device))
    if as_json:
        sys.stdout.write(json.dumps({**out.details, "report": out.artifact.id}, indent=2)
                         + "\n")
    else:
        console.print(out.show)
        console.print(f"report {out.artifact.id} (kind judge-report)", highlight=False)


review_app = typer.Typer(help="Human review of sampled outputs: export a blinded page, import "
                              "ratings back into a report.", no_args_is_help=True)
app.add_typer(review_app, name="review", rich_help_panel="Lifecycle stages")


@review_app.command("export", help="Write a blinded, shuffled sample of the reports' outputs "
                                   "(review.jsonl, review.html) and a private key.json.")
def review_export(
    reports: list[str] = typer.Argument(..., help="Eval reports or models (their newest "
                                                  "report)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the review files to."),
    n: int = typer.Option(50, help="Prompts to sample."),
    reviewers: int = typer.Option(1, help="Reviewers (each gets their own order)."),
    seed: int = typer.Option(0),
) -> None:
    from lmforge.eval.review import export_review
    from lmforge.eval.stage import load_report

    ws = workspace()
    loaded = [load_report(ws, r) for r in reports]
    summary = export_review([rep for _, rep in loaded], out, n=n, seed=seed, reviewers=reviewers)
    (out / "reports.json").write_text(json.dumps([art.id for art, _ in loaded]) + "\n")
    console.print(f"{summary['items']} items ({summary['prompts']} prompts) for review in {out}")
    console.print(f"send reviewers: {', '.join(Path(p).name for p in summary['files']['html'])}"
                  f" — keep key.json to yourself")


@review_app.command("import", help="Read ratings, un-blind them, and register each report "
                                   "again with a human_review section (agreement included).")
def review_import(
    folder: Path = typer.Argument(..., help="The folder `review export` wrote."),
    ratings: list[Path] = typer.Argument(..., help="Rating files (JSONL) from reviewers."),
) -> None:
    from lmforge.eval.render_report import render_report
    from lmforge.eval.review import import_reviews
    from lmforge.eval.stage import REPORT_KIND, register_report

    ws = workspace()
    ids_file = folder / "reports.json"
    if not ids_file.is_file():
        raise LmforgeError(f"{folder} has no reports.json",
                           hint="pass the folder that `lmforge review export` wrote")
    section = import_reviews(folder, ratings)
    for report_id in json.loads(ids_file.read_text()):
        art = ws.resolve(report_id, kind=REPORT_KIND)
        report = json.loads(art.file("report.json").read_text())
        report["human_review"] = section
        model_id = art.parents.get("model")
        model_art = ws.resolve(model_id, kind="model") if isinstance(model_id, str) else None
        new = register_report(ws, report, model_art, extra_parents={"report": art.id})
        render_report(report, console)
        console.print(f"eval report [bold]{new.id}[/] (report {art.id} + human review)")
