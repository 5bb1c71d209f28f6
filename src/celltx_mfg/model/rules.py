"""GMP rules as small decisions the journey asks for (REFERENCE.md section 3).

Each function answers one question a QA person would ask at that point of the flow; the journey turns
"no" into waiting (when waiting avoids the violation) or into a deviation record (when it cannot).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import GMP, QC, Release, Step


@dataclass(frozen=True)
class DeviationSpec:
    kind: str
    severity: str  # minor | major | critical
    detail: str


def starting_material_hold(gmp: GMP, collection_end: float, process_start: float) -> DeviationSpec | None:
    """Fresh apheresis must enter processing within the validated hold (rule 3); cryopreserved
    material has no such clock."""
    if gmp.starting_material != "fresh":
        return None
    held_h = (process_start - collection_end) * 24.0
    if held_h <= gmp.fresh_hold_limit_hours + 1e-9:
        return None
    return DeviationSpec(
        "starting_material_hold_exceeded",
        "major",
        f"fresh material held {held_h:.1f} h > limit {gmp.fresh_hold_limit_hours:g} h",
    )


def step_time_limit(step: Step, duration: float) -> DeviationSpec | None:
    """A step outside its validated window (rule 8): too long is major (cells over-expanded or aged),
    too short minor (usually caught by in-process control)."""
    if step.max_days is not None and duration > step.max_days + 1e-9:
        return DeviationSpec("step_time_limit", "major", f"{step.name} took {duration:.2f} d > max {step.max_days:g} d")
    if step.min_days is not None and duration < step.min_days - 1e-9:
        return DeviationSpec("step_time_limit", "minor", f"{step.name} took {duration:.2f} d < min {step.min_days:g} d")
    return None


def tests_required_for_release(qc: QC, release: Release) -> frozenset[str]:
    """Mode A needs every result; mode B (conditional) releases on the rapid results with sterility
    pending (rule 10)."""
    names = [t.name for t in qc.tests]
    if release.policy == "full":
        return frozenset(names)
    if release.conditional_after is not None:
        return frozenset(release.conditional_after)
    return frozenset(t.name for t in qc.tests if not t.sterility)


def blocks_release(severity: str) -> bool:
    """Major and critical deviations hold release until closed (rule 9)."""
    return severity in ("major", "critical")


def shipper_excursion(gmp: GMP, transit_days: float) -> bool:
    """A transit longer than the shipper's validated hold means the product left its temperature range."""
    return transit_days > gmp.shipper_hold_days


def expired(expiry: float | None, when: float) -> bool:
    """No shipping or infusion past expiry (rule 12); a batch not yet made has no expiry to pass."""
    return expiry is not None and when > expiry
