"""A cohort's manifest: one registration per CSV row, checked whole before any work.

Columns (a header row names them; order free):

- ``id`` (required): the row's name, also its output folder ``OUT/ID/`` and prefix ``ID_``;
  letters, digits, ``.``, ``_`` and ``-``; unique;
- ``fixed``, ``moving`` (required): image paths, relative to the manifest's folder unless absolute;
  a ``brain-extract`` row names its head in ``moving`` and leaves ``fixed`` empty;
- ``moving_labels`` (optional): a label image on the moving grid;
- ``command`` (optional): ``register``, ``fit-field`` or ``brain-extract`` (default: the command
  line's ``--command``);
- ``options`` (optional): that command's options as on its command line, e.g.
  ``--model rigid+bspline --seed 1``, over the cohort's ``--options`` (a row's option wins; either
  may name a ``--preset`` and a ``--config`` file);
- ``from``, ``to`` (with ``--bids``): the moving and fixed images' labels (``FLAIR``, ``T1w``) in
  BIDS-style names; the id is then the entities, ``sub-01`` or ``sub-01_ses-1``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import re
import shlex
import types
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import BRAIN_SPEC, BrainExtractConfig
from ..errors import RegodeError
from ..heads import extraction_paths
from ..io import read_grid
from ..io.atomic import check_outputs, input_path
from ..nir.config import SPEC as FIT_SPEC
from ..nir.config import FitConfig
from ..odenet.config import SPEC as REGISTER_SPEC
from ..odenet.config import RegisterConfig
from ..odenet.kinds import KINDS
from ..options import Spec, read_file, resolve
from ..options.cli import parse_args
from ..pipeline import bids_paths, output_paths
from ..templates import is_template, template_file
from .config import COMMANDS

SPECS = {"register": REGISTER_SPEC, "fit-field": FIT_SPEC, "brain-extract": BRAIN_SPEC}
COLUMNS = ("id", "fixed", "moving", "moving_labels", "command", "options", "from", "to")
BIDS_ID = re.compile(r"^sub-[A-Za-z0-9]+(_ses-[A-Za-z0-9]+)?$")
LABEL = re.compile(r"^[A-Za-z0-9]+$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
FORBIDDEN = ("-f", "--fixed", "-m", "--moving", "-o", "--out", "--moving-labels", "--qc", "--no-qc", "--threads")
"""options the manifest's columns and the cohort's ``--out``, ``--no-qc`` and ``--threads`` give instead."""


@dataclass(frozen=True)
class Row:
    """One registration of a cohort."""

    number: int
    """the row's number in the manifest (1 = the first row after the header)."""
    id: str
    fixed: Path | None
    """None for a ``brain-extract`` row, whose one image is ``moving``."""
    moving: Path
    moving_labels: Path | None
    command: str
    config: RegisterConfig | FitConfig | BrainExtractConfig
    source: str | None = None
    """BIDS-style names (``--bids``): the moving image's label, e.g. ``FLAIR``."""
    target: str | None = None
    """BIDS-style names: the fixed image's label, e.g. ``T1w``."""
    sources: dict = field(default_factory=dict)
    """where each setting of ``config`` came from (regode.options.SOURCES)."""
    preset: str | None = None

    def prefix(self, out: Path) -> Path:
        """The row's output prefix: ``OUT/ID/ID_``."""
        return Path(out) / self.id / f"{self.id}_"

    def outputs(self, out: Path, qc: bool = True) -> dict[str, Path]:
        """Every file the row writes: ANTs' names after ``OUT/ID/ID_``, or with BIDS-style names in
        ``OUT/sub-X[/ses-Y]/anat/``; and where a failure is recorded (``error``)."""
        if self.command == "brain-extract":
            paths = extraction_paths(self.prefix(out), qc)
            return {**paths, "error": Path(f"{self.prefix(out)}error.json")}
        deformable = self.command == "fit-field" or not KINDS[self.config.stages[-1]].linear
        if self.source is None:
            paths = output_paths(self.prefix(out), deformable, self.moving_labels is not None, qc)
            return {**paths, "error": Path(f"{self.prefix(out)}error.json")}
        folder = Path(out).joinpath(*self.id.split("_"), "anat")
        paths = bids_paths(folder, self.id, self.source, self.target, self.moving_labels is not None, qc)
        return {**paths, "error": folder / f"{self.id}_from-{self.source}_to-{self.target}_desc-error.json"}

    def log(self, out: Path) -> Path:
        """The row's log (``ID_log.txt``, beside its error record): one line per attempt's start and end."""
        error = self.outputs(out)["error"]
        return error.with_name(error.name[: -len("error.json")] + "log.txt")

    def claim(self, out: Path) -> Path:
        """The file that the process running the row holds (regode.cohort.claim)."""
        log = self.log(out)
        return log.with_name(f".{log.name}.claim")

    def record(self, out: Path) -> Path:
        """The JSON record a complete row has (written last of its outputs)."""
        return self.outputs(out)["json"]


