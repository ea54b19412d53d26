"""Model files and training checkpoints of every model family: written atomically, read with
``torch.load(weights_only=True)`` and checked (format, version) before use, so a corrupt or foreign
file ends in one clear error. The shipped weights are package data (``regode.weights``, the
repository's ``weights/``)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from pathlib import Path

import torch

from . import config as configs
from .errors import RegodeError
from .io.atomic import atomic_output

VERSION = 1


def save(
    path, fmt: str, model, config, step: int, seconds: float, history: list, optimizer: dict | None = None
) -> None:
    """Write a checkpoint of format ``fmt`` (e.g. ``regode.msodenet``) atomically: the model's and
    the run's configs, the step, the time and the validation history, the weights and (for a
    resumable checkpoint) ``optimizer``, the state dicts of the run's optimisers."""
    document = {
        "format": fmt,
        "version": VERSION,
        "model_config": dataclasses.asdict(model.config),
        "train_config": dataclasses.asdict(config),
        "step": step,
        "seconds": seconds,
        "history": history,
        "model": model.state_dict(),
    }
    if optimizer is not None:
        document["optimizer"] = optimizer
    with atomic_output(path) as tmp:
        torch.save(document, tmp)


def load(path, fmt: str, what: str, expect_optimizer: bool = False) -> dict:
    """The checkpoint document in ``path``, checked to be of format ``fmt`` (``what`` names the
    model family in the error)."""
    path = Path(path)
    if not path.is_file():
        raise RegodeError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's long warnings about unsafe files: regode's one line says it
            warnings.simplefilter("ignore")
            document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean the same to a user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "Weights only load failed" in reason:
            reason = "it holds Python objects (a pickle), which regode never loads"
        raise RegodeError(f"cannot read checkpoint {path}: {reason[:200]}") from None
    if not isinstance(document, dict) or document.get("format") != fmt:
        raise RegodeError(f"{path} is not a regode {what} checkpoint")
    if document.get("version") != VERSION:
        raise RegodeError(f"{path} has checkpoint version {document.get('version')}, this regode reads {VERSION}")
    if expect_optimizer and "optimizer" not in document:
        raise RegodeError(f"{path} holds no optimiser state (a final model, not a training checkpoint)")
    return document


def load_network(path, fmt: str, what: str, config_class, network_class) -> tuple:
    """The network stored in ``path`` (checkpoint format ``fmt``; ``what`` names its family in
    errors), rebuilt from the config saved with it (``config_class``, then ``network_class(config)``),
    in eval mode; and the checkpoint document."""
    document = load(path, fmt, what)
    try:
        network = network_class(configs.from_dict(config_class, document["model_config"]))
        network.load_state_dict(document["model"])
    except (TypeError, ValueError, RuntimeError, KeyError, RegodeError) as exc:
        raise RegodeError(f"{path} does not hold a valid {what}: {str(exc).splitlines()[0][:200]}") from None
    return network.eval(), document


def training_files(out) -> tuple[Path, Path]:
    """The resumable state ``OUT.ckpt`` and the log ``OUT.log.jsonl`` of a training run writing ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt"), out.with_name(out.name + ".log.jsonl")


def resume_state(out, fmt: str, what: str) -> dict:
    """The training checkpoint to resume a run writing ``out`` from (with its optimiser state)."""
    ckpt_path = training_files(out)[0]
    if not ckpt_path.exists():
        raise RegodeError(f"nothing to resume: {ckpt_path} does not exist")
    return load(ckpt_path, fmt, what, expect_optimizer=True)


def file_hash(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_dir() -> Path:
    """The shipped weights: ``$REGODE_WEIGHTS`` or the package data ``regode.weights`` (the
    repository's top-level ``weights/``, installed with the package). An empty ``$REGODE_WEIGHTS``
    counts as unset, not as the current folder."""
    if os.environ.get("REGODE_WEIGHTS"):
        return Path(os.environ["REGODE_WEIGHTS"])
    from importlib.resources import files

    return Path(str(files("regode.weights")))
