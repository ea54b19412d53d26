"""The configuration of ``regode cohort``: the rows' command and options, the engine, the outputs.
No torch here (see regode.config)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import config as check
from ..options import Spec, setting, validate

COMMANDS = ("register", "fit-field", "brain-extract")
"""the commands a manifest row can run."""


@dataclass(frozen=True)
class CohortConfig:
    """Everything that defines a cohort run, besides its manifest and output folder."""

    command: str = setting("register", "The command of rows that name none.", choices=COMMANDS)
    options: str = setting("", 'Options for the rows of --command, e.g. "--model rigid+bspline" (a row\'s own win).')
    workers: int | None = setting(None, "Worker processes (default: cores / threads).", low=1)
    threads: int = setting(2, "CPU threads per worker.", low=1)
    scheduler: str | None = setting(None, "Submit to a running Dask scheduler (tcp://host:8786).")
    slurm: bool = setting(False, "Start Dask workers as SLURM jobs (dask-jobqueue: pip install 'regode[hpc]').")
    queue: str | None = setting(None, "--slurm: partition.")
    account: str | None = setting(None, "--slurm: account.")
    walltime: str = setting("01:00:00", "--slurm: time limit per job.")
    memory: str = setting("8GB", "--slurm: memory per job.")
    jobs: int = setting(1, "--slurm: jobs to start.", low=1)
    row: int | None = setting(
        None, "Run this row only, here, without Dask (job arrays: --row $SLURM_ARRAY_TASK_ID).", low=1
    )
    retries: int = setting(1, "Times a task whose worker died is run again.", low=0)
    only_failed: bool = setting(
        False, "Run only the rows whose last run failed (an error, or a process stopped mid-row), not those never run."
    )
    bids: bool = setting(
        False,
        "BIDS-style derivatives: OUT/sub-X/anat/sub-X_from-FLAIR_to-T1w_mode-image_xfm.h5 ... (manifest "
        "columns from, to) and OUT/dataset_description.json.",
    )
    report_only: bool = setting(False, "Write the summary and report from the outputs there (after job arrays).")
    qc: bool = setting(True, "QC picture and figures per row.")

    def __post_init__(self):
        validate(self)
        check.require(not (self.scheduler and self.slurm), "--scheduler and --slurm are two engines: choose one")
        check.require(not (self.only_failed and self.row), "--only-failed and --row choose rows two ways: choose one")
        check.require(not (self.only_failed and self.report_only), "--only-failed runs rows; --report-only runs none")


SPEC = Spec("cohort", {"config": CohortConfig})
"""the settings of ``regode cohort``."""


TEMPLATE_COMMANDS = ("fit-field", "register")
"""the registrations a template can be built with."""


@dataclass(frozen=True)
class TemplateConfig:
    """Everything that defines a template (``regode template``), besides its manifest and folder."""

    iterations: int = setting(4, "Rounds of registration and averaging after the affine start.", low=1)
    initial: str = setting("mean", "Initial template: mean (of the images, in world space), mni152 or an image file.")
    spacing: float | None = setting(None, "Template voxel size in mm (default: the initial image's).", low=0.1)
    command: str = setting("fit-field", "Registration of each subject to the template.", choices=TEMPLATE_COMMANDS)
    options: str = setting("--seed 1", 'Options of --command, e.g. "--iterations 100".')
    average: str = setting("mean", "Voxelwise average of the warped images.", choices=("mean", "median"))
    step: float = setting(1.0, "Share of the mean map's inverse applied to the average each round.", low=0.05, high=1.0)
    workers: int | None = setting(None, "Worker processes (default: cores / threads).", low=1)
    threads: int = setting(2, "CPU threads per worker.", low=1)
    scheduler: str | None = setting(None, "Submit to a running Dask scheduler (tcp://host:8786).")

    def __post_init__(self):
        validate(self)


TEMPLATE_SPEC = Spec("template", {"config": TemplateConfig})
"""the settings of ``regode template``."""
