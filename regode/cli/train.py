"""``regode train``: train an MS-ODENet kind or the content encoder.

The two trainings share one command: ``--model`` picks TrainConfig (an MS-ODENet kind) or
EncoderTrainConfig (``encoder``), and every other option is declared by one of them, or by both
where it means the same thing (``--steps``, ``--lr``).
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

from ..encoder.config import EncoderTrainConfig
from ..odenet.config import TrainConfig
from ..options import Leaf, Spec, read_file, resolve, to_toml
from ..options.cli import context_parameter, given, keyword, parameter, signed
from .app import QUIET, app, user_errors

SPECS = {"odenet": Spec("train", {"config": TrainConfig}), "encoder": Spec("train", {"config": EncoderTrainConfig})}
"""the settings of ``regode train``: an MS-ODENet's training, or the encoder's (``--model encoder``)."""


def _parameters() -> dict[str, tuple[inspect.Parameter, dict[str, str], Leaf]]:
    """``{python name: (parameter, {spec: dotted name}, leaf)}``: one option per flag of either config."""
    owners: dict[str, dict[str, object]] = {}
    for key, spec in SPECS.items():
        for name, (_, leaf) in spec.leaves().items():
            if leaf.flag:
                owners.setdefault(leaf.flag, {})[key] = (name, leaf)
    out = {}
    for flag, by_spec in owners.items():
        (name, leaf), *others = by_spec.values()
        default, suffix = leaf.default, ""
        if others:
            other = others[0][1]
            if leaf.option.choices:
                leaf = replace(leaf, option=replace(leaf.option, choices=leaf.option.choices + other.option.choices))
            if other.default != leaf.default:
                default, suffix = None, f" [default: {_shown(leaf.default)}; encoder {_shown(other.default)}]"
        elif "encoder" in by_spec:
            suffix = " (encoder)"
        python = "opt_" + flag[2:].replace("-", "_")
        out[python] = (parameter(leaf, python, default, suffix), {key: n for key, (n, _) in by_spec.items()}, leaf)
    return out


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


PARAMS = _parameters()


def _train(
    ctx,
    out: Path,
    synthetic: bool,
    resume: bool,
    threads: int | None,
    quiet: bool,
    config: Path | None,
    print_config: bool,
    **values,
) -> None:
    """Train an MS-ODENet (rigid, affine, bspline or dense) or the content encoder on synthetic or folder data."""
    from ..errors import RegodeError
    from ..options.settings import load_document

    cli = given(ctx, {p: (param, leaf) for p, (param, _, leaf) in PARAMS.items()}, values)  # by dotted name
    flags = {leaf.name: (python, names) for python, (_, names, leaf) in PARAMS.items()}
    document = load_document(config) if config else {}
    table = document.get("model")
    kind = cli.get("model.kind") or (table.get("kind") if isinstance(table, dict) else None)
    if kind is None:
        raise RegodeError("missing --model (rigid, affine, bspline, dense or encoder), or model.kind in --config")
    key = "encoder" if kind == "encoder" else "odenet"
    spec, chosen = SPECS[key], {}
    for name, value in cli.items():
        python, names = flags[name]
        if key not in names:
            other = "the encoder (--model encoder)" if key == "odenet" else "MS-ODENet models"
            raise RegodeError(f"--{python[4:].replace('_', '-')} is for training {other}, not --model {kind}")
        chosen[names[key]] = value
    if synthetic or "generator" in chosen:  # synthetic data on the command line: over a config file's data
        if chosen.get("data") is not None:
            raise RegodeError("use either --data DIR or synthetic data (--synthetic, --generator), not both")
        chosen["data"] = None
    layers = [("config file", read_file(config, spec))] if config else []
    resolved = resolve(spec, [*layers, ("command line", chosen)])
    if print_config:
        print(to_toml(spec, resolved), end="")
        return
    import torch

    from ..checkpoint import training_files
    from ..io.atomic import check_outputs

    settings = resolved["config"]
    if threads:
        torch.set_num_threads(threads)
    ckpt, log = training_files(out)
    inputs = [
        *getattr(settings, "label_maps", ()),
        getattr(settings, "encoder", None),
        getattr(settings, "init", None),
        *getattr(settings, "validate_data", ()),
    ]
    check_outputs([out] if resume else [out, ckpt, log], inputs)  # resuming reads and rewrites OUT.ckpt
    steps = chosen.get("steps")
    if key == "encoder":
        from ..encoder.train import train as run

        result = run(settings, out, resume=resume, progress=not quiet, steps=steps)
        last = result["history"][-1]
        print(
            f"wrote {out}: {result['steps']} steps in {result['seconds'] / 60:.1f} min, validation "
            f"cross-translation L1 "
            f"{last['cross_l1']:.3f}, content ratio aligned/shifted {last['content_ratio']:.3f}"
            + (f", distances in order of misalignment {last['ordered']:.2f}" if "ordered" in last else "")
        )
        return
    from ..odenet.train import train as run

    result = run(settings, out, resume=resume, progress=not quiet, steps=steps)
    last = result["history"][-1] if result["history"] else {"val_rmse_mm": float("nan")}
    folders = "".join(
        f", {k.removeprefix('val_rmse_mm_')} {v:.2f} mm" for k, v in last.items() if k.startswith("val_rmse_mm_")
    )
    print(
        f"wrote {out}: {result['steps']} steps in {result['seconds'] / 60:.1f} min, validation RMSE(phi) "
        f"{last['val_rmse_mm']:.2f} mm{folders}"
    )


OWN = [
    keyword("out", Path, "--out", "-o", help="Final model file (OUT.ckpt holds the resumable state, OUT.log.jsonl "
            "the log)."),
    keyword("synthetic", bool, "--synthetic", default=False, help="Train on generated data (the default when --data is "
            "not given)."),
    keyword("resume", bool, "--resume", default=False, help="Continue from OUT.ckpt with its saved config (--steps may "
            "extend it)."),
    keyword("threads", int | None, "--threads", default=None, min=0, help="CPU threads (default: all cores)."),
    QUIET,
    keyword("config", Path | None, "--config", default=None, help="Settings from a TOML file; options given here win."),
    keyword("print_config", bool, "--print-config", default=False, help="Print the resolved settings as TOML (for "
            "--config) and exit."),
]  # fmt: skip
"""``regode train``'s run controls: where the model goes, resuming, threads, the progress bar, config files."""
train = app.command("train")(
    user_errors(signed(_train, [context_parameter(), *OWN, *(param for param, _, _ in PARAMS.values())], "train"))
)
