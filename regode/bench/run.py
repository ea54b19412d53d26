"""The benchmark runner: cases, methods, metrics, summary table, JSON and markdown."""

from __future__ import annotations

import ctypes
import gc
import json
import re
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from .._version import __version__
from ..datasets import Subject, discover
from ..errors import RegodeError
from ..grid import Grid
from ..io import Image, read_image
from ..io.atomic import atomic_output, check_writable
from ..progress import bar
from ..progress import console as progress_console
from ..transforms import Compose
from ..warp import resample
from . import metrics
from .config import BenchConfig
from .consistency import NUMERICAL, inverse_consistency, numerical_inverse
from .methods import METHODS
from .motion import inverse_on, sample_motion

METRICS = (
    "dice",
    "rmse_x",
    "rmse_phi",
    "neg_jac_pct",
    "sdlogj",
    "hd95",
    "ic_median_mm",
    "ic_p95_mm",
    "seconds",
    "memory_mb",
    "gpu_memory_mb",
)
HEADINGS = {
    "dice": "Dice (%)",
    "rmse_x": "RMSE(x)",
    "rmse_phi": "RMSE(phi) mm",
    "neg_jac_pct": "% det J<=0",
    "sdlogj": "SDlogJ",
    "hd95": "HD95 mm",
    "ic_median_mm": "IC median mm",
    "ic_p95_mm": "IC p95 mm",
    "seconds": "s / pair",
    "memory_mb": "memory MB",
    "gpu_memory_mb": "GPU memory MB",
}
FORMATS = {
    "dice": ".1f",
    "rmse_x": ".4f",
    "rmse_phi": ".2f",
    "neg_jac_pct": ".3f",
    "sdlogj": ".3f",
    "hd95": ".2f",
    "ic_median_mm": ".3f",
    "ic_p95_mm": ".3f",
    "seconds": ".2f",
    "memory_mb": ".0f",
    "gpu_memory_mb": ".0f",
}


@dataclass
class Case:
    """One registration problem, shared by every method of a run."""

    name: str
    fixed: Image
    moving: Image
    fixed_labels: torch.Tensor | None = None
    moving_labels: torch.Tensor | None = None
    truth_image: np.ndarray | None = None  # the moving contrast before motion, on the fixed grid
    truth_displacement: np.ndarray | None = None  # [3, nz, ny, nx] mm, fixed grid

    @cached_property
    def mask(self) -> np.ndarray:
        """The fixed image's foreground, where every metric is measured."""
        return evaluation_mask(self.fixed.data[0, 0].numpy())


def _working(image: Image, resolution: float | None, interp: str = "linear", grid: Grid | None = None) -> Image:
    target = grid or (image.grid.with_spacing(resolution) if resolution else image.grid)
    if target.same_as(image.grid):
        return image
    data = resample(image.data, image.grid, target, Compose([]), interp)
    return Image(data, target, image.dtype, image.path)


def evaluation_mask(image: np.ndarray) -> np.ndarray:
    """Where the benchmark measures, on the fixed image as read (not normalised): voxels above 2 %
    of its 99th percentile, the brain of a skull-stripped image (docs/results.md, Protocol)."""
    return image > 0.02 * np.percentile(image, 99)


