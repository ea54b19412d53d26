"""Dataset folders: one sub-folder per subject, one ``<contrast>.nii.gz`` per image, an optional
label map (``seg.nii.gz`` or ``labels.nii.gz``). Benchmarks and training read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import RegodeError

CONTRASTS = ("t1", "t1c", "t2", "flair", "pd")
"""known contrast names, in the order a subject lists them (others follow, sorted)."""
LABEL_FILES = ("seg", "labels")
NOT_CONTRASTS = LABEL_FILES + ("wml", "mask", "brainmask")


@dataclass
class Subject:
    name: str
    contrasts: dict[str, Path]
    labels: Path | None


def discover(data: str | Path) -> list[Subject]:
    """Subjects of a dataset folder, contrasts in the order t1 t1c t2 flair pd, then others."""
    root = Path(data)
    if not root.is_dir():
        raise RegodeError(f"dataset folder not found: {root}")
    subjects = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = {p.name[: -len(".nii.gz")]: p for p in folder.glob("*.nii.gz")}
        names = [c for c in CONTRASTS if c in files] + sorted(
            c for c in files if c not in CONTRASTS and c not in NOT_CONTRASTS
        )
        labels = next((files[n] for n in LABEL_FILES if n in files), None)
        if names:
            subjects.append(Subject(folder.name, {c: files[c] for c in names}, labels))
    if not subjects:
        raise RegodeError(f"no subjects with <contrast>.nii.gz images in {root}")
    return subjects
