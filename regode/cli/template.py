"""``regode template``: an unbiased population template from a study's images, on Dask, resumable."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Annotated

import typer

from ..cohort.config import TEMPLATE_SPEC
from ..options.cli import command, keyword
from .app import QUIET, app, user_errors

MANIFEST = inspect.Parameter(
    "manifest",
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    annotation=Annotated[
        Path, typer.Argument(help="CSV: an id column, a column per channel (t1, flair, ...), optionally labels.")
    ],
)
OUT = keyword("out", Path, "--out", "-o", help="Output folder: OUT/template_<channel>.nii.gz, OUT/ID/ID_* per subject.")


def run(resolved, manifest: Path, out: Path, quiet: bool = False) -> None:
    """Build an unbiased template from the subjects of MANIFEST: an affine start, then rounds of
    registration to the template, averaging and moving the average by the inverse of the mean map."""
    from ..cohort.run import Engine
    from ..cohort.template import build_template, read_subjects
    from ..errors import RegodeError

    c = resolved["config"]
    if out.exists() and not out.is_dir():
        raise RegodeError(f"--out {out} is a file, not a folder")
    channels, subjects = read_subjects(manifest)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    engine = Engine(workers=c.workers or max(1, cores // c.threads), threads=c.threads, scheduler=c.scheduler)
    document = build_template(
        subjects,
        out,
        channels=channels,
        iterations=c.iterations,
        initial=c.initial,
        spacing=c.spacing,
        command=c.command,
        options=c.options,
        average=c.average,
        step=c.step,
        engine=engine,
        progress=not quiet,
    )
    updates = ", ".join(f"{u['update_mm_mean']:.2f}" for u in document["updates"])
    print(
        f"template of {len(document['subjects_used'])} of {len(subjects)} subjects in {out}: "
        f"update per round (mm) {updates}; mean final displacement {document['final_mean_displacement_mm']:.2f} mm"
    )


template = app.command("template")(
    user_errors(command("template", TEMPLATE_SPEC, run, [MANIFEST, OUT, QUIET], run.__doc__))
)
