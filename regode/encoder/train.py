"""Training the translation model (``regode train --model encoder``).

Each step takes the same slabs of two modalities a, b of one anatomy (paired: the contrasts are
co-registered) and computes, with c = E^c(x), s = E^s(x, m) and G(c, s, m):

- image reconstruction   |G(c_a, s_a, a) - x_a|                (and b), weight ``lambda_image``
- cross-translation      |G(c_a, s_b, b) - x_b|  (styles swapped; paired, so the target is known)
- cycle                  |G(E^c(G(c_a, s_b, b)), s_a, a) - x_a|
- content reconstruction |E^c(G(c_a, s_b, b)) - c_a|
- style reconstruction   |E^s(G(c_a, s_b, b), b) - s_b|
- shared content         |c_a - c_b|: the two contrasts of one anatomy have one content, which is
                         exactly what registration asks of the features
- basin                  the content distance d(f) = mean (c_a - E^c(b moved by a fraction f of
                         one random rigid motion))^2 must grow with f (d(0) = the aligned pair):
                         a hinge on log d(f) - log d(g) + margin (g - f) for every f < g. It asks
                         the features to tell a larger misalignment from a smaller one, which
                         is what a wide capture range is, up to rotations of ``basin_angle``.
- adversarial            least-squares GAN (LSGAN) with a conditional PatchGAN; chosen over WGAN-GP
                         because it is stable without the gradient penalty's double backward pass,
                         which would double the step time on a CPU.

The first six are L1; every term but the basin term appears for both directions. Checkpoints
carry both optimisers and the step; a batch is a pure function of (seed, step), so ``--resume`` continues exactly.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from .. import training
from ..errors import RegodeError
from .config import EncoderTrainConfig
from .data import BrainSubjects, FolderSubjects, Slabs, SyntheticSubjects
from .features import FORMAT
from .networks import Translator

VALIDATION_OFFSET = 10_000_000
VALIDATION_MOTIONS = 4
"""moved copies per validation batch (for the ``ordered`` and ``basin`` figures), whether or not
the run trains the basin term."""


def make_source(config: EncoderTrainConfig):
    """The run's slab source, with the basin term's moved copies when the term is on."""
    motions = config.basin_motions if config.lambda_basin > 0 else 0
    common = dict(
        modalities=config.model.modalities,
        size=config.size,
        spacing=config.model.spacing,
        seed=config.seed,
        slices=config.model.slices,
        batch=config.batch,
        reuse=config.reuse,
        motions=motions,
        max_angle=config.basin_angle,
        max_shift=config.basin_shift,
    )
    if config.data:
        return FolderSubjects(config.data, **common)
    return BrainSubjects(**common) if config.generator == "brain" else SyntheticSubjects(**common)


def l1(x, y):
    return (x - y).abs().mean()


def motion_distances(content, ca: torch.Tensor, cb: torch.Tensor, s: Slabs) -> torch.Tensor:
    """``[1 + F]``: the content distance of the a slabs' features ``ca`` to the b slabs' ``cb``
    (aligned), then to the b slabs moved by each of the batch's motion fractions (means over the
    batch, as E3D's distance)."""
    moved = content(s.moved.flatten(0, 1)).unflatten(0, (len(s.moved), len(ca)))
    return torch.cat([(cb - ca).square().mean()[None], (moved - ca).square().mean(dim=(1, 2, 3, 4))])


def basin_loss(distances: torch.Tensor, fractions, margin: float) -> torch.Tensor:
    """Mean over f < g of relu(log d(f) - log d(g) + margin (g - f)), with fraction 0 first."""
    f = torch.tensor([0.0, *fractions], dtype=distances.dtype)
    i, j = torch.triu_indices(len(f), len(f), 1)
    log = distances.clamp_min(1e-12).log()
    return torch.relu(log[i] - log[j] + margin * (f[j] - f[i])).mean()


def generator_losses(model: Translator, s: Slabs, config: EncoderTrainConfig) -> tuple[torch.Tensor, dict]:
    E, S, G, D = model.content, model.style, model.generator, model.discriminator
    size = s.a.shape[-2:]
    ca, cb = E(s.a), E(s.b)
    sa, sb = S(s.a, s.modality_a), S(s.b, s.modality_b)
    rec_a, rec_b = G(ca, sa, s.modality_a, size), G(cb, sb, s.modality_b, size)
    ab, ba = G(ca, sb, s.modality_b, size), G(cb, sa, s.modality_a, size)
    c_ab, c_ba = E(ab), E(ba)
    terms = {
        "image": l1(rec_a, s.a) + l1(rec_b, s.b),
        "cross": l1(ab, s.b) + l1(ba, s.a),
        "cycle": l1(G(c_ab, sa, s.modality_a, size), s.a) + l1(G(c_ba, sb, s.modality_b, size), s.b),
        "content": l1(c_ab, ca) + l1(c_ba, cb),
        "style": l1(S(ab, s.modality_b), sb) + l1(S(ba, s.modality_a), sa),
        "shared": l1(ca, cb),
        "adv": (D(ab, s.modality_b) - 1).square().mean() + (D(ba, s.modality_a) - 1).square().mean(),
    }
    if config.lambda_basin > 0 and s.moved is not None:
        terms["basin"] = basin_loss(motion_distances(E, ca, cb, s), s.fractions, config.basin_margin)
    total = sum(getattr(config, f"lambda_{k}") * v for k, v in terms.items())
    return total, {"translated": (ab.detach(), ba.detach()), **{k: float(v.detach()) for k, v in terms.items()}}


