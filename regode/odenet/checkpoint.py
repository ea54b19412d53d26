"""MS-ODENet checkpoints: written atomically, read with ``torch.load(weights_only=True)`` and
checked before use, so a corrupt or foreign file ends in one clear error."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from ..errors import RegodeError
from ..io.atomic import atomic_output

FORMAT = "regode.msodenet"
VERSION = 1


def save(path, model, config, step: int, seconds: float, history: list, optimizer=None, fmt: str = FORMAT) -> None:
    """Write a checkpoint atomically; ``optimizer`` is an optimiser or a dict of state dicts."""
    document = {
        "format": fmt,
        "version": VERSION,
        "model_config": model.config.to_dict(),
        "train_config": config.to_dict(),
        "step": step,
        "seconds": seconds,
        "history": history,
        "model": model.state_dict(),
    }
    if optimizer is not None:
        document["optimizer"] = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    with atomic_output(path) as tmp:
        torch.save(document, tmp)


def load(path, expect_optimizer: bool = False, fmt: str = FORMAT, what: str = "MS-ODENet") -> dict:
    path = Path(path)
    if not path.is_file():
        raise RegodeError(f"checkpoint not found: {path}")
    try:
        document = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean the same to a user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RegodeError(f"cannot read checkpoint {path}: {reason[:200]}") from None
    if not isinstance(document, dict) or document.get("format") != fmt:
        raise RegodeError(f"{path} is not a regode {what} checkpoint")
    if document.get("version") != VERSION:
        raise RegodeError(f"{path} has checkpoint version {document.get('version')}, this regode reads {VERSION}")
    if expect_optimizer and "optimizer" not in document:
        raise RegodeError(f"{path} holds no optimiser state (a final model, not a training checkpoint)")
    return document


def training_files(out) -> tuple[Path, Path]:
    """The resumable state ``OUT.ckpt`` and the log ``OUT.log.jsonl`` of a training run writing ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".ckpt"), out.with_name(out.name + ".log.jsonl")


def resume_state(out, fmt: str = FORMAT, what: str = "MS-ODENet") -> dict:
    """The training checkpoint to resume a run writing ``out`` from (with its optimiser state)."""
    ckpt_path = training_files(out)[0]
    if not ckpt_path.exists():
        raise RegodeError(f"nothing to resume: {ckpt_path} does not exist")
    return load(ckpt_path, expect_optimizer=True, fmt=fmt, what=what)


def load_model(path, kind: str | None = None):
    """The MS-ODENet stored in ``path`` (eval mode); ``kind`` checks it is the expected kind."""
    from .model import MSODENet, ModelConfig

    document = load(path)
    try:
        config = ModelConfig(**document["model_config"])
        model = MSODENet(config)
        model.load_state_dict(document["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise RegodeError(f"{path} does not hold a valid MS-ODENet: {str(exc).splitlines()[0][:200]}") from None
    if kind is not None and config.kind != kind:
        raise RegodeError(f"{path} holds a {config.kind} model, a {kind} model is needed here")
    return model.eval(), document


def file_hash(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_dir() -> Path:
    """The shipped weights: ``$REGODE_WEIGHTS`` or the repository's ``weights/`` folder."""
    return Path(os.environ.get("REGODE_WEIGHTS", Path(__file__).resolve().parents[2] / "weights"))
