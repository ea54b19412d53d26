"""The one training loop, for every trainable model (MS-ODENet kinds and the content encoder).

A method package describes one run as a :class:`Run`: its model, optimisers, one optimisation step
and its validation. :func:`train` does the rest the same way for all: seeding, resuming from
``OUT.ckpt`` (model, optimisers, step, time, history), a JSON-lines log ``OUT.log.jsonl`` (one
record per step, validation figures where measured), a progress bar, checkpoints every
``checkpoint_every`` steps and the final model ``OUT`` (no optimiser state). A run's batches must be
a pure function of (seed, step), so a resumed run continues exactly where a killed one stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from . import checkpoint
from . import config as configs
from .progress import bar, console


class Run(Protocol):
    """What a method package provides for one training run (built from its config)."""

    config: object
    """the run's frozen config: ``steps``, ``seed``, ``checkpoint_every`` and ``validate_every``."""
    model: torch.nn.Module
    """its ``config`` is the model's (saved in the checkpoint)."""
    optimizers: dict[str, torch.optim.Optimizer]
    title: str

    def step(self, step: int) -> dict:
        """One optimisation step on batch ``step``; the figures to log (``loss`` among them)."""

    def validate(self) -> dict:
        """Validation figures on fixed held-out data (the model back in train mode after)."""

    def describe(self, record: dict, last: dict, seconds: float) -> str:
        """The progress bar's text from a step's ``record``, the ``last`` validation and the step's time."""

    def after_validation(self, step: int) -> None:
        """Anything to write after a validation (e.g. sample pictures)."""


def train(
    build: Callable[[object], Run],
    config,
    out,
    fmt: str,
    what: str,
    resume: bool = False,
    progress: bool = True,
    steps: int | None = None,
) -> dict:
    """Train ``build(config)`` (or resume the run writing ``out`` with its saved config, ``steps``
    replacing its number of steps if given) and write ``out`` and ``out.ckpt`` in checkpoint format
    ``fmt``; returns the steps, seconds and validation history."""
    out = Path(out)
    ckpt_path, log_path = checkpoint.training_files(out)
    state = None
    if resume:
        state = checkpoint.resume_state(out, fmt, what)
        config = configs.from_dict(type(config), state["train_config"])
        config = dataclasses.replace(config, steps=steps or config.steps)
    torch.manual_seed(config.seed)
    run = build(config)
    step, seconds, history = 0, 0.0, []
    if state is not None:
        run.model.load_state_dict(state["model"])
        saved = state["optimizer"]
        saved = {next(iter(run.optimizers)): saved} if "param_groups" in saved else saved  # a single optimiser's state
        for name, optimizer in run.optimizers.items():
            optimizer.load_state_dict(saved[name])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        console().print(f"resuming {ckpt_path} at step {step}")

    def save(path: Path, final: bool) -> None:
        optimizers = None if final else {name: o.state_dict() for name, o in run.optimizers.items()}
        checkpoint.save(path, fmt, run.model, config, step, seconds, history, optimizers)

    def log(record: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    if step == 0 and not history:
        # the untrained model is the baseline training must beat
        if progress:
            console().print("validating the untrained model (the baseline, logged as step 0)")
        history.append({"step": 0, **run.validate(), "seconds": 0.0})
        log(history[-1])
    run.model.train()
    with bar(progress, eta=True) as progress_bar:
        job = progress_bar.add_task(run.title, total=config.steps, completed=step, info="")
        while step < config.steps:
            start = time.perf_counter()
            figures = run.step(step)
            step += 1
            elapsed = time.perf_counter() - start
            seconds += elapsed
            record = {"step": step, **figures, "seconds": round(seconds, 2)}
            if step % config.validate_every == 0 or step == config.steps:
                validation = run.validate()
                record.update(validation)
                history.append({"step": step, **validation, "seconds": round(seconds, 1)})
                run.after_validation(step)
            log(record)
            progress_bar.update(job, advance=1, info=run.describe(record, history[-1], elapsed))
            if step % config.checkpoint_every == 0 or step == config.steps:
                save(ckpt_path, final=False)
    save(out, final=True)
    return {"steps": step, "seconds": seconds, "history": history}
