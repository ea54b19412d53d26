"""Capture range of the content metric against mutual information and MIND.

For every subject of a dataset folder and every pair of contrasts (default T1 vs FLAIR and T1 vs
T2): the fixed image is the first contrast and the moving image the second (co-registered, so the
truth is the identity), both at ``--spacing`` mm. The moving image is rotated about the head
centre (about the world z axis: in the axial plane) from -60 to 60 degrees, and shifted along x
from -30 to 30 mm (the values are the parameters of the fixed -> moving map, ITK's convention); each metric
(lower is better) is recorded at each position. For each curve:
where its minimum lies and how wide its basin is (the interval around the minimum over which it
never decreases away from it). ``--max-angle 0`` or ``--max-shift 0`` leaves that motion out.
Writes PREFIX.png, PREFIX.md and PREFIX.json.

    python benchmarks/capture_range.py --data DATA/brats [--encoder weights/encoder.pt] [--out capture_range]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from regode.bench.capture import METRICS, Metrics, basin, moved_by
from regode.checkpoint import weights_dir
from regode.datasets import discover
from regode.encoder.features import load_encoder
from regode.io import read_image
from regode.preprocess import head_center, to_grid, working_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--encoder", default=str(weights_dir() / "encoder.pt"))
    parser.add_argument("--out", default="capture_range")
    parser.add_argument("--pairs", default="t1:flair,t1:t2")
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--max-angle", type=float, default=60.0)
    parser.add_argument("--angle-step", type=float, default=1.0)
    parser.add_argument("--max-shift", type=float, default=30.0)
    parser.add_argument("--shift-step", type=float, default=1.0)
    parser.add_argument(
        "--slices", type=int, default=32, help="E3D slice positions per axis (fewer: faster, noisier curves)"
    )
    parser.add_argument("--axis", type=int, default=2, help="world axis of the rotation and the shift: 0 x, 1 y, 2 z")
    parser.add_argument("--shift-axis", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    encoder, _ = load_encoder(args.encoder, args.spacing)
    angles = np.arange(-args.max_angle, args.max_angle + 1e-9, args.angle_step)
    shifts = np.arange(-args.max_shift, args.max_shift + 1e-9, args.shift_step)
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    device = torch.device("cpu")
    # a motion whose range is 0 (--max-angle 0 or --max-shift 0) is left out
    motions = [m for m in (("rotation", angles, args.axis), ("translation", shifts, args.shift_axis)) if len(m[1]) > 1]
    if not motions:
        raise SystemExit("nothing to measure: --max-angle and --max-shift are both 0")
    curves = []
    start = time.perf_counter()
    for subject in discover(args.data):
        for a, b in pairs:
            if a not in subject.contrasts or b not in subject.contrasts:
                continue
            fixed, grid = working_image(read_image(subject.contrasts[a]), args.spacing, device)
            moving_image = read_image(subject.contrasts[b])
            moving, mgrid = working_image(moving_image, args.spacing, device)
            if mgrid != grid:  # put the moving contrast on the fixed working grid
                moving = to_grid(moving_image, grid)
            center = head_center(fixed, grid)
            metrics = Metrics(fixed, encoder, args.slices)
            for kind, values, axis in motions:
                rows = {m: [] for m in METRICS}
                for v in values:
                    moved = moved_by(
                        moving,
                        grid,
                        center,
                        axis,
                        angle_deg=v if kind == "rotation" else 0.0,
                        shift_mm=v if kind == "translation" else 0.0,
                    )
                    for m in METRICS:
                        rows[m].append(metrics(m, moved))
                for m in METRICS:
                    best, lo, hi = basin(values, rows[m])
                    curves.append(
                        {
                            "subject": subject.name,
                            "pair": f"{a}-{b}",
                            "kind": kind,
                            "metric": m,
                            "params": values.tolist(),
                            "values": rows[m],
                            "minimum": best,
                            "basin": [lo, hi],
                            "width": hi - lo,
                        }
                    )
                print(
                    f"{subject.name} {a}-{b} {kind}: "
                    + ", ".join(f"{c['metric']} min {c['minimum']:+.0f} basin {c['width']:.0f}" for c in curves[-3:]),
                    flush=True,
                )
    if not curves:
        raise SystemExit(f"no subject in {args.data} has the contrasts of {args.pairs}")
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.with_suffix(".json").write_text(
        json.dumps({"args": vars(args), "seconds": seconds, "curves": curves}, indent=1)
    )
    write_table(curves, out.with_suffix(".md"), args)
    plot(curves, out.with_suffix(".png"))
    print(f"wrote {out}.png, {out}.md, {out}.json in {seconds:.0f} s")


def write_table(curves, path: Path, args) -> None:
    unit = {"rotation": "°", "translation": " mm"}
    lines = [
        f"Capture range (spacing {args.spacing} mm; rotation about world axis {args.axis}, translation along "
        f"axis {args.shift_axis}; "
        f"E3D with {args.slices} slices per axis; encoder {args.encoder})",
        "",
        "| subject | pair | motion | metric | minimum at | basin | width |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in curves:
        u = unit[c["kind"]]
        lines.append(
            f"| {c['subject']} | {c['pair']} | {c['kind']} | {c['metric']} | {c['minimum']:+.0f}{u} | "
            f"[{c['basin'][0]:+.0f}, {c['basin'][1]:+.0f}]{u} | {c['width']:.0f}{u} |"
        )
    lines += [
        "",
        "| motion | metric | minimum within 2° / 1 mm | median basin width | narrowest basin |",
        "|---|---|---|---|---|",
    ]
    for kind, tol in (("rotation", 2.0), ("translation", 1.0)):
        for m in METRICS:
            sel = [c for c in curves if c["kind"] == kind and c["metric"] == m]
            if not sel:
                continue
            ok = sum(abs(c["minimum"]) <= tol for c in sel)
            widths = [c["width"] for c in sel]
            lines.append(
                f"| {kind} | {m} | {ok}/{len(sel)} | {np.median(widths):.0f}{unit[kind]} | "
                f"{min(widths):.0f}{unit[kind]} |"
            )
    path.write_text("\n".join(lines) + "\n")


def plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({c["pair"] for c in curves})
    kinds = [k for k in ("rotation", "translation") if any(c["kind"] == k for c in curves)]
    fig, axes = plt.subplots(len(kinds), len(pairs), figsize=(5.5 * len(pairs), 3.5 * len(kinds)), squeeze=False)
    colours = {"content": "tab:red", "mi": "tab:blue", "mind": "tab:green"}
    for col, pair in enumerate(pairs):
        for row, kind in enumerate(kinds):
            ax = axes[row, col]
            for c in curves:
                if c["pair"] != pair or c["kind"] != kind:
                    continue
                v = np.asarray(c["values"])
                v = (v - v.min()) / max(v.max() - v.min(), 1e-12)  # each curve scaled to [0, 1]
                style = "-" if c["subject"] == curves[0]["subject"] else "--"
                ax.plot(c["params"], v, style, color=colours[c["metric"]], label=f"{c['metric']} ({c['subject'][:12]})")
            ax.axvline(0, color="k", lw=0.5)
            ax.set_title(f"{pair}: {kind}")
            ax.set_xlabel("degrees" if kind == "rotation" else "mm")
            ax.set_ylabel("cost (scaled to [0, 1])")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