def _natural(name: str) -> list:
    """Sort key of a subject's name in numeric order (Subj2 before Subj10)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _subject_pair(config: BenchConfig, subjects: list[Subject], i: int, rng) -> tuple[Subject, Subject]:
    """The ``i``-th inter-subject pair (fixed, moving): drawn at random, or the next subject in
    numeric order as the fixed image of the one before it (``--pairing consecutive``)."""
    if config.pairing == "consecutive":
        ordered = sorted(subjects, key=lambda s: _natural(s.name))
        if config.pairs > len(ordered) - 1:
            raise RegodeError(
                f"--pairs {config.pairs}: {len(ordered)} subjects make {len(ordered) - 1} consecutive pairs"
            )
        return ordered[i + 1], ordered[i]
    a, b = rng.choice(len(subjects), 2, replace=False)
    return subjects[a], subjects[b]


def build_cases(config: BenchConfig, subjects: list[Subject]) -> list[Case]:
    rng = np.random.default_rng(config.seed)
    cases = []
    for i in range(config.pairs):
        if config.task == "inter-subject" and len(subjects) > 1:
            sa, sb = _subject_pair(config, subjects, i, rng)
            contrast = next((c for c in sa.contrasts if c in sb.contrasts), None)
            if contrast is None:
                raise RegodeError(f"subjects {sa.name} and {sb.name} share no contrast")
            fixed = _working(read_image(sa.contrasts[contrast]), config.resolution)
            moving = _working(read_image(sb.contrasts[contrast]), config.resolution)
            case = Case(f"{i:02d}:{sa.name}<-{sb.name}:{contrast}", fixed, moving)
            if sa.labels and sb.labels:
                case.fixed_labels = _working(read_image(sa.labels), None, "label", fixed.grid).data
                case.moving_labels = _working(read_image(sb.labels), None, "label", moving.grid).data
            cases.append(case)
            continue
        one = config.task == "inter-subject"  # one subject: itself moved by a known affine and deformation
        candidates = [s for s in subjects if len(s.contrasts) >= (1 if one else 2)]
        if not candidates:
            raise RegodeError(
                "synthetic-motion tasks need subjects with at least two contrasts" if not one else "no subject found"
            )
        subject = candidates[rng.integers(len(candidates))]
        if one:
            fixed_c = moving_c = sorted(subject.contrasts)[0]
        else:
            fixed_c, moving_c = rng.choice(list(subject.contrasts), 2, replace=False)
        if config.contrasts == "same":
            moving_c = fixed_c
        fixed = _working(read_image(subject.contrasts[fixed_c]), config.resolution)
        grid = fixed.grid
        source = _working(read_image(subject.contrasts[moving_c]), None, "linear", grid)
        truth = sample_motion(config.task, grid, rng, config.motion)
        inverse = inverse_on(truth, grid)
        moving = Image(resample(source.data, grid, grid, inverse), grid, source.dtype)
        case = Case(
            f"{i:02d}:{subject.name}:{fixed_c}<-{moving_c}",
            fixed,
            moving,
            truth_image=source.data[0, 0].numpy(),
            truth_displacement=truth.displacement(grid)[0].detach().numpy(),
        )
        if subject.labels:
            labels = _working(read_image(subject.labels), None, "label", grid).data
            case.fixed_labels = labels
            case.moving_labels = resample(labels, grid, grid, inverse, "label")
        cases.append(case)
    return cases


def _resident_mb(field: str = "VmRSS") -> float | None:
    """This process's resident memory (``VmRSS``) or its peak since the last reset (``VmHWM``), MB;
    None where /proc is not Linux's."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith(field + ":"))
    except (OSError, StopIteration, ValueError):
        return None


