"""The picture of docs/concepts/synthetic-data.md: brain-like synthetic subjects (regode.anatomy), each a
column: two random contrasts of one subject (axial, coronal) and its tissue labels.

    python benchmarks/synthetic_brain_figure.py --out docs/synthetic_brain.png --seed 0
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from regode import anatomy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/synthetic_brain.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subjects", type=int, default=5)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(args.seed)
    fig, axes = plt.subplots(5, args.subjects, figsize=(2.2 * args.subjects, 11))
    for column in range(args.subjects):
        subject = anatomy.draw_subject(gen, skull=column % 2 == 0)
        images = [anatomy.render_subject(subject, gen)[0, 0] for _ in range(2)]
        labels = anatomy.tissue_labels(subject)[0, 0]
        mid = [n // 2 for n in labels.shape]
        panels = [
            (images[0][mid[0]], "gray"),
            (images[1][mid[0]], "gray"),
            (images[0][:, mid[1]], "gray"),
            (images[1][:, mid[1]], "gray"),
            (labels[mid[0]].float(), "tab10"),
        ]
        for row, (plane, cmap) in enumerate(panels):
            ax = axes[row, column]
            ax.imshow(
                plane.flip(0).numpy(), cmap=cmap, vmin=0, vmax=1 if cmap == "gray" else 9, interpolation="nearest"
            )
            ax.set_axis_off()
        axes[0, column].set_title(f"subject {column + 1}" + (" (skull)" if subject.skull else ""), fontsize=9)
    fig.suptitle("regode.anatomy: two random contrasts per subject (axial, coronal) and tissue labels", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
