"""A study template from NiChart's Subj1-Subj8 (T1 heads, 2 mm) by ``regode template`` and by
antspyx's ``ants.build_template`` (SyN), then Subj9-Subj12 registered to each, to ``mni152`` and to
Subj1: the mean pairwise Dice of those four subjects' DLMUSE labels in each space, and the time of
each template build. Each step is skipped when its outputs exist (the run can be resumed).

    python benchmarks/template_nichart.py --data NICHART_FOLDER --out /tmp/template-bench --iterations 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REGODE = [sys.executable, "-c", "from regode.cli import main; main()"]
BUILD, HELD_OUT = [f"Subj{i}" for i in range(1, 9)], [f"Subj{i}" for i in range(9, 13)]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the labels present in either map (background left out)."""
    labels = np.union1d(np.unique(a), np.unique(b))
    labels = labels[labels > 0]
    scores = [2 * ((a == v) & (b == v)).sum() / max(1, (a == v).sum() + (b == v).sum()) for v in labels]
    return float(np.mean(scores))


def pairwise(label_files: list[Path]) -> float:
    maps = [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in label_files]
    return float(np.mean([dice(a, b) for a, b in itertools.combinations(maps, 2)]))


def regode_template(data: Path, out: Path, iterations: int, threads: int) -> float:
    folder = out / "regode"
    if (folder / "template.json").is_file():
        return json.loads((out / "times.json").read_text())["regode_template_s"]
    out.mkdir(parents=True, exist_ok=True)
    rows = ["id,t1"] + [f"{s},{data / s / 't1.nii.gz'}" for s in BUILD]
    (out / "build.csv").write_text("\n".join(rows) + "\n")
    start = time.perf_counter()
    command = ["template", str(out / "build.csv"), "--out", str(folder), "--iterations", str(iterations)]
    subprocess.run([*REGODE, *command, "--threads", str(threads), "--workers", "1", "-q"], check=True)
    return time.perf_counter() - start


def regode_to(fixed: str, data: Path, folder: Path, threads: int) -> list[Path]:
    """Subj9-12 registered to ``fixed`` by fit-field; their labels warped there."""
    folder.mkdir(parents=True, exist_ok=True)
    warped = []
    for s in HELD_OUT:
        prefix = folder / f"{s}_"
        if not Path(f"{prefix}WarpedLabels.nii.gz").is_file():
            args = ["fit-field", "-f", fixed, "-m", str(data / s / "t1.nii.gz"), "-o", str(prefix)]
            args += ["--moving-labels", str(data / s / "labels.nii.gz"), "--threads", str(threads), "--seed", "1"]
            subprocess.run([*REGODE, *args, "-q"], check=True)
        warped.append(Path(f"{prefix}WarpedLabels.nii.gz"))
    return warped


def ants_template(data: Path, out: Path, iterations: int) -> tuple[float, list[Path]]:
    import ants

    folder = out / "ants"
    folder.mkdir(parents=True, exist_ok=True)
    template_path = folder / "template.nii.gz"
    seconds = None
    if not template_path.is_file():
        images = [ants.image_read(str(data / s / "t1.nii.gz")) for s in BUILD]
        start = time.perf_counter()
        template = ants.build_template(image_list=images, iterations=iterations, type_of_transform="SyN")
        seconds = time.perf_counter() - start
        ants.image_write(template, str(template_path))
    template = ants.image_read(str(template_path))
    warped = []
    for s in HELD_OUT:
        path = folder / f"{s}_WarpedLabels.nii.gz"
        if not path.is_file():
            moving = ants.image_read(str(data / s / "t1.nii.gz"))
            reg = ants.registration(template, moving, type_of_transform="SyN")
            labels = ants.image_read(str(data / s / "labels.nii.gz"))
            moved = ants.apply_transforms(template, labels, reg["fwdtransforms"], interpolator="genericLabel")
            ants.image_write(moved, str(path))
        warped.append(path)
    return seconds, warped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the NiChart folder (Subj1 ... Subj12)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-ants", action="store_true")
    args = parser.parse_args()
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    times_path = args.out / "times.json"
    seconds = regode_template(args.data, args.out, args.iterations, args.threads)
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    times["regode_template_s"] = seconds
    times_path.write_text(json.dumps(times, indent=2))
    results = {
        "regode template": pairwise(regode_to(str(args.out / "regode" / "template_t1.nii.gz"), args.data,
                                              args.out / "to-regode", args.threads)),
        "mni152": pairwise(regode_to("mni152", args.data, args.out / "to-mni152", args.threads)),
        "Subj1": pairwise(regode_to(str(args.data / "Subj1" / "t1.nii.gz"), args.data, args.out / "to-subj1",
                                    args.threads)),
    }  # fmt: skip
    if not args.skip_ants:
        ants_seconds, warped = ants_template(args.data, args.out, args.iterations)
        if ants_seconds is not None:
            times["ants_template_s"] = ants_seconds
            times_path.write_text(json.dumps(times, indent=2))
        results["ants.build_template (SyN), held-out by SyN"] = pairwise(warped)
    updates = json.loads((args.out / "regode" / "template.json").read_text())["updates"]
    print(json.dumps({"pairwise_dice": results, "times_s": times, "regode_updates_mm": updates}, indent=2))


if __name__ == "__main__":
    main()
