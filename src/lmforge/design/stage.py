"""Stage 1: a design from a preset, a TOML file or a design artifact, with overrides; its cost
report; registered as a `design` artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmforge.design.report import check_gpus, design_report
from lmforge.design.spec import (
    PRESETS,
    ModelDesign,
    from_dict,
    from_preset,
    is_preset,
    load_toml,
    to_toml,
)
from lmforge.errors import LmforgeError
from lmforge.registry import Artifact, Workspace, atomic_write_json, atomic_write_text
from lmforge.runtime import MatmulPeak, measure_matmul_peak
from lmforge.stage import Outcome

DESIGN_FILE = "design.toml"


@dataclass(frozen=True)
class DesignSettings:
    source: str  # a preset name, a design TOML file, or a design artifact reference
    overrides: dict[str, Any] = field(default_factory=dict)  # design fields to replace
    batch_size: int = 8  # micro-batch of the memory estimate
    gpu: str | None = None  # also estimate time on this GPU class
    benchmark: bool = True  # measure this machine's matmul peak for the time estimate
    register: bool = True
    gpus: int | None = None  # also plan data-parallel training on this many `gpu`s

    def __post_init__(self) -> None:
        check_gpus(self.gpu, self.gpus)  # refused before the matmul benchmark runs

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str, base_dir: Path) -> DesignSettings:
        """A recipe step: `preset` or `file` (relative to the recipe), other keys override
        design fields (n_layers = 6, ...)."""
        values = dict(values)
        preset, file = values.pop("preset", None), values.pop("file", None)
        if (preset is None) == (file is None):
            raise LmforgeError(f"{where}: give exactly one of preset or file",
                               hint=f"presets: {', '.join(PRESETS)}")
        if preset is not None:
            from_preset(preset)  # an unknown name is refused as a preset, not as a reference
        return cls(preset if preset is not None else str(base_dir / file), overrides=values,
                   benchmark=False)


def design_from_artifact(art: Artifact) -> ModelDesign:
    return load_toml(art.file(DESIGN_FILE))


def resolve_design(ws: Workspace, ref: str, **overrides: Any) -> tuple[ModelDesign, str | None]:
    """A preset name, a TOML file, or a design artifact ref -> (design, artifact id or None)."""
    artifact_id = None
    if is_preset(ref):
        design = from_preset(ref)
    elif ref.endswith(".toml") or Path(ref).is_file():
        design = load_toml(ref)
    else:
        try:
            art = ws.resolve(ref, kind="design")
        except LmforgeError as e:
            raise LmforgeError(f"'{ref}' is not a preset, a design file or a design artifact",
                               hint=f"presets: {', '.join(PRESETS)}; ({e.message})") from None
        design, artifact_id = design_from_artifact(art), art.id
    changed = apply_overrides(design, **overrides)
    if changed != design:
        artifact_id = None  # a changed design is a new design
    return changed, artifact_id


def apply_overrides(design: ModelDesign, **overrides: Any) -> ModelDesign:
    """The design with the given fields replaced (None = keep), validated again."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return design
    return from_dict({**design.to_dict(), **changes}, where=f"design '{design.name}'")


def register_design(ws: Workspace, design: ModelDesign, batch_size: int = 8,
                    peak: MatmulPeak | None = None) -> tuple[Artifact, dict[str, Any]]:
    report = design_report(design, batch_size, peak)
    with ws.staging() as d:
        atomic_write_text(d / DESIGN_FILE, to_toml(design))
        art = ws.register(d, kind="design", stage="design", parents=None,
                          settings=design.to_dict(),
                          metrics={"params": report["params"]["total"],
                                   "training_flops_per_token":
                                       report["flops_per_token"]["training"],
                                   "compute_optimal_tokens": report["compute_optimal_tokens"]},
                          name=design.name)
    # The report holds a machine-specific measurement, so it lives beside, not inside, the id.
    atomic_write_json(ws.root / "reports" / f"{art.id}.json", report)
    return art, report


def run(ws: Workspace, s: DesignSettings, show_progress: bool = True) -> Outcome:
    """Resolve the design, report its costs, and register it (unless told not to)."""
    design, _ = resolve_design(ws, s.source, **s.overrides)
    peak = measure_matmul_peak() if s.benchmark else None
    report = design_report(design, s.batch_size, peak, s.gpu, s.gpus)
    art = None
    if s.register:
        art, _ = register_design(ws, design, s.batch_size, peak)
        report["artifact"] = art.id
    return Outcome(art, f"{design.name}: {report['params']['total']:,} parameters", report)
