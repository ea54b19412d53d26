"""The documentation: the README's length and quick start, the site's build and start page, the CLI
reference against the app, and no development history where a user reads."""

from __future__ import annotations

import http.server
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from regode.cli import app
from regode.demo import brain_pair
from regode.io import write_image
from regode.transforms import Affine
from regode.warp import resample

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def block(text: str, name: str) -> str:
    start, end = text.index(f"--8<-- [start:{name}]"), text.index(f"--8<-- [end:{name}]")
    return text[start:end]


def test_readme_is_short_and_has_its_sections():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    for heading in ("## Install", "## Quick start", "## Outputs", "## Results", "## Citing", "## Licence"):
        assert heading in text


def quick_start_files(folder: Path) -> None:
    """The files the README's quick start names: a synthetic T1 head with a skull (regode.anatomy,
    2 mm), the demo's T2-like MNI brain moved by 3 mm standing in for the FLAIR, the demo's tissue
    labels as an atlas in MNI space (2 mm), and a one-row manifest."""
    from regode.anatomy import draw_subject, render_subject

    grid, _, second, labels = brain_pair(0)
    coarse = grid.with_spacing(2.0)
    identity = Affine(torch.eye(3, dtype=torch.float64)[None], torch.zeros(1, 3, dtype=torch.float64))
    shift = Affine(torch.eye(3, dtype=torch.float64)[None], torch.tensor([[3.0, 0.0, -2.0]], dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    head = draw_subject(gen, spacing=2.0, size=96, max_sigma=4.0, skull=True)
    t1 = render_subject(head, gen, partial_fov=0.0, means=torch.tensor([0.0, 0.15, 0.5, 0.8, 0.1, 0.7]))
    write_image(t1, head.grid, folder / "sub-01_T1w.nii.gz")
    write_image(resample(second, grid, coarse, shift), coarse, folder / "sub-01_FLAIR.nii.gz")
    write_image(
        resample(labels.float(), grid, coarse, identity, "label"), coarse, folder / "atlas_labels.nii.gz", np.int16
    )
    (folder / "subjects.csv").write_text("id,fixed,moving\nsub-01,sub-01_T1w.nii.gz,sub-01_FLAIR.nii.gz\n")


def test_every_quick_start_command_runs(tmp_path, monkeypatch):
    commands = [line for line in block(README.read_text(), "quickstart").splitlines() if line.startswith("regode ")]
    assert len(commands) == 4
    quick_start_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        result = CliRunner().invoke(app, [*shlex.split(command)[1:], *(["-q"] if " cohort " in command else [])])
        assert result.exit_code == 0, f"{command}\n{result.output}"
    for name in (
        "flair_to_t1_Warped.nii.gz",
        "t1_to_mni_1InverseWarp.nii.gz",
        "t1_to_mni_WarpedBrainMask.nii.gz",  # the head's brain was extracted
        "derivatives/summary.csv",
    ):
        assert (tmp_path / name).is_file(), name
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels_in_t1.nii.gz")))
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # label interpolation kept the atlas's labels


# ---------------------------------------------------------------------------------------------
# the site

needs_mkdocs = pytest.mark.skipif(shutil.which("mkdocs") is None, reason="mkdocs not installed (bash install.sh docs)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built with ``mkdocs build --strict`` (a broken link or anchor fails it)."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # the CLI reference runs this Python's `typer`
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "NO_MKDOCS_2_WARNING": "1",
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def command_sections(html: str) -> dict[str, str]:
    """The reference page's text per command: from its ``regode COMMAND`` heading to the next."""
    parts = re.split(r'<h2 id="regode-([a-z-]+)">', html)
    text = lambda part: re.sub(r"<[^>]+>", " ", part).replace("&#x27;", "'")  # noqa: E731
    return {name: text(part) for name, part in zip(parts[1::2], parts[2::2], strict=True)}


@needs_mkdocs
def test_the_cli_reference_lists_every_option_of_every_command(site):
    import typer.main

    sections = command_sections((site / "reference" / "cli.html").read_text())
    group = typer.main.get_command(app)
    assert set(sections) == set(group.commands)
    for name, command in group.commands.items():
        for param in command.params:
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("-"):
                    assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", sections[name]), f"{name} {opt}"


@needs_mkdocs
def test_the_model_cards_and_api_are_on_the_site(site):
    card = (site / "models" / "rigid.html").read_text()
    assert "Training" in card and "regode train" in card
    api = (site / "reference" / "api.html").read_text()
    assert "register_files" in api and "apply_transforms" in api


class Logged(http.server.SimpleHTTPRequestHandler):
    requests: list[tuple[str, int]] = []

    def log_request(self, code="-", size="-"):
        Logged.requests.append((self.path, int(code)))

    def log_message(self, *args):
        pass


@needs_mkdocs
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_the_start_page_opens_in_a_browser_with_every_request_served(site, tmp_path):
    html = (site / "index.html").read_text()
    # offline: no stylesheet, script, font or image from another host
    assert not re.findall(r'<(?:link|script|img)[^>]+(?:href|src)="(?:https?:)?//', html)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Logged(*a, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    page = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    try:
        dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
        shot = tmp_path / "start.png"
        subprocess.run(
            [*flags, f"--screenshot={shot}", "--window-size=1280,900", page], capture_output=True, timeout=120
        )
    finally:
        server.shutdown()
    assert "<title>regode</title>" in dom
    assert "User guide" in dom and "Coming from ANTs" in dom and "Command line" in dom  # the navigation
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", dom))  # code is split into highlighted spans
    assert "Quick start" in text and "regode register -f sub-01_T1w.nii.gz" in text
    assert Logged.requests and all(code < 400 for _, code in Logged.requests), Logged.requests
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(shot)))
    assert image.shape[:2] == (900, 1280) and image.std() > 5  # not a blank page
    keep = ROOT / ".pytest_cache" / "start_page.png"  # for a person to look at
    keep.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, keep)


# ---------------------------------------------------------------------------------------------
# no development history where a user reads

USER_FACING = ["README.md", "docs", "regode", "tests", "weights"]
HISTORY = [
    re.compile(r"\bsess" r"ions?\b", re.IGNORECASE),  # split so that this file does not match itself
    re.compile(r"\b[Ii]ss" r"ue [0-9]+"),
]
OUTSIDE = [re.compile(r"\.\./sha" r"red"), re.compile(r"this mach" r"ine", re.I), re.compile(r"this (2-core )?C" r"PU")]


def text_files(names: list[str]):
    for name in names:
        path = ROOT / name
        for file in [path] if path.is_file() else sorted(path.rglob("*")):
            if file.is_file() and file.suffix in {".md", ".py", ".toml", ".yml", ".html", ".txt", ".cfg"}:
                yield file


@pytest.mark.parametrize("patterns,where", [(HISTORY, USER_FACING), (OUTSIDE, ["README.md", "docs", "weights"])])
def test_no_development_history_or_outside_paths(patterns, where):
    found = [
        f"{file.relative_to(ROOT)}:{n}: {line.strip()[:100]}"
        for file in text_files(where)
        for n, line in enumerate(file.read_text(errors="replace").splitlines(), 1)
        if any(p.search(line) for p in patterns)
    ]
    assert not found, "\n".join(found[:20])


# ---------------------------------------------------------------------------------------------
# the results script


def test_the_results_script_runs_one_pair_per_problem_and_rewrites_the_table(tmp_path):
    import importlib.util

    from regode.grid import Grid
    from regode.synthetic import phantom_labels, render

    spec = importlib.util.spec_from_file_location("results", ROOT / "benchmarks" / "results.py")
    results = importlib.util.module_from_spec(spec)
    sys.modules["results"] = results  # its dataclasses look their module up
    spec.loader.exec_module(results)
    data = tmp_path / "data"
    for dataset, contrasts, seg in (("brats", ("t1", "t2"), "seg"), ("nichart", ("t1",), "labels")):
        for s in range(2):
            grid = Grid((40, 44, 36), (2.0, 2.0, 2.0), (-39.0 + s, -43.0, -35.0))
            labels = phantom_labels(grid, 6, seed=s)
            (data / dataset / f"sub{s}").mkdir(parents=True)
            for c, contrast in enumerate(contrasts):
                write_image(
                    render(labels, grid, seed=10 * s + c), grid, data / dataset / f"sub{s}" / f"{contrast}.nii.gz"
                )
            write_image(labels, grid, data / dataset / f"sub{s}" / f"{seg}.nii.gz", np.uint8)
    page = tmp_path / "README.md"
    page.write_text(f"# t\n\n{results.BEGIN}\nold\n{results.END}\n\nafter\n")
    results.main(
        [
            "--data",
            str(data),
            "--smoke",
            "--threads",
            "1",
            "--work",
            str(tmp_path / "w"),
            "--update",
            "--pages",
            str(page),
        ]
    )
    text = page.read_text()
    assert "old" not in text and text.endswith(f"{results.END}\n\nafter\n") and "Smoke run" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "`regode" in line]
    assert len(table) == sum(m.startswith("regode:") for p in results.PROBLEMS for m, _ in p.methods)
    assert all(re.search(r"\| \d+\.\d \|", row) for row in table)  # a Dice figure in every row