def discriminator_loss(model: Translator, s: Slabs, ab: torch.Tensor, ba: torch.Tensor) -> torch.Tensor:
    D = model.discriminator
    real = (D(s.b, s.modality_b) - 1).square().mean() + (D(s.a, s.modality_a) - 1).square().mean()
    fake = D(ab, s.modality_b).square().mean() + D(ba, s.modality_a).square().mean()
    return 0.5 * (real + fake)


@torch.no_grad()
def validate(model: Translator, batches: list[Slabs], margin: float = 2.0) -> dict:
    """cross_l1: mean |G(c_a, s_b, b) - x_b| (translation error); content_ratio: the content
    distance of the aligned contrasts over that with x_b shifted by 3 pixels (lower: the content
    features tell aligned from misaligned better; 1: they cannot); ordered (batches with moved
    slabs): the fraction of motion pairs f < g, fraction 0 included, whose distances are in order,
    d(f) < d(g) (1: the distance grows with the misalignment on every batch); basin: the basin
    term with ``margin`` (0: every pair in order by at least the margin)."""
    model.eval()
    cross, aligned, shifted, ordered, hinge = [], [], [], [], []
    for s in batches:
        cross.append(float(l1(model.translate(s.a, s.b, s.modality_b), s.b)))
        ca, cb = model.content(s.a), model.content(torch.cat([s.b, s.b.roll(3, -1)]))
        aligned.append(float((ca - cb[: len(ca)]).square().mean()))
        shifted.append(float((ca - cb[len(ca) :]).square().mean()))
        if s.moved is not None:
            d = motion_distances(model.content, ca, cb[: len(ca)], s)
            i, j = torch.triu_indices(len(d), len(d), 1)
            ordered.extend((d[i] < d[j]).tolist())
            hinge.append(float(basin_loss(d, s.fractions, margin)))
    model.train()
    figures = {"cross_l1": sum(cross) / len(cross), "content_ratio": sum(aligned) / max(sum(shifted), 1e-12)}
    if ordered:
        figures["ordered"] = sum(ordered) / len(ordered)
        figures["basin"] = sum(hinge) / len(hinge)
    return figures


def save_samples(model: Translator, s: Slabs, path: Path, modalities) -> None:
    """A PNG a person can look at: per slab, x_a, x_b, a->b, b->a and the first content channel of
    each (middle slice of each stack)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    with torch.no_grad():
        ab = model.translate(s.a, s.b, s.modality_b)
        ba = model.translate(s.b, s.a, s.modality_a)
        ca, cb = model.content(s.a), model.content(s.b)
    model.train()
    mid = s.a.shape[1] // 2
    rows = min(4, len(s.a))
    fig, axes = plt.subplots(rows, 6, figsize=(12, 2.1 * rows), squeeze=False)
    for r in range(rows):
        na, nb = modalities[int(s.modality_a[r])], modalities[int(s.modality_b[r])]
        panels = [
            (s.a[r, mid], na),
            (s.b[r, mid], nb),
            (ab[r, mid], f"{na}->{nb}"),
            (ba[r, mid], f"{nb}->{na}"),
            (ca[r, 0], f"content({na})"),
            (cb[r, 0], f"content({nb})"),
        ]
        for ax, (img, title) in zip(axes[r], panels, strict=False):
            ax.imshow(img.cpu().numpy(), cmap="gray", origin="lower")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


class Run:
    """One encoder training run (a regode.training.Run): the generator side (E^c, E^s, G) and the
    discriminator take turns, each with its own Adam."""

    def __init__(self, config: EncoderTrainConfig, out: Path):
        self.config, self.samples = config, out.with_name(out.name + ".samples")
        self.model = Translator(config.model)
        g_params = [p for n, p in self.model.named_parameters() if not n.startswith("discriminator.")]
        self.optimizers = {
            "g": torch.optim.Adam(g_params, lr=config.lr, betas=(0.5, 0.999)),
            "d": torch.optim.Adam(self.model.discriminator.parameters(), lr=config.lr, betas=(0.5, 0.999)),
        }
        self.source = make_source(config)
        val_source = copy.copy(self.source)  # shares a folder's loaded subjects
        val_source.reuse, val_source._cache, val_source.motions = 1, None, VALIDATION_MOTIONS
        self.val = [val_source.batch(VALIDATION_OFFSET + i) for i in range(config.val_batches)]
        self.title = "train encoder"

    def step(self, step: int) -> dict:
        slabs = self.source.batch(step)
        loss, info = generator_losses(self.model, slabs, self.config)
        self.optimizers["g"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["g"].step()
        d_loss = discriminator_loss(self.model, slabs, *info.pop("translated"))
        self.optimizers["d"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizers["d"].step()
        if not torch.isfinite(loss):
            raise RegodeError(f"training diverged at step {step} (non-finite loss): lower --lr")
        return {"loss": float(loss.detach()), "d_loss": float(d_loss.detach()), **info}

    def validate(self) -> dict:
        return validate(self.model, self.val, self.config.basin_margin)

    def describe(self, record: dict, last: dict, seconds: float) -> str:
        return (
            f"loss {record['loss']:.3f} ({1 / seconds:.1f} it/s) val cross {last['cross_l1']:.3f} ratio "
            f"{last['content_ratio']:.3f}" + (f" ordered {last['ordered']:.2f}" if "ordered" in last else "")
        )

    def after_validation(self, step: int) -> None:
        save_samples(self.model, self.val[0], self.samples / f"step_{step:06d}.png", self.config.model.modalities)


def train(
    config: EncoderTrainConfig, out: Path, resume: bool = False, progress: bool = True, steps: int | None = None
) -> dict:
    """Train (or resume) and write ``out`` (final model), ``out.ckpt`` (resumable state),
    ``out.log.jsonl`` and sample translations in ``out.samples/``."""
    out = Path(out)
    return training.train(lambda c: Run(c, out), config, out, FORMAT, "encoder", resume, progress, steps)