def _reset_peak() -> bool:
    """Hand the allocator's free memory back to the system (glibc keeps freed blocks resident, and
    a method reusing them would seem to need nothing) and restart the kernel's record of this
    process's peak resident memory (Linux 4.0+)."""

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def evaluate(case: Case, method, seed: int) -> dict:
    """Register one case with one method and measure it. ``memory_mb``: how far the process's
    resident memory rose above its level at the start while the method ran (on a GPU: the most
    the method held allocated there, ``gpu_memory_mb``)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    before = _resident_mb() if _reset_peak() else None
    start = time.perf_counter()
    found = method.register(case.fixed, case.moving, seed)
    seconds = time.perf_counter() - start
    transform, inverse = found if isinstance(found, tuple) else (found, None)
    peak = _resident_mb("VmHWM") if before is not None else None
    grid, mask = case.fixed.grid, case.mask
    with torch.no_grad():
        disp = transform.displacement(grid)[0].detach().double().numpy()
    registered = resample(case.moving.data, case.moving.grid, grid, transform)[0, 0].numpy()
    det = metrics.jacobian_determinant(disp, grid)
    row = {m: None for m in METRICS}
    row.update(
        seconds=seconds, neg_jac_pct=metrics.folding_percent(det, mask), sdlogj=metrics.sd_log_jacobian(det, mask)
    )
    if peak is not None:
        row["memory_mb"] = max(0.0, peak - before)
    if cuda:
        row["gpu_memory_mb"] = (torch.cuda.max_memory_allocated() - gpu_before) / 2**20
    if case.truth_image is not None:
        row["rmse_x"] = metrics.rmse_intensity(registered, case.truth_image, mask)
        row["rmse_phi"] = metrics.rmse_displacement(disp, case.truth_displacement, mask)
    brain = mask
    if case.fixed_labels is not None:
        warped = resample(case.moving_labels, case.moving.grid, grid, transform, "label")[0, 0].numpy()
        target = case.fixed_labels[0, 0].numpy()
        per_label = metrics.dice_per_label(warped, target)
        row["dice"] = float(np.mean(list(per_label.values()))) if per_label else None
        row["dice_per_label"] = {str(k): v for k, v in per_label.items()}
        row["hd95"] = metrics.hd95(warped, target, grid.spacing)
        brain = target > 0
    # inverse consistency over the fixed brain (its labels > 0, else the evaluation mask)
    row["inverse"] = "the method's" if inverse is not None else "exact" if transform.is_linear else NUMERICAL
    if inverse is None:
        inverse = transform.inverse() if transform.is_linear else numerical_inverse(disp, grid)
    row["ic_median_mm"], row["ic_p95_mm"] = inverse_consistency(transform, inverse, grid, brain)
    return row


def summarise(rows: list[dict], methods: list[str]) -> dict:
    summary = {}
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        summary[name] = {}
        for metric in METRICS:
            values = [r[metric] for r in mine if r.get(metric) is not None]
            if values:
                summary[name][metric] = {"mean": float(np.mean(values)), "sd": float(np.std(values)), "n": len(values)}
    return summary


def _shown(summary: dict) -> list[str]:
    """The metrics measured for at least one method (GPU memory only on a GPU, and so on)."""
    return [m for m in METRICS if any(m in stats for stats in summary.values())]


def markdown_table(summary: dict, config: BenchConfig, notes: list[str]) -> str:
    shown = _shown(summary)
    head = ["method"] + [HEADINGS[m] for m in shown]
    pairing = f", {config.contrasts} contrasts" if config.task != "inter-subject" else f", {config.pairing} pairs"
    lines = [
        f"Task `{config.task}`{pairing}, {config.pairs} pairs, seed {config.seed}, "
        f"{config.resolution or 'native'} mm, {config.threads} threads.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, stats in summary.items():
        cells = [f"`{name}`"]
        for metric in shown:
            s = stats.get(metric)
            cells.append(f"{s['mean']:{FORMATS[metric]}} ± {s['sd']:{FORMATS[metric]}}" if s else "–")
        lines.append("| " + " | ".join(cells) + " |")
    if "memory_mb" in shown:
        notes = [
            "memory MB: how far the process's resident memory rose above its level at the start of a "
            "registration while it ran (the images already loaded)",
            *notes,
        ]
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def run(config: BenchConfig, out_prefix: str | Path, progress: bool = True) -> dict:
    """Run a benchmark; writes ``PREFIX.json`` and ``PREFIX.md`` and returns the JSON document."""

    out_prefix = Path(out_prefix)
    json_path, md_path = out_prefix.with_name(out_prefix.name + ".json"), out_prefix.with_name(out_prefix.name + ".md")
    check_writable(json_path)
    console = progress_console()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    subjects = discover(config.data)
    methods, notes = {}, []
    for name in config.methods:
        method = METHODS[name]()
        if method.unavailable:
            notes.append(f"{name} skipped: {method.unavailable}")
            console.print(f"[yellow]{name} skipped: {method.unavailable}[/yellow]")
        else:
            methods[name] = method
    rows = []
    with bar(progress, info=False) as progress_bar:
        job = progress_bar.add_task("preparing cases", total=config.pairs * max(1, len(methods)))
        cases = build_cases(config, subjects)
        for case in cases:
            for name, method in methods.items():
                progress_bar.update(job, description=f"{case.name} {name}")
                rows.append({"method": name, "case": case.name, **evaluate(case, method, config.seed)})
                progress_bar.advance(job)
    summary = summarise(rows, list(methods))
    document = {
        "regode": __version__,
        "command": "bench",
        "summary": summary,
        "cases": rows,
        "config": asdict(config),
        "notes": notes,
    }
    with atomic_output(json_path) as tmp:
        Path(tmp).write_text(json.dumps(document, indent=2))
    with atomic_output(md_path) as tmp:
        Path(tmp).write_text(markdown_table(summary, config, notes))

    table = Table(title=f"regode bench: {config.task}, {config.pairs} pairs ({config.resolution or 'native'} mm)")
    shown = _shown(summary)
    for col in ("method", *shown):
        table.add_column(col, justify="right")
    for name, stats in summary.items():
        table.add_row(name, *[f"{stats[m]['mean']:.3g} ± {stats[m]['sd']:.2g}" if m in stats else "–" for m in shown])
    Console(width=max(Console().width, 150)).print(table)
    for n in notes:
        Console().print(n)
    return document
