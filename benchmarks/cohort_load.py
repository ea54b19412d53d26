"""A cohort of hundreds of rows on one local Dask cluster: throughput, each worker's resident memory
as the rows go by (flat, not growing), and the report of all rows opened in headless chromium.

    python benchmarks/cohort_load.py [--rows 200] [--checkpoints 20,100,200] [--workers 2 --threads 1]
        [--out bench-out/cohort-load]

The rows: small phantoms made here (48 x 52 x 44 voxels at 3 mm, a random head each), each moving
image the fixed one rendered in another contrast and moved by a random rigid motion,
``register --model rigid``. The cluster is started once and the rows submitted in batches up to
each checkpoint (regode.cohort.run.run_cohort on its scheduler), so the same worker processes run
every row; after each batch, each worker's resident memory (psutil, after a garbage collection).
Then ``report.html`` is opened in headless chromium: the wall time of the whole browser run (start,
load, screenshot), the same for a blank page (the browser's own start) and the screenshot
(``OUT/report.png``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np


def make_rows(folder: Path, count: int) -> Path:
    import torch

    from regode.grid import Grid
    from regode.io import write_image
    from regode.synthetic import phantom_labels, render
    from regode.transforms import Rigid
    from regode.warp import resample

    grid = Grid((48, 52, 44), (3.0, 3.0, 3.0), (-72.0, -78.0, -66.0))
    lines = ["id,fixed,moving"]
    rng = np.random.default_rng(0)
    for i in range(count):
        labels = phantom_labels(grid, 8, i)
        params = np.concatenate([rng.uniform(-0.1, 0.1, 3), rng.uniform(-5, 5, 3)])
        motion = Rigid(torch.tensor(params[None], dtype=torch.float64), torch.as_tensor(grid.center)[None])
        write_image(render(labels, grid, 1), grid, folder / f"f{i:03d}.nii.gz")
        write_image(resample(render(labels, grid, 2), grid, grid, motion), grid, folder / f"m{i:03d}.nii.gz")
        lines.append(f"row{i:03d},f{i:03d}.nii.gz,m{i:03d}.nii.gz")
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def worker_memory() -> int:
    import gc

    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--checkpoints", default="20,100,200")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench-out/cohort-load"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    (args.out / "data").mkdir(parents=True)
    t0 = time.perf_counter()
    manifest = make_rows(args.out / "data", args.rows)
    print(f"{args.rows} rows made in {time.perf_counter() - t0:.0f} s")

    import dask
    from distributed import Client, LocalCluster

    from regode.cohort import report
    from regode.cohort.manifest import read_manifest
    from regode.cohort.run import Engine, run_cohort

    out = args.out / "out"
    rows = read_manifest(manifest, out, "register", "--model rigid --seed 0")
    threads = str(args.threads)
    dask.config.set({"distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}})
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cluster)
    engine = Engine(threads=args.threads, scheduler=cluster.scheduler_address)
    done, memory = 0, {}
    start = time.perf_counter()
    for checkpoint in (int(c) for c in args.checkpoints.split(",")):
        t = time.perf_counter()
        lines = run_cohort(rows[:checkpoint], out, engine, progress=False)
        seconds = time.perf_counter() - t
        finished = sum(line["status"] == "done" for line in lines)
        memory[checkpoint] = client.run(worker_memory)
        mib = ", ".join(f"{v / 2**20:.0f}" for v in memory[checkpoint].values())
        print(
            f"after {checkpoint} rows: {finished} done, rows {done + 1}-{checkpoint} at "
            f"{(checkpoint - done) / seconds * 60:.1f} rows/min; resident MiB per worker: {mib}"
        )
        done = checkpoint
    total = time.perf_counter() - start
    print(f"{done} rows in {total:.0f} s: {done / total * 60:.1f} rows per minute")
    first, last = min(memory), max(memory)
    for worker in memory[first]:
        a, b = memory[first][worker], memory[last].get(worker)
        if b is not None:
            print(
                f"worker {worker}: {a / 2**20:.0f} MiB after {first} rows, {b / 2**20:.0f} after {last} "
                f"({(b / a - 1) * 100:+.1f} %)"
            )
    client.close()
    cluster.close()
    paths = report.write(lines, out)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no chromium: the report was not opened")
        return
    blank = args.out / "blank.html"
    blank.write_text("<!doctype html><title>blank</title>")
    browser_alone = np.median([_screenshot(browser, blank, args.out / "blank.png") for _ in range(3)])
    shot = args.out / "report.png"
    seconds = np.median([_screenshot(browser, paths["html"], shot) for _ in range(3)])
    print(
        f"report.html ({done} rows) in headless chromium: {seconds:.2f} s, median of 3 (start, load, "
        f"screenshot); a blank page the same way: {browser_alone:.2f} s, so the report's own load and "
        f"drawing {seconds - browser_alone:.2f} s; {shot}"
    )


def _screenshot(browser: str, page: Path, shot: Path) -> float:
    """Seconds for headless chromium to start, load ``page``, draw it and write ``shot``."""
    t = time.perf_counter()
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1400,1800",
         page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
