"""Raw T1 heads to the MNI ICBM152 2009 template (``mni152``, 1 mm): regode's one command against
ANTs and greedy on the same extracted brains.

For each subject of ``DATA/nichart`` (``t1.nii.gz``, a head at 2 mm, and its DLMUSE
``labels.nii.gz``) and each method, the head goes to the template and its labels follow:

- ``regode`` (``--model``, default affine+dense): ``regode register -f mni152 -m HEAD
  --moving-labels LABELS`` as a user runs it, brain extraction included (``--skull-strip auto``);
- ``regode-head``: the same with ``--skull-strip no`` (the head registered as it is);
- ``ants:SyNQuick``, ``ants:SyNFull`` (antspyx ``antsRegistrationSyNQuick[s]``,
  ``antsRegistrationSyN[s]``) and ``greedy`` (affine, then NCC 2x2x2, 100x50x10) of the brain that
  ``regode brain-extract`` made, the labels warped with ANTs' GenericLabel (greedy: regode's);
  their time counts the extraction.

Figures per method: brain-mask Dice (the warped labels > 0 against the template's non-zero
voxels), the atlas-space overlap (the mean over subject pairs of the mean Dice of the DLMUSE labels
both hold, once warped to MNI), the time per subject end to end (median), and deepbet's masks
against the brain the labels cover. Usage::

    python benchmarks/heads_to_mni.py --data DATA [--methods regode,ants:SyNQuick,greedy] [--subjects 1-12]
        [--work DIR] [--threads 2]

Each subject's results are kept in ``--work`` (default ``results/heads``): a rerun only runs what
is missing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

METHODS = ("regode", "regode-head", "ants:SyNQuick", "greedy", "ants:SyNFull")


def _regode(args, *words) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "regode.cli", *words, "--threads", str(args.threads)], check=True, env=env,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


def run_one(args, subject: str, method: str, out: Path) -> dict:
    """Register one head with one method; the warped labels in ``out``; the record."""
    head, labels = args.data / "nichart" / subject / "t1.nii.gz", args.data / "nichart" / subject / "labels.nii.gz"
    out.mkdir(parents=True, exist_ok=True)
    if method.startswith("regode"):
        strip = "no" if method == "regode-head" else "auto"
        words = ["register", "-f", "mni152", "-m", str(head), "--moving-labels", str(labels), "--model", args.model,
                 "--skull-strip", strip, *args.options.split(), "-o", str(out / "r_")]  # fmt: skip
        seconds = _regode(args, *words)
        return {"seconds": seconds, "labels": str(out / "r_WarpedLabels.nii.gz")}
    extraction = out.parent / "extraction"
    t_extract = 0.0
    if not (extraction / "b_regode.json").exists():
        extraction.mkdir(parents=True, exist_ok=True)
        t_extract = _regode(args, "brain-extract", "-i", str(head), "-o", str(extraction / "b_"))
        (extraction / "seconds.txt").write_text(str(t_extract))
    t_extract = float((extraction / "seconds.txt").read_text())
    brain = extraction / "b_BrainExtractionBrain.nii.gz"
    t0 = time.perf_counter()
    warped = out / "WarpedLabels.nii.gz"
    if method.startswith("ants:"):
        import ants

        kind = {"ants:SyNQuick": "antsRegistrationSyNQuick[s]", "ants:SyNFull": "antsRegistrationSyN[s]"}[method]
        template = ants.image_read(str(_template()))
        result = ants.registration(template, ants.image_read(str(brain)), type_of_transform=kind, random_seed=0,
                                   outprefix=str(out / "ants_"))  # fmt: skip
        moved = ants.apply_transforms(template, ants.image_read(str(labels)), result["fwdtransforms"],
                                      interpolator="genericLabel")  # fmt: skip
        ants.image_write(moved, str(warped))
    else:
        from regode.bench.methods import Greedy
        from regode.io import read_image, write_image
        from regode.warp import resample

        fixed = read_image(_template())
        transform, _ = Greedy().register(fixed, read_image(brain), 0)
        lab = read_image(labels, exact=True)
        write_image(resample(lab.data, lab.grid, fixed.grid, transform, "label"), fixed.grid, warped, np.int32)
    return {"seconds": t_extract + time.perf_counter() - t0, "extraction_s": t_extract, "labels": str(warped)}


def _template() -> Path:
    from regode.templates import template_file

    return template_file("mni152")


def _read(path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def overlap(maps: list[np.ndarray]) -> float:
    """The mean over pairs of maps of the mean Dice of the labels (not 0) both hold."""
    scores = []
    for a, b in itertools.combinations(maps, 2):
        both = sorted((set(np.unique(a)) & set(np.unique(b))) - {0})
        codes = {c: i + 1 for i, c in enumerate(both)}
        lut = np.zeros(int(max(a.max(), b.max())) + 1, np.int64)
        for c, i in codes.items():
            lut[int(c)] = i
        ia, ib = lut[a.astype(np.int64)].ravel(), lut[b.astype(np.int64)].ravel()
        n = len(both) + 1
        size_a, size_b = np.bincount(ia, minlength=n), np.bincount(ib, minlength=n)
        same = np.bincount(ia[ia == ib], minlength=n)
        scores.append(float(np.mean(2 * same[1:] / np.maximum(size_a[1:] + size_b[1:], 1))))
    return 100 * float(np.mean(scores))


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # a long run's progress shows as it goes
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--methods", default="regode,regode-head,ants:SyNQuick,greedy")
    parser.add_argument("--subjects", default="1-12", help="Subject numbers: 1-12, or 1,3,5")
    parser.add_argument("--model", default="affine+dense", help="regode register's --model")
    parser.add_argument("--options", default="", help="more options of regode register, e.g. '--fine-spacing 2'")
    parser.add_argument("--work", type=Path, default=Path("results/heads"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if "-" in args.subjects:
        lo, hi = (int(x) for x in args.subjects.split("-"))
        numbers = range(lo, hi + 1)
    else:
        numbers = [int(x) for x in args.subjects.split(",")]
    subjects, methods = [f"Subj{n}" for n in numbers], args.methods.split(",")
    template = _read(_template()) > 0
    print(f"# heads to mni152 at 1 mm: {len(subjects)} NiChart subjects, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, {time.strftime('%Y-%m-%d')}", flush=True)  # fmt: skip
    table = {}
    for method in methods:
        rows, maps = [], []
        for subject in subjects:
            name = method if not method.startswith("regode") else f"{method}_{args.model}{args.options}"
            folder = args.work / subject / name.replace(":", "-").replace(" ", "")
            record = folder / "record.json"
            if not record.exists():
                entry = run_one(args, subject, method, folder)
                warped = _read(entry["labels"])
                entry["brain_dice"] = (
                    100 * 2 * float(((warped > 0) & template).sum()) / float((warped > 0).sum() + template.sum())
                )
                record.write_text(json.dumps(entry))
            entry = json.loads(record.read_text())
            rows.append(entry)
            maps.append(_read(entry["labels"]))
            print(f"{subject} {method}: brain-mask Dice {entry['brain_dice']:.1f}, {entry['seconds']:.1f} s")
        dice = [r["brain_dice"] for r in rows]
        table[method] = (np.mean(dice), min(dice), max(dice), overlap(maps), np.median([r["seconds"] for r in rows]))
    print("\n| method | brain-mask Dice (mean, range) | atlas-space overlap | time per subject (median) |")
    print("|---|---|---|---|")
    for method, (mean, lo, hi, ov, sec) in table.items():
        print(f"| {method} | {mean:.1f} ({lo:.1f}-{hi:.1f}) | {ov:.1f} | {sec:.0f} s |")
    _extraction_check(args, subjects)


def _extraction_check(args, subjects) -> None:
    """deepbet's masks against the brain the DLMUSE labels cover (on the head's grid)."""
    dice, cover = [], []
    for subject in subjects:
        mask_path = args.work / subject / "extraction" / "b_BrainExtractionMask.nii.gz"
        if not mask_path.exists():
            continue
        mask, labels = _read(mask_path) > 0, _read(args.data / "nichart" / subject / "labels.nii.gz") > 0
        dice.append(200 * float((mask & labels).sum()) / float(mask.sum() + labels.sum()))
        cover.append(100 * float((mask & labels).sum()) / float(labels.sum()))
    if dice:
        print(f"\ndeepbet masks against the DLMUSE brain: Dice {np.mean(dice):.1f} ({min(dice):.1f}-{max(dice):.1f}), "
              f"labelled voxels inside the mask {np.mean(cover):.2f} % "
              f"({min(cover):.2f}-{max(cover):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
