"""Options declared once (regode.options): every option of every command reaches its config from the
command line, a config file and a manifest row, whatever its value; a preset never overrides the
user; a run replays from its PREFIXregode.json byte for byte."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from regode.cli.app import run
from regode.grid import Grid
from regode.io import write_image
from regode.options import leaves
from regode.synthetic import phantom_labels, render

if True:  # the specs of the commands whose options go through the schema
    from regode.bench.config import SPEC as BENCH
    from regode.cli.train import SPECS as TRAIN
    from regode.cohort.config import SPEC as COHORT
    from regode.config import BRAIN_SPEC as BRAIN
    from regode.config import WARP_SPEC as WARP
    from regode.nir.config import SPEC as FIT
    from regode.odenet.config import DEMO_SPEC as DEMO
    from regode.odenet.config import SPEC as REGISTER

GRID = Grid((16, 18, 14), (2.0, 2.0, 2.0), (-16.0, -18.0, -14.0))
SPECIAL = {
    "model": "affine+dense",
    "schedule": "F(0.5)-F(0.5)-F(0.5)",
    "methods": ["identity", "regode:rigid"],
    "model.kind": "bspline",
    "slices": 7,
    "options": "--seed 3",
    "walltime": "00:10:00",
    "memory": "2GB",
}
"""values for settings whose value is constrained beyond their declaration."""


def _other(leaf):
    """A valid value of ``leaf`` other than its default (as TOML writes it)."""
    name, option, default = leaf.name, leaf.option, leaf.default
    if name in SPECIAL or leaf.path[-1] in SPECIAL:
        return SPECIAL.get(name, SPECIAL.get(leaf.path[-1]))
    if option.choices:  # a tuple of choices (register's --metric, one per channel) takes a list
        several = isinstance(default, tuple)
        choice = next(c for c in option.choices if c not in (default if several else (default,)))
        return [choice] if several else choice
    if isinstance(default, bool):
        return not default
    if isinstance(default, tuple) or leaf.type in ("tuple[str, ...]",):
        return ["/tmp/a.nii.gz"]
    if isinstance(default, int):
        return default + 1 if option.high is None else min(option.high, default + 1)
    if isinstance(default, float):
        value = default * 1.5 + 0.5
        return value if option.high is None else (default + option.high) / 2
    if option.path:
        return "/tmp/file.nii.gz"
    kind = str(leaf.type)
    if "int" in kind:
        return 3
    if "float" in kind:
        return 2.5
    return "x"


def _cases(spec, base: dict):
    """(dotted name, value) for every flagged setting of ``spec``: a value other than the default,
    and the default itself (where it has a spelling: None has none unless its word)."""
    for name, (_, leaf) in spec.leaves().items():
        if leaf.flag is None or name in base:
            continue
        yield name, leaf, _other(leaf)
        default = leaf.default
        if default is None and leaf.option.none:
            default = leaf.option.none
        if default is not None and default != ():
            yield name, leaf, list(default) if isinstance(default, tuple) else default


def _argv(leaf, value) -> list[str]:
    if isinstance(value, bool):
        return [leaf.flag if value else "--no-" + leaf.flag[2:]]
    if isinstance(value, list):
        if leaf.option.separator:
            return [leaf.flag, leaf.option.separator.join(map(str, value))]
        return [a for v in value for a in (leaf.flag, str(v))]
    return [leaf.flag, str(value)]


def _printed(capsys, args) -> dict:
    from regode.options.settings import _toml

    code = run([str(a) for a in args] + ["--print-config"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return _toml().loads(out)


def _at(table: dict, name: str):
    for part in name.split("."):
        table = table[part]
    return table


def _nested(values: dict) -> dict:
    table: dict = {}
    for name, value in values.items():
        node = table
        for part in name.split(".")[:-1]:
            node = node.setdefault(part, {})
        node[name.split(".")[-1]] = value
    return table


COMMANDS = {
    "register": (
        REGISTER,
        ["register", "-o", "x_"],
        {"fixed": "/tmp/f.nii.gz", "moving": "/tmp/m.nii.gz", "model": "rigid+bspline"},
    ),
    "fit-field": (FIT, ["fit-field", "-o", "x_"], {"fixed": "/tmp/f.nii.gz", "moving": "/tmp/m.nii.gz"}),
    "bench": (BENCH, ["bench"], {"data": "/tmp/data"}),
    "cohort": (COHORT, ["cohort", "manifest.csv", "--out", "o"], {}),
    "train": (TRAIN["odenet"], ["train", "-o", "m.pt"], {"model.kind": "bspline"}),
    "train encoder": (TRAIN["encoder"], ["train", "-o", "m.pt"], {"model.kind": "encoder"}),
    "warp": (WARP, ["warp", "-o", "w.nii.gz"], {"input": "/tmp/i.nii.gz", "reference": "/tmp/r.nii.gz"}),
    "demo": (DEMO, ["demo"], {}),
    "brain-extract": (BRAIN, ["brain-extract", "-o", "b_"], {"input": "/tmp/head.nii.gz"}),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_reaches_the_config_from_the_command_line_and_a_config_file(command, capsys, tmp_path):
    """Each flagged setting, given as an option (a value other than its default, and its default)
    or in a TOML file, is what the resolved config holds (regode COMMAND --print-config)."""
    spec, argv, base = COMMANDS[command]
    known = spec.leaves()
    base_args = [a for name, value in base.items() for a in _argv(known[name][1], value)]
    checked = 0
    for name, leaf, value in _cases(spec, base):
        printed = _printed(capsys, argv + base_args + _argv(leaf, value))
        assert _at(printed, name) == value, (name, value)
        file = tmp_path / f"{checked}.toml"
        file.write_text(tomli_w.dumps(_nested({**{n: v for n, v in base.items() if n != "model.kind"}, name: value})))
        extra = (
            _argv(known["model.kind"][1], base["model.kind"]) if "model.kind" in base and name != "model.kind" else []
        )
        printed = _printed(capsys, argv + extra + ["--config", file])
        assert _at(printed, name) == value, (name, value, "config file")
        checked += 1
    assert checked >= len([1 for _, (_, leaf) in known.items() if leaf.flag]) - len(base)


@pytest.mark.parametrize("command", ["register", "fit-field"])
def test_every_option_reaches_a_manifest_row(command, tmp_path):
    """A row's options reach its config with the source "manifest row"; the cohort's --options
    fill what the row leaves, with the source "cohort options"."""
    from regode.cohort.manifest import row_settings

    spec = COMMANDS[command][0]
    checked = 0
    for name, leaf, value in _cases(spec, {"fixed": 0, "moving": 0, "moving_labels": 0, "qc": 0}):
        row = _argv(leaf, value) + (["--model", "rigid+bspline"] if command == "register" and name != "model" else [])
        config, sources, _ = row_settings(command, ["--seed", "7"] if name != "seed" else [], row, tmp_path)
        got = getattr(getattr(config, leaf.path[0]), leaf.path[1]) if len(leaf.path) == 2 else getattr(config, name)
        expected = value
        if leaf.option.path:  # relative to the manifest's folder; these are absolute already
            expected = tuple(value) if isinstance(value, list) else value
        if isinstance(got, tuple) and not leaf.option.path:
            got = list(got)
        if leaf.option.none is not None and value == leaf.option.none:
            expected = None
        assert got == expected, (name, got, expected)
        assert sources[name] == "manifest row"
        if name != "seed":
            assert config.seed == 7 and sources["seed"] == "cohort options"
        checked += 1
    assert checked > 20


def test_a_preset_never_overrides_an_option_the_user_gave(capsys):
    """``fit-field --preset inter-subject --lambda-grad 5 --metric mi``: 5 (FitConfig's default) and
    mi (the default, where the preset says auto) win; the preset fills the rest."""
    printed = _printed(
        capsys,
        [
            "fit-field",
            "-f",
            "a",
            "-m",
            "b",
            "-o",
            "x_",
            "--preset",
            "inter-subject",
            "--lambda-grad",
            "5",
            "--metric",
            "mi",
        ],
    )
    assert printed["lambda_grad"] == 5.0 and printed["metric"] == "mi"
    assert printed["lambda_fold"] == 100.0 and printed["affine"] and printed["fine_spacing"] == "auto"


def test_the_layers_rank_command_line_config_file_preset_default(tmp_path):
    """The command line over --config over the preset over the default, each source recorded."""
    from regode.options import read_file, resolve

    (tmp_path / "c.toml").write_text('fixed = "f"\nmoving = "m"\nlambda_fold = 7.0\nlambda_grad = 2.0\n')
    layers = [("config file", read_file(tmp_path / "c.toml", FIT)), ("command line", {"lambda_grad": 3.0})]
    resolved = resolve(FIT, layers, "inter-subject")
    config = resolved["config"]
    assert (config.lambda_grad, config.lambda_fold, config.affine, config.seed) == (3.0, 7.0, True, 0)
    assert resolved.sources["lambda_grad"] == "command line" and resolved.sources["lambda_fold"] == "config file"
    assert resolved.sources["affine"] == "preset" and resolved.sources["seed"] == "default"


@pytest.mark.parametrize(
    "text,words",
    [
        ("lamda_grad = 2.0\n", "unknown setting 'lamda_grad'"),
        ('lambda_grad = "a lot"\n', "--lambda-grad must be a number"),
        ("lambda_grad = -1.0\n", "--lambda-grad must be at least 0"),
        ('metric = "best"\n', "unknown --metric 'best'"),
        ('out = "x_"\n', "'out'"),
        ("lambda_grad = \n", "cannot read it"),
        ("iterations = inf\n", "--iterations must be a whole number"),
        ('network = "grid"\n', "network is a table of settings"),
    ],
)
def test_a_bad_config_file_is_one_error_line_naming_it(tmp_path, capfd, text, words):
    (tmp_path / "c.toml").write_text(text)
    code = run(["fit-field", "-f", "a", "-m", "b", "-o", str(tmp_path / "x_"), "--config", str(tmp_path / "c.toml")])
    err = capfd.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("regode: error:") and words in err[0], err


def test_a_record_of_another_command_or_version(tmp_path, capfd):
    """A PREFIXregode.json of fit-field is no register config; one of another version warns, and so
    does a setting this version does not know (which is then left out); a JSON that names no
    command is no record."""
    record = {"regode": "0.0.1", "command": "fit-field", "fixed": "f", "moving": "m", "timings_s": {},
              "config": {"lambda_grad": 2.0, "lamda_fold": 3.0}}  # fmt: skip
    (tmp_path / "r_regode.json").write_text(json.dumps(record))
    assert run(["register", "-o", "x_", "--config", str(tmp_path / "r_regode.json"), "--print-config"]) == 1
    assert "not of regode register" in capfd.readouterr().err
    assert run(["fit-field", "-o", "x_", "--config", str(tmp_path / "r_regode.json"), "--print-config"]) == 0
    out, err = capfd.readouterr()
    assert "lambda_grad = 2.0" in out and "lambda_fold = 10.0" in out and "0.0.1" in err and "'lamda_fold'" in err
    (tmp_path / "bench.json").write_text(json.dumps({"config": {"pairs": 3}, "summary": {}}))
    assert run(["fit-field", "-o", "x_", "-f", "a", "-m", "b", "--config", str(tmp_path / "bench.json")]) == 1
    assert "not of regode fit-field" in capfd.readouterr().err


@pytest.mark.parametrize("command,changed", [
    (["train", "-o", "m.pt", "--model", "rigid"], ["--model", "bspline", "--levels", "4", "--steps", "100"]),
    (["register", "-o", "x_", "-f", "a", "-m", "b"], ["--model", "affine+dense"]),
])  # fmt: skip
def test_a_printed_config_works_its_defaults_out_again(capsys, tmp_path, command, changed):
    """--print-config, read back with --config under another --model, --levels or --steps, is the
    config those options give alone: what a config works out from other settings (L_reg from the
    kind, the schedule and horizon from the levels, the curriculum's pairs from the steps) is not
    frozen into the file."""
    assert run([str(a) for a in command] + ["--print-config"]) == 0
    (tmp_path / "c.toml").write_text(capsys.readouterr().out)
    assert _printed(capsys, command + changed + ["--config", tmp_path / "c.toml"]) == _printed(
        capsys, command + changed
    )


def test_settings_of_config_files_only(capsys, tmp_path):
    """Settings with no option (a polish schedule, the training motion's control spacings) are read
    from a TOML file; a bad one is one error line naming it."""
    (tmp_path / "r.toml").write_text(
        "[polish_schedule.dense]\nstep = 0.2\n[[polish_schedule.bspline.levels]]\ncoarseness = 1\nstride = 2\n"
        "iterations = 7\n"
    )
    schedule = _printed(capsys, ["register", "-o", "x_", "-f", "a", "-m", "b", "--config", tmp_path / "r.toml"])[
        "polish_schedule"
    ]
    assert schedule["dense"]["step"] == 0.2 and schedule["dense"]["control_spacing"] == 10  # the rest: dense's own
    assert schedule["bspline"]["levels"] == [{"coarseness": 1, "stride": 2, "iterations": 7}]
    (tmp_path / "t.toml").write_text('[model]\nkind = "dense"\n[motion]\ncontrol_spacings = [25.0, 35.0]\n')
    printed = _printed(capsys, ["train", "-o", "m.pt", "--config", tmp_path / "t.toml"])
    assert printed["motion"]["control_spacings"] == [25.0, 35.0] and printed["model"]["kind"] == "dense"
    (tmp_path / "bad.toml").write_text(
        '[[polish_schedule.rigid.levels]]\ncoarseness = "a"\nstride = 1\niterations = 1\n'
    )
    assert run(["register", "-o", "x_", "-f", "a", "-m", "b", "--config", str(tmp_path / "bad.toml")]) == 1
    assert "polish level" in capsys.readouterr().err


def test_train_needs_a_model_kind(capfd):
    assert run(["train", "-o", "m.pt", "--print-config"]) == 1
    assert "missing --model" in capfd.readouterr().err


def _hashes(folder: Path, skip=("regode.json",)) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if not p.name.endswith(skip)
    }


@pytest.fixture
def pair(tmp_path):
    labels = phantom_labels(GRID, 6, 3)
    write_image(render(labels, GRID, 1), GRID, tmp_path / "fixed.nii.gz")
    write_image(render(labels, GRID, 2), GRID, tmp_path / "moving.nii.gz")
    write_image(labels, GRID, tmp_path / "labels.nii.gz", np.int16)
    return tmp_path


@pytest.mark.parametrize(
    "command,options",
    [
        ("register", ["--model", "rigid+bspline", "--seed", "3"]),
        (
            "fit-field",
            [
                "--preset",
                "inter-subject",
                "--lambda-grad",
                "5",
                "--metric",
                "mi",
                "--iterations",
                "5",
                "--coarse-iterations",
                "5",
                "--affine-iterations",
                "5",
                "--fine-spacing",
                "0",
                "-q",
            ],
        ),
    ],
)
def test_a_run_replays_from_its_record_byte_for_byte(pair, command, options):
    """Register a pair with --threads 1, then ``regode COMMAND --config A/run_regode.json -o
    B/run_`` (the inputs from the record): the same files, byte for byte (the record's timings aside)."""
    (pair / "A").mkdir()
    (pair / "B").mkdir()
    first = [
        command,
        "-f",
        pair / "fixed.nii.gz",
        "-m",
        pair / "moving.nii.gz",
        "--moving-labels",
        pair / "labels.nii.gz",
        "-o",
        pair / "A" / "run_",
        "--threads",
        "1",
        *options,
    ]
    assert run([str(a) for a in first]) == 0
    record = json.loads((pair / "A" / "run_regode.json").read_text())
    assert record["sources"]["threads"] == "command line" and record["sources"]["device"] == "default"
    if command == "fit-field":
        assert (
            record["config"]["lambda_grad"] == 5.0 and record["config"]["metric"] == "mi" and record["config"]["affine"]
        )
        assert record["sources"]["lambda_grad"] == record["sources"]["metric"] == "command line"
        assert record["sources"]["affine"] == "preset" and record["preset"] == "inter-subject"
    assert (
        run(
            [command, "--config", str(pair / "A" / "run_regode.json"), "-o", str(pair / "B" / "run_")]
            + (["-q"] if command == "fit-field" else [])
        )
        == 0
    )
    a, b = _hashes(pair / "A"), _hashes(pair / "B")
    assert len(a) >= 6 and a == b
    replayed = json.loads((pair / "B" / "run_regode.json").read_text())
    assert replayed["config"] == record["config"] and set(replayed["sources"].values()) == {"config file"}


def test_nothing_outside_the_command_line_package_imports_it():
    """``regode.cli`` is the top: no other module of regode imports it (the cohort parses a row's
    options from the declarations, not through the command line's modules)."""
    root = Path(__file__).resolve().parents[1] / "regode"
    pattern = re.compile(r"^\s*(from\s+(regode\.cli|\.+cli)\b|import\s+regode\.cli\b)", re.M)
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "cli" not in p.relative_to(root).parts[:1] and pattern.search(p.read_text())
    ]
    assert not offenders


def test_every_config_field_is_declared():
    """Every field of every command's config is a declared setting or a nested config of them."""
    import dataclasses
    import typing

    for spec in (REGISTER, FIT, BENCH, COHORT, WARP, DEMO, BRAIN, *TRAIN.values()):
        stack = list(spec.sections.values())
        while stack:
            current = stack.pop()
            hints = typing.get_type_hints(current)
            for f in dataclasses.fields(current):
                assert "option" in f.metadata or "group" in f.metadata, f"{current.__name__}.{f.name}"
                if "group" in f.metadata:
                    stack.append(hints[f.name])
        assert leaves(next(iter(spec.sections.values())))


def test_the_cascades_are_the_rule_s():
    """``MODELS`` is every cascade the rule allows: today's 11, linear kinds first, one deformable
    kind at most, last; nothing else."""
    from regode.odenet.registry import MODELS, valid_cascade

    today = "rigid affine bspline dense rigid+affine rigid+bspline rigid+dense affine+bspline affine+dense"
    assert MODELS == tuple(today.split()) + ("rigid+affine+bspline", "rigid+affine+dense")
    for bad in ("affine+rigid", "bspline+dense", "bspline+rigid", "rigid+rigid", "rigid+warp", ""):
        assert not valid_cascade(bad.split("+")), bad


def test_a_new_kind_is_one_registry_entry(monkeypatch):
    """The recipe of docs/architecture.md: a kind is an entry whose behaviour and network are named
    by module; the cascade rule admits it, and its behaviour is built from the entry. (The
    registry's derived tables, MODELS and PolishConfig, are made when it is imported.)"""
    from dataclasses import replace

    from regode.odenet import registry

    shift = replace(registry.KINDS["rigid"], name="shift", polished_levels=None)
    kinds = {
        "rigid": registry.KINDS["rigid"],
        "shift": shift,
        **{k: v for k, v in registry.KINDS.items() if k != "rigid"},
    }
    monkeypatch.setattr(registry, "KINDS", kinds)
    assert registry.valid_cascade(["rigid", "shift", "bspline"]) and not registry.valid_cascade(["shift", "rigid"])
    assert registry.inter_subject("affine+bspline") and not registry.inter_subject("rigid+shift+bspline")
    behaviour = shift.load()(shift)
    assert (behaviour.name, behaviour.linear, behaviour.network.__name__) == ("shift", True, "RigidNet")
