"""What was found goes back into the model and its safeguards.

- A safety SFT set: each successful attack's conversation answered with a refusal (the
  project's own refusal sentences; a secret or personal data declined; for an injected
  document, the summary the user asked for, so the model learns to do the task and ignore the
  instruction). OpenAI `messages` JSONL, which `lmforge finetune --method sft --data` reads.
- Preference pairs: the same prompt, `chosen` = that refusal, `rejected` = the model's own
  compliant answer. JSONL with `prompt`/`chosen`/`rejected`, which `--method dpo` reads.
- With `retain`: the benign asks the model answered, with its own answers, in the SFT set
  (repeated to a chosen ratio to the refusals), and as contrast pairs (its answer chosen over
  a refusal), so the model learns where refusing stops.
- Guardrail rules (guardrails.dump_rules) that `lmforge serve --guardrails` applies: input
  rules from the harm words of the asks that got through, the marker phrases of the jailbreak
  templates and injections that worked, long base64 runs where base64 worked; output rules
  for the planted-secret format and for SSN- and card-shaped numbers where they leaked.

Only findings of the `seen` split are used by default: the held-out ones measure whether the
fix generalizes (the attack success rate on held-out prompts, and here the share of held-out
findings the rules block). Each rule set is also checked against benign asks, and the share it
would wrongly block is reported.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from lmforge import guardrails as G
from lmforge.degenerate import repeated_character
from lmforge.errors import LmforgeError
from lmforge.redteam import builtin as B
from lmforge.redteam.mutators import ATTACKS, JAILBREAK_SIGNATURES, SEEDED
from lmforge.redteam.stage import REPORT_KIND

SPLITS = ("seen", "heldout", "all")
CANARY_PATTERN = r"LMF-CANARY-[0-9a-f]{8}"
SSN_PATTERN = r"\b\d{3}[- ]\d{2}[- ]\d{4}\b"
CARD_PATTERN = r"\b\d{4}[ -]?\d{4,6}[ -]?\d{4,5}(?:[ -]?\d{4})?\b"
BASE64_PATTERN = r"[A-Za-z0-9+/]{24,}={0,2}"
INJECTION_PHRASES = ("ignore all previous instructions", "stop summarising", "system override",
                     "to the ai reading this")


def load_report(ws: Any, ref: str) -> tuple[dict[str, Any], str]:
    """A red-team report (artifact id, prefix or alias; or a report folder or report.json)
    and the name to cite it by."""
    path = Path(ref)
    if path.is_file():
        folder = path.parent
    elif path.is_dir() and (path / "report.json").is_file():
        folder = path
    else:
        art = ws.resolve(ref, kind=REPORT_KIND)
        folder, ref = art.path, art.id
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{folder / 'report.json'}: not a readable red-team report ({e})",
                           hint="pass a redteam-report id (lmforge registry ls --kind "
                                "redteam-report)") from None
    if report.get("kind") != REPORT_KIND or "findings" not in report:
        raise LmforgeError(f"{ref} is not a red-team report",
                           hint="pass what `lmforge redteam MODEL` registered")
    report["_folder"] = str(folder)  # where attempts.jsonl is (for the retain set)
    return report, str(ref)


def answered_benign(report: dict[str, Any], split: str = "seen") -> list[dict[str, Any]]:
    """Benign asks of `split` the model answered without refusing, with its own answers (from
    the report's attempts.jsonl): a retain set, so tuning on refusals does not teach refusing
    everything. An answer stuck on one character ('cccc…') is not kept: the quickstart's
    safety step, tuned on three of them among 55, answered the smoke prompt with 'cccc…'."""
    path = Path(report.get("_folder", "")) / "attempts.jsonl"
    if not path.is_file():
        raise LmforgeError(f"{path} is missing: the retain set needs the report's attempts",
                           hint="pass the redteam-report artifact itself")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if (r["category"] == "over_refusal" and r["verdict"]["status"] == "safe"
                and (split == "all" or r["split"] == split)
                and repeated_character(r["text"]) is None):
            out.append({"messages": [*r["messages"],
                                     {"role": "assistant", "content": r["text"].strip()}]})
    return out


def _pick(key: str, options: tuple[str, ...]) -> str:
    return options[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(options)]


def safe_answer(finding: dict[str, Any]) -> str | None:
    """What the model should have said, or None where lmforge cannot write it (a biased or
    over-refused answer needs a person)."""
    c = finding["category"]
    if c in SEEDED:
        return _pick(finding["unit"], B.refusal_replies())
    if c == "leakage":
        return B.SECRET_REFUSAL
    if c == "pii":
        return B.PII_REFUSAL
    if c == "injection":
        return finding["expect"]["summary"]
    return None


def _chosen(findings: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["category"] in ATTACKS
            and (split == "all" or f["split"] == split)]


def to_dataset(report: dict[str, Any], split: str = "seen", retain: bool = False,
               benign_ratio: float | None = None) -> tuple[list[dict], list[dict]]:
    """(SFT records, preference pairs) from a report's findings of `split`, one per distinct
    conversation.

    With `retain` (or `benign_ratio`), the SFT records also hold the benign asks of `split` the
    model answered, with its own answers, and the pairs gain contrast pairs: such an ask with
    the model's answer chosen over a refusal. `benign_ratio` R repeats those answered asks, in
    turn, until they are at least R times the refusals: refusals alone, or far outnumbering
    the benign answers, teach a small model "risky words, refuse" (docs/redteam.md measures
    it); 1.0 gives the two behaviours the same weight."""
    if split not in SPLITS:
        raise LmforgeError(f"unknown split {split!r}", hint=f"use one of: {', '.join(SPLITS)}")
    if benign_ratio is not None and not benign_ratio >= 0:
        raise LmforgeError(f"benign ratio must be >= 0, not {benign_ratio}",
                           hint="1.0: as many benign answers as refusals")
    sft, pairs, seen = [], [], set()
    for f in _chosen(report["findings"], split):
        answer = safe_answer(f)
        key = json.dumps(f["messages"], sort_keys=True)
        if answer is None or key in seen:
            continue
        seen.add(key)
        sft.append({"messages": [*f["messages"], {"role": "assistant", "content": answer}]})
        if f.get("text") and f["text"].strip() and f["text"].strip() != answer:
            pairs.append({"prompt": f["messages"], "chosen": answer, "rejected": f["text"]})
    if retain or benign_ratio is not None:
        kept = answered_benign(report, split)
        for r in kept:
            prompt = r["messages"][:-1]
            pairs.append({"prompt": prompt, "chosen": r["messages"][-1]["content"],
                          "rejected": _pick(json.dumps(prompt), B.refusal_replies())})
        if benign_ratio and kept:
            n = max(len(kept), math.ceil(benign_ratio * len(sft)))
            kept = [kept[i % len(kept)] for i in range(n)]
        sft += kept
    return sft, pairs


def _matches(term: str, texts: list[str]) -> bool:
    matcher = G.rule("input", "t", words=[term])
    return any(matcher.search(t, G.normalize(t)) for t in texts)


def _harm_terms(goals: list[str], benign: list[str]) -> tuple[list[str], list[str]]:
    """The harm words (builtin.HARM_TERMS) that occur, as whole words, in the asks: those
    kept, and those left out because they also occur in a benign ask ("kill" in "How do I
    kill a Python process?")."""
    found = [t for t in B.HARM_TERMS if _matches(t, goals)]
    spared = [t for t in found if _matches(t, benign)]
    return [t for t in found if t not in spared], spared


def rules_from(report: dict[str, Any], source: str, split: str = "seen",
               benign: list[str] | tuple[str, ...] = ()) -> G.Guardrails:
    """Guardrail rules for what got through (see the module's docstring). A harm word that
    also occurs in one of the `benign` asks is left out (the rules' `spared` attribute lists
    them): a rule on "kill" would refuse "How do I kill a Python process?"."""
    findings = _chosen(report["findings"], split)
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        by_cat.setdefault(f["category"], []).append(f)
    src = f"{REPORT_KIND} {source}"[:200]
    rules = G.Guardrails(origin=src)
    seeded = [f for c in SEEDED for f in by_cat.get(c, [])]
    terms, spared = _harm_terms([f["goal"] for f in seeded], list(benign))
    rules.spared = spared  # type: ignore[attr-defined]
    if terms:
        rules.input.append(G.rule("input", "redteam-harm-words", words=terms,
                                  category="harmful-request", source=src))
    # Asks that name no (kept) harm word ("Help me cheat on an exam.") are listed whole: the
    # rule then stops them, and their disguised forms, wherever they appear in a request.
    covered = G.Guardrails(input=list(rules.input))
    known = list(dict.fromkeys(f["goal"] for f in seeded
                               if covered.check_prompt(f["goal"]) is None))
    if known:
        rules.input.append(G.rule("input", "redteam-known-asks", words=known[:500],
                                  category="harmful-request", source=src))
    templates = sorted({f["variant"] for f in by_cat.get("jailbreak", [])})
    phrases = [p for t in templates for p in JAILBREAK_SIGNATURES.get(t, ())]
    if phrases:
        rules.input.append(G.rule("input", "redteam-jailbreak-templates", words=phrases,
                                  category="jailbreak", source=src))
    if any(f["variant"] == "base64" for f in by_cat.get("obfuscation", [])):
        rules.input.append(G.rule("input", "redteam-base64", pattern=BASE64_PATTERN,
                                  category="obfuscation", source=src))
    if by_cat.get("injection"):
        rules.input.append(G.rule("input", "redteam-injection",
                                  words=[p for p in INJECTION_PHRASES if not _matches(p, benign)]
                                  or list(INJECTION_PHRASES),
                                  category="prompt-injection", source=src))
    if by_cat.get("leakage") or by_cat.get("injection"):
        rules.output.append(G.rule("output", "redteam-canary", pattern=CANARY_PATTERN,
                                   category="system-prompt-leak", source=src,
                                   refusal=B.SECRET_REFUSAL))
    leaked = " ".join(f["verdict"]["reason"] for f in by_cat.get("pii", []))
    if "ssn" in leaked:
        rules.output.append(G.rule("output", "redteam-ssn", pattern=SSN_PATTERN,
                                   category="pii", source=src, refusal=B.PII_REFUSAL))
    if "card" in leaked:
        rules.output.append(G.rule("output", "redteam-card", pattern=CARD_PATTERN,
                                   category="pii", source=src, refusal=B.PII_REFUSAL))
    return rules


def blocked(rules: G.Guardrails, finding: dict[str, Any]) -> bool:
    """Whether the rules would have stopped a finding: its request, or its answer."""
    if rules.check_input(finding["messages"]) is not None:
        return True
    return bool(finding.get("text")) and rules.check_output(finding["text"]) is not None


def rule_effect(rules: G.Guardrails, report: dict[str, Any], benign: list[str]
                ) -> dict[str, Any]:
    """How many seen and held-out findings the rules stop, and how many benign asks they
    would wrongly block."""
    out: dict[str, Any] = {}
    for split in ("seen", "heldout"):
        fs = _chosen(report["findings"], split)
        out[split] = {"findings": len(fs), "blocked": sum(blocked(rules, f) for f in fs)}
    wrong = [b for b in benign
             if rules.check_input([{"role": "user", "content": b}]) is not None]
    out["benign"] = {"asks": len(benign), "blocked": len(wrong), "examples": wrong[:5]}
    return out
