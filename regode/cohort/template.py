"""Unbiased study templates (``regode template``, :func:`build_template`).

The iteration of ANTs' ``antsMultivariateTemplateConstruction2.sh``, on the cohort machinery
(regode.cohort: Dask, SLURM, resumable rows):

1. the initial template: the voxelwise mean of the subjects' first channel in world space (each
   divided by its brain's median), a given image, or ``mni152``;
2. a linear start: every subject registered affinely to it, then the update below;
3. each iteration: every subject registered to the current template with the cohort's command
   and options; the warped images averaged (mean or median, each divided by its brain's median);
   the average moved by the inverse of the subjects' mean map, so that the mean of the maps from
   the new template to the subjects is the identity (the template is unbiased);
4. a last round registers every subject to the final template: its transforms (ANTs names), its
   log-Jacobian map and, where subjects have labels, the template's labels by majority vote.

Every map here is in world (LPS mm) coordinates: a subject's transforms map template points to
its points, as ``PREFIX1Warp.nii.gz`` then ``PREFIX0GenericAffine.mat`` do for ANTs.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import RegodeError
from ..grid import Grid
from ..io import read_image, write_image
from ..io.atomic import atomic_output
from ..io.transforms import load_transform_chain
from ..transforms import DisplacementField
from ..warp import resample
from . import report
from .manifest import read_manifest
from .report import mark_outliers
from .run import Engine, run_cohort

ALIGNMENT = ("mi_after", "ncc_after", "overlap_after")
"""the QC figures of alignment: a subject that is an outlier in one of them is left out of the average."""


@dataclass(frozen=True)
class Subject:
    """One subject of a template: its images (one per channel, the first drives the registration)
    and, optionally, its labels (on its first channel's grid)."""

    id: str
    images: tuple[Path, ...]
    labels: Path | None = None


def read_subjects(path) -> tuple[tuple[str, ...], list[Subject]]:
    """The channels (the columns besides ``id`` and ``labels``, in order) and the subjects of a
    template manifest: a CSV with an ``id`` column, one column per channel and optionally ``labels``;
    relative paths are relative to the manifest's folder."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows, columns = list(reader), tuple(reader.fieldnames or ())
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RegodeError(f"cannot read the template manifest {path}: {exc}") from None
    channels = tuple(c for c in columns if c not in ("id", "labels"))
    if "id" not in columns or not channels or not rows:
        raise RegodeError(f"{path}: a template manifest needs an id column, a column per channel and rows")
    resolve = lambda value: (path.parent / value).resolve() if value else None  # noqa: E731
    subjects = [
        Subject(row["id"], tuple(resolve(row[c]) for c in channels), resolve(row.get("labels") or "")) for row in rows
    ]
    for number, (row, subject) in enumerate(zip(rows, subjects, strict=True), start=2):
        for channel, image in zip(channels, subject.images, strict=True):
            if not row[channel] or not image.is_file():
                raise RegodeError(f"{path}, line {number}: the {channel} image {row[channel]!r} is not a file")
    if len({s.id for s in subjects}) != len(subjects) or len(subjects) < 2:
        raise RegodeError(f"{path}: a template needs at least 2 subjects with distinct ids")
    return channels, subjects


def build_template(
    subjects: list[Subject],
    out,
    *,
    channels: tuple[str, ...] = ("t1",),
    iterations: int = 4,
    initial: str = "mean",
    spacing: float | None = None,
    command: str = "fit-field",
    options: str = "--seed 1",
    average: str = "mean",
    step: float = 1.0,
    engine: Engine | None = None,
    progress: bool = False,
) -> dict:
    """Build a template from ``subjects`` into folder ``out`` (see the module's description); a
    run killed at any point and started again goes on from the rows and templates in place.
    Returns the document also written to ``out/template.json``: the settings, each iteration's
    update size (mm, mean over the template's brain) and the subjects used."""
    out, engine = Path(out).resolve(), engine or Engine()
    settings = {
        "channels": list(channels),
        "subjects": [s.id for s in subjects],
        "iterations": iterations,
        "initial": initial,
        "spacing": spacing,
        "command": command,
        "options": options,
        "average": average,
        "step": step,
    }
    _check_settings(out, settings)
    rounds = out / "iterations"
    rounds.mkdir(parents=True, exist_ok=True)
    current = rounds / "template-0.nii.gz"
    if not current.is_file():
        _initial(subjects, initial, spacing, current)
    history = []
    for k in range(iterations + 1):  # round 0: the linear start
        following = rounds / f"template-{k + 1}.nii.gz"
        folder = rounds / f"round-{k}"
        how = ("register", "--model affine --no-principal-axes --seed 1") if k == 0 else (command, options)
        rows, lines = _round(subjects, current, folder, *how, engine, progress)
        if following.is_file() and (folder / "update.json").is_file():  # done in an earlier run
            history.append(json.loads((folder / "update.json").read_text()))
        else:
            update = _update(rows, lines, folder, current, following, average, step)
            _write_json(folder / "update.json", update)
            history.append(update)
        current = following
    rows, lines = _round(subjects, current, out, command, options, engine, progress)
    report.write(lines, out)  # the last round's QC: summary.csv, summary.json, report.html
    document = {**settings, "updates": history, **_finish(subjects, channels, rows, lines, current, out, engine)}
    _write_json(out / "template.json", document)
    return document


def _check_settings(out: Path, settings: dict) -> None:
    """A template folder holds one template: its settings are saved, and a rerun must match them."""
    saved = out / "template_settings.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        if before != settings:
            changed = sorted(k for k in settings if before.get(k) != settings[k])
            raise RegodeError(
                f"--out {out} holds a template built with other settings ({', '.join(changed)}): use a new --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_json(saved, settings)


def _write_json(path: Path, document: dict) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=2))


def _brain_median(volume: torch.Tensor) -> float:
    """The median intensity of an image's brain: its voxels above 5 % of its 99.5th percentile."""
    values = volume.flatten()
    values = values[values > 0.05 * torch.quantile(values[:: max(1, values.numel() // 1_000_000)], 0.995)]
    return float(values.median()) if values.numel() else 1.0


def _initial(subjects: list[Subject], initial: str, spacing: float | None, path: Path) -> None:
    """The initial template: an image (``mni152`` or a file) or the mean of the first channels."""
    if initial != "mean":
        from ..templates import is_template, template_file

        image = read_image(template_file(initial) if is_template(initial) else initial, what="--initial")
        grid = image.grid.with_spacing(spacing) if spacing else image.grid
        data = resample(image.data, image.grid, grid, DisplacementField(grid, torch.zeros(1, 3, *grid.shape)))
        _write(data / _brain_median(data), grid, path)
        return
    first = read_image(subjects[0].images[0], what=f"image of {subjects[0].id}")
    grid = first.grid.with_spacing(spacing) if spacing else first.grid
    identity = DisplacementField(grid, torch.zeros(1, 3, *grid.shape))
    total = torch.zeros(1, 1, *grid.shape)
    for subject in subjects:
        image = read_image(subject.images[0], what=f"image of {subject.id}")
        total += resample(image.data, image.grid, grid, identity) / _brain_median(image.data)
    _write(total / len(subjects), grid, path)


def _write(data: torch.Tensor, grid: Grid, path: Path, dtype=np.float32) -> None:
    with atomic_output(path) as tmp:
        write_image(data, grid, tmp, dtype)


def _round(subjects, template: Path, folder: Path, command: str, options: str, engine: Engine, progress: bool):
    """Every subject's first channel registered to ``template`` as a cohort in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        lines = ["id,fixed,moving,moving_labels"]
        lines += [f"{s.id},{template},{s.images[0]},{s.labels or ''}" for s in subjects]
        with atomic_output(manifest) as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n")
    rows = read_manifest(manifest, folder, command, options)
    return rows, mark_outliers(run_cohort(rows, folder, engine, progress=progress))


def _used(rows, lines) -> list:
    """The rows whose registration is in the average: done, and no outlier in alignment."""
    return [
        row
        for row, line in zip(rows, lines, strict=True)
        if line["status"] == "done" and not set(line.get("outlier", "").split()) & set(ALIGNMENT)
    ]


def _maps(row, folder: Path, grid: Grid) -> torch.Tensor:
    """A subject's map from the template's voxel centres to its world points, ``[nz, ny, nx, 3]``."""
    paths = row.outputs(folder)
    specs = [str(paths["warp"])] if "warp" in paths else []
    chain = load_transform_chain([*specs, str(paths["affine"])])
    with torch.no_grad():
        return chain.map_grid(grid, dtype=torch.float64)[0]


def _update(rows, lines, folder: Path, template: Path, following: Path, average: str, step: float) -> dict:
    """The next template: the average of the warped images, moved by the inverse of the mean map."""
    used = _used(rows, lines)
    if len(used) < 2:
        raise RegodeError(f"fewer than 2 subjects registered to {template} (see {folder / 'summary.csv'})")
    grid = read_image(template, what="template").grid
    mean = torch.zeros(*grid.shape, 3, dtype=torch.float64)
    warped = []
    for row in used:
        mean += _maps(row, folder, grid)
        image = read_image(row.outputs(folder)["warped"], what=f"warped image of {row.id}").data
        warped.append(image / _brain_median(image))
    mean /= len(used)
    points = grid.world_points(dtype=torch.float64)
    shift = (mean - points).movedim(-1, 0)[None]  # the mean map's displacement on the template
    stack = torch.cat(warped)
    averaged = stack.mean(0, keepdim=True) if average == "mean" else stack.median(0, keepdim=True).values
    inverse = DisplacementField(grid, step * shift).inverse(iterations=50, tolerance=1e-3)
    moved = resample(averaged, grid, grid, inverse.to(torch.float32))
    _write(moved, grid, following)
    brain = averaged[0, 0] > 0.1 * float(averaged.max())
    size = shift[0].norm(dim=0)[brain]
    title = f"{following.name}: update {size.mean():.2f} mm"
    _picture(moved, grid, following.with_suffix("").with_suffix(".png"), title)
    return {
        "update_mm_mean": float(size.mean()),
        "update_mm_max": float(size.max()),
        "subjects_used": [row.id for row in used],
        "left_out": [line["id"] for line in lines if line["id"] not in {row.id for row in used}],
    }


def _picture(volume: torch.Tensor, grid: Grid, path: Path, title: str) -> None:
    """Three planes of a template, its brain outlined (what each round made, to look at)."""
    from ..qc import mask_picture

    data = volume[0, 0].numpy()
    scaled = np.clip(data / max(float(np.quantile(data, 0.995)), 1e-6), 0, 1)
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(mask_picture(scaled, (data > 0.1 * data.max()).astype(float), grid, title))


def _finish(subjects, channels, rows, lines, template: Path, out: Path, engine: Engine) -> dict:
    """The final template's files: one per channel, the labels by majority vote, and each subject's
    log-Jacobian map; returns what the document records of them."""
    grid = read_image(template, what="template").grid
    with atomic_output(out / f"template_{channels[0]}.nii.gz") as tmp:
        shutil.copyfile(template, tmp)
    used = _used(rows, lines)
    if not used:
        raise RegodeError(f"no subject registered to the final template {template} (see {out / 'summary.csv'})")
    labels, final = [], {}
    for row in used:
        points = _maps(row, out, grid)
        _write(_log_jacobian(points, grid)[None, None], grid, Path(f"{row.prefix(out)}logJacobian.nii.gz"))
        final[row.id] = points
        if "labels" in row.outputs(out):
            labels.append(read_image(row.outputs(out)["labels"], what=f"warped labels of {row.id}", exact=True).data)
    if labels:
        vote = torch.cat(labels).to(torch.int64).mode(0, keepdim=True).values
        _write(vote, grid, out / "template_labels.nii.gz", np.int32)
    for c, channel in enumerate(channels[1:], start=1):
        _other_channel(subjects, used, c, channel, grid, out, engine)
    points = grid.world_points(dtype=torch.float64)
    mean = sum(final.values()) / len(final)
    data = read_image(template, what="template").data[0, 0]
    brain = data > 0.1 * float(data.max())
    bias = (mean - points).norm(dim=-1)[brain]
    return {"final_mean_displacement_mm": float(bias.mean()), "subjects_used": sorted(final), "labels": bool(labels)}


def _log_jacobian(points: torch.Tensor, grid: Grid) -> torch.Tensor:
    """log det of the map's Jacobian (world to world) at the template's voxels; -inf where it folds
    is clipped to log(1e-3)."""
    p = points.numpy()
    along = [np.gradient(p, axis=axis) for axis in (2, 1, 0)]  # d/di, d/dj, d/dk (index axes)
    jacobian_index = np.stack(along, axis=-1)  # [..., 3 (world), 3 (index)]
    to_index = np.linalg.inv(grid.matrix("index", "world")[:3, :3])
    det = np.linalg.det(jacobian_index @ to_index)
    return torch.from_numpy(np.log(np.clip(det, 1e-3, None)).astype(np.float32))


def _other_channel(subjects, used, c: int, channel: str, grid: Grid, out: Path, engine: Engine) -> None:
    """A channel besides the first: each subject's image registered rigidly to its first channel,
    then taken to the template through its final transforms, and averaged."""
    folder = out / "channels" / channel
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    by_id = {s.id: s for s in subjects}
    if not manifest.is_file():
        lines = ["id,fixed,moving"] + [f"{r.id},{by_id[r.id].images[0]},{by_id[r.id].images[c]}" for r in used]
        with atomic_output(manifest) as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n")
    rows = read_manifest(manifest, folder, "register", "--model rigid --seed 1")
    done = {line["id"] for line in run_cohort(rows, folder, engine, progress=False) if line["status"] == "done"}
    total, count = torch.zeros(1, 1, *grid.shape), 0
    for row in used:
        if row.id not in done:
            continue
        intra = [r for r in rows if r.id == row.id][0].outputs(folder)["affine"]
        paths = row.outputs(out)
        chain = load_transform_chain(
            [*([str(paths["warp"])] if "warp" in paths else []), str(paths["affine"]), str(intra)]
        )
        image = read_image(by_id[row.id].images[c], what=f"{channel} of {row.id}")
        total += resample(image.data, image.grid, grid, chain) / _brain_median(image.data)
        count += 1
    if count:
        _write(total / count, grid, out / f"template_{channel}.nii.gz")
