"""Warp speed: ``regode warp`` against ``sitk.Resample`` on a 1 mm 182x218x182 image with an
affine + displacement-field chain (linear interpolation). Prints medians of ``--runs`` runs.

    python benchmarks/warp_speed.py [--runs 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from regode.grid import Grid
from regode.io import load_transform_chain, read_image, save_transform, write_image
from regode.synthetic import phantom_labels, random_bspline, render
from regode.transforms import DisplacementField, Rigid
from regode.warp import resample


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    folder = Path(tempfile.mkdtemp(prefix="regode-bench-"))
    grid = Grid((182, 218, 182), (1.0, 1.0, 1.0), (-90.0, -126.0, -72.0))
    labels = phantom_labels(grid, 30, seed=0, relax=0)
    write_image(render(labels, grid, seed=0), grid, folder / "t1.nii.gz")
    rigid = Rigid(torch.tensor([0.1, -0.05, 0.2, 3.0, -2.0, 4.0], dtype=torch.float64), torch.as_tensor(grid.center))
    save_transform(rigid, folder / "0GenericAffine.mat")
    field = random_bspline(grid, 20.0, 3.0, seed=1).displacement(grid)
    save_transform(DisplacementField(grid, field), folder / "1Warp.nii.gz")
    specs = [str(folder / "1Warp.nii.gz"), str(folder / "0GenericAffine.mat")]

    # in memory: images and transforms already loaded
    image = read_image(folder / "t1.nii.gz")
    chain = load_transform_chain(specs)
    moving = sitk.ReadImage(str(folder / "t1.nii.gz"))
    field_tx = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(specs[0]), sitk.sitkVectorFloat64))
    composite = sitk.CompositeTransform([sitk.ReadTransform(specs[1]), field_tx])  # ANTs order, reversed
    ours = median_time(lambda: resample(image.data, image.grid, grid, chain), args.runs)
    theirs = median_time(lambda: sitk.Resample(moving, moving, composite, sitk.sitkLinear, 0.0), args.runs)
    a = resample(image.data, image.grid, grid, chain)[0, 0].numpy()
    b = sitk.GetArrayFromImage(sitk.Resample(moving, moving, composite, sitk.sitkLinear, 0.0))
    print(f"grid 182x218x182 1 mm, affine + warp, {args.threads} threads, median of {args.runs}")
    diff = np.abs(a - b).max()
    print(f"  resampling only   regode {ours:6.2f} s   sitk.Resample {theirs:6.2f} s   max |diff| {diff:.2e}")

    # end to end: read, resample, write
    cmd = [
        sys.executable,
        "-m",
        "regode.cli",
        "warp",
        "-i",
        str(folder / "t1.nii.gz"),
        "-r",
        str(folder / "t1.nii.gz"),
        "-t",
        specs[0],
        "-t",
        specs[1],
        "-o",
        str(folder / "out.nii.gz"),
        "--threads",
        str(args.threads),
    ]
    sitk_script = (
        "import SimpleITK as s;"
        f"s.ProcessObject.SetGlobalDefaultNumberOfThreads({args.threads});"
        f"m=s.ReadImage({str(folder / 't1.nii.gz')!r});"
        f"w=s.DisplacementFieldTransform(s.Cast(s.ReadImage({specs[0]!r}),s.sitkVectorFloat64));"
        f"c=s.CompositeTransform([s.ReadTransform({specs[1]!r}),w]);"
        f"s.WriteImage(s.Resample(m,m,c,s.sitkLinear,0.0),{str(folder / 'out_sitk.nii.gz')!r})"
    )
    ours = median_time(lambda: subprocess.run(cmd, check=True), args.runs)
    theirs = median_time(lambda: subprocess.run([sys.executable, "-c", sitk_script], check=True), args.runs)
    print(f"  whole command     regode warp {ours:6.2f} s   SimpleITK script {theirs:6.2f} s")


if __name__ == "__main__":
    main()