def read_manifest(
    path, out, command: str = "register", options: str = "", qc: bool = True, bids: bool = False
) -> list[Row]:
    """Every row of the manifest at ``path``, each checked: files readable 3D images, a unique id,
    options valid for its command, no output that is an input. Every bad row is reported at once
    (one line each, in one error); nothing is run before."""
    path = Path(path)
    if not path.is_file():
        raise RegodeError(f"manifest not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RegodeError(f"cannot read manifest {path}: {exc}") from None
    if not table:
        raise RegodeError(f"manifest {path} has no rows")
    missing = {"id", "moving"} - set(table[0])
    unknown = set(table[0]) - set(COLUMNS)
    if missing or unknown:
        raise RegodeError(
            f"manifest {path}: "
            + "; ".join(
                ([f"missing column(s) {', '.join(sorted(missing))}"] if missing else [])
                + ([f"unknown column(s) {', '.join(sorted(unknown))}"] if unknown else [])
            )
        )
    rows, problems, seen = [], [], {}
    for number, values in enumerate(table, 1):
        try:
            row = _row(number, values, path.parent, command, options, bids)
            key = (row.id.casefold(), row.source, row.target)  # one folder on a case-insensitive file system
            if key in seen:
                raise RegodeError(
                    f"id {row.id}{f' from {row.source} to {row.target}' if bids else ''} is also row {seen[key]}'s"
                )
            seen[key] = number
            _check_files(row, Path(out), qc)
            rows.append(row)
        except RegodeError as exc:
            problems.append(f"row {number} ({(values.get('id') or '').strip() or 'no id'}): {exc}")
    if problems:
        raise RegodeError(
            f"manifest {path} has {len(problems)} bad row(s), nothing was run:\n  " + "\n  ".join(problems)
        )
    return rows


def _row(number: int, values: dict, base: Path, command: str, options: str, bids: bool) -> Row:
    def cell(name):
        return (values.get(name) or "").strip()

    row_id = cell("id")
    if not NAME.match(row_id):
        raise RegodeError(f"id {row_id!r} is not a name of letters, digits, '.', '_' and '-'")
    source, target = (cell("from"), cell("to")) if bids else (None, None)
    if bids and source == target:
        raise RegodeError(f"from and to are both {source!r}: the forward and inverse files would be one")
    if bids and not (BIDS_ID.match(row_id) and LABEL.match(source) and LABEL.match(target)):
        raise RegodeError(
            "--bids needs an id of BIDS entities (sub-01 or sub-01_ses-1) and from/to labels of letters and digits "
            f"(FLAIR, T1w), not {row_id!r}, {source!r}, {target!r}"
        )
    files = {
        name: (
            Path(cell(name))
            if is_template(cell(name)) and not (base / cell(name)).is_file()
            else _absolute(cell(name), base)
        )
        if cell(name)
        else None
        for name in ("fixed", "moving", "moving_labels")
    }
    which = cell("command") or command
    if which not in COMMANDS:
        raise RegodeError(f"command {which!r} is not one of {', '.join(COMMANDS)}")
    if which == "brain-extract":
        if files["moving"] is None or files["fixed"] is not None or files["moving_labels"] is not None or bids:
            raise RegodeError("a brain-extract row names its head in moving, and no fixed, labels or --bids")
    elif files["fixed"] is None or files["moving"] is None:
        raise RegodeError("fixed and moving are required")
    try:
        row_args, cohort_args = shlex.split(cell("options")), shlex.split(options)
    except ValueError as exc:
        raise RegodeError(f"options: {exc}") from None
    taken = [a for a in row_args + cohort_args if a.split("=", 1)[0] in FORBIDDEN]
    if taken:
        raise RegodeError(f"options {', '.join(taken)}: the manifest's columns and --out give these")
    # the cohort's --options are those of its --command: rows of the other command take only their own
    config, sources, preset = row_settings(which, cohort_args if which == command else [], row_args, base)
    return Row(
        number,
        row_id,
        files["fixed"],
        files["moving"],
        files["moving_labels"],
        which,
        config,
        source,
        target,
        sources=sources,
        preset=preset,
    )


def row_settings(command: str, cohort_args: list[str], row_args: list[str], base: Path):
    """A row's config, each setting's source and the preset: the row's options over the cohort's
    ``--options``, over a ``--config`` file either names (the row's first), over a ``--preset``
    either names, over the defaults. Files named in options or config files are relative to the
    manifest's folder ``base``, like its columns."""
    spec = SPECS[command]
    cohort_given, cohort_preset, cohort_config = _parsed(command, tuple(cohort_args))
    row_given, row_preset, row_config = parse_args(spec, "config", row_args)
    config_file = row_config or cohort_config
    layers = [("config file", read_file(_absolute(config_file, base), spec))] if config_file else []
    layers = [
        (source, {k: v for k, v in values.items() if k.split(".")[0] in _config_fields(spec)})
        for source, values in layers
    ]
    layers += [("cohort options", cohort_given), ("manifest row", row_given)]
    preset = row_preset or cohort_preset
    resolved = resolve(_config_only(spec), layers, preset)
    config = resolved["config"]
    leaves = {name: leaf for name, (section, leaf) in spec.leaves().items() if section == "config"}
    files = {}
    for name in (n for n in leaves if leaves[n].option.path and "." not in n):
        value = getattr(config, name)
        if name == "initial_transform":
            files[name] = tuple(
                str(_absolute(spec_, base))
                if not spec_.startswith("[")
                else f"[{_absolute(spec_[1:-1].rsplit(',', 1)[0], base)},{spec_[1:-1].rsplit(',', 1)[1]}]"
                for spec_ in value
            )
        elif isinstance(value, tuple):
            files[name] = tuple(str(_absolute(v, base)) for v in value)
        elif value:
            files[name] = str(_absolute(value, base))
    return replace(config, **files), resolved.sources, preset


@functools.lru_cache(maxsize=8)
def _parsed(command: str, args: tuple[str, ...]):
    """The cohort's ``--options`` for ``command``, parsed once for all its rows."""
    given, preset, config = parse_args(SPECS[command], "config", list(args))
    return types.MappingProxyType(given), preset, config


def _config_fields(spec: Spec) -> set[str]:
    return {f.name for f in dataclasses.fields(spec.sections["config"])}


def _config_only(spec: Spec) -> Spec:
    """``spec`` without its input files (a row's columns give them)."""
    return Spec(spec.command, {"config": spec.sections["config"]}, spec.presets)


def _absolute(path: str, base: Path) -> Path:
    """``path`` as an absolute path, relative ones taken from the manifest's folder ``base``."""
    path = Path(path.strip())
    return (path if path.is_absolute() else base / path).resolve()


def _check_files(row: Row, out: Path, qc: bool) -> None:
    for what, path in (
        ("fixed image", row.fixed),
        ("moving image", row.moving),
        ("moving label image", row.moving_labels),
    ):
        if path is not None:
            read_grid(
                template_file(path) if is_template(path) else path, what=what
            )  # readable 3D images (headers only)
    initial = getattr(row.config, "initial_transform", ())
    masks = [getattr(row.config, name, None) for name in ("fixed_mask", "moving_mask")]
    others = [input_path(spec) for spec in initial] + [Path(p) for p in getattr(row.config, "checkpoints", ())]
    others += [Path(row.config.encoder)] if getattr(row.config, "encoder", None) else []
    for what, mask in zip(("fixed mask", "moving mask"), masks, strict=True):
        if mask:
            read_grid(mask, what=what)
    for path in others:
        if not path.is_file():
            raise RegodeError(f"file not found: {path}")
    paths = list(row.outputs(out, qc).values())
    folder = paths[0].parent
    inputs = [row.fixed, row.moving, row.moving_labels, *initial, *masks]
    if folder.is_dir():
        check_outputs(paths, inputs)
    else:  # the row's folder is made when it runs: check the names against the inputs here
        sources = {input_path(p).resolve() for p in inputs if p is not None}
        clash = [p for p in paths if p.resolve() in sources]
        if clash:
            raise RegodeError(f"output {clash[0]} is an input")
