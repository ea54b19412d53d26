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
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import RegodeError
from ..odenet import checkpoint
from .data import FolderSubjects, Slabs, SyntheticSubjects
from .networks import EncoderConfig, Translator

FORMAT = "regode.encoder"
VALIDATION_OFFSET = 10_000_000
VALIDATION_MOTIONS = 4
"""moved copies per validation batch (for the ``ordered`` and ``basin`` figures), whether or not
the run trains the basin term."""


@dataclass
class EncoderTrainConfig:
    """Everything that defines an encoder training run (saved in every checkpoint)."""

    model: EncoderConfig = field(default_factory=EncoderConfig)
    data: str | None = None
    """dataset folder (benchmark layout); None: synthetic subjects."""
    steps: int = 6000
    batch: int = 4
    """slab pairs per step."""
    lr: float = 1e-4
    size: int = 96
    """subjects are SIZE^3 voxels at the model's spacing; slabs are SIZE x SIZE."""
    reuse: int = 4
    """steps that share one subject (generating a head costs more than a step)."""
    seed: int = 0
    lambda_image: float = 10.0
    lambda_cross: float = 10.0
    lambda_cycle: float = 10.0
    lambda_content: float = 1.0
    lambda_style: float = 1.0
    lambda_shared: float = 1.0
    lambda_adv: float = 1.0
    lambda_basin: float = 0.0
    """the basin term's weight; off by default (measured: it did not widen the capture range on BraTS, docs/encoder.md)."""
    basin_motions: int = 3
    """moved copies of the b slabs per step (fractions of one motion)."""
    basin_angle: float = 180.0
    """degrees: the largest rotation of the basin term's motions (about a random axis)."""
    basin_shift: float = 40.0
    """mm: the largest shift of the basin term's motions."""
    basin_margin: float = 2.0
    """the least rise of log d per unit of motion fraction the basin term asks for."""
    checkpoint_every: int = 100
    validate_every: int = 250
    val_batches: int = 4

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderTrainConfig":
        d = dict(d)
        d["model"] = EncoderConfig(**d["model"])
        return cls(**d)


def make_source(config: EncoderTrainConfig):
    """The run's slab source, with the basin term's moved copies when the term is on."""
    motions = config.basin_motions if config.lambda_basin > 0 else 0
    common = dict(modalities=config.model.modalities, size=config.size, spacing=config.model.spacing, seed=config.seed,
                  slices=config.model.slices, batch=config.batch, reuse=config.reuse, motions=motions,
                  max_angle=config.basin_angle, max_shift=config.basin_shift)
    return FolderSubjects(config.data, **common) if config.data else SyntheticSubjects(**common)


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
        shifted.append(float((ca - cb[len(ca):]).square().mean()))
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
        panels = [(s.a[r, mid], na), (s.b[r, mid], nb), (ab[r, mid], f"{na}->{nb}"), (ba[r, mid], f"{nb}->{na}"),
                  (ca[r, 0], f"content({na})"), (cb[r, 0], f"content({nb})")]
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(img.cpu().numpy(), cmap="gray", origin="lower")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def train(config: EncoderTrainConfig, out: Path, resume: bool = False, progress: bool = True, steps: int | None = None) -> dict:
    """Train (or resume) and write ``out`` (final model), ``out.ckpt`` (resumable state),
    ``out.log.jsonl`` and sample translations in ``out.samples/``."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    out = Path(out)
    ckpt_path, log_path = checkpoint.training_files(out)
    samples = out.with_name(out.name + ".samples")
    console = Console(stderr=True)
    state = None
    if resume:
        state = checkpoint.resume_state(out, fmt=FORMAT, what="encoder")
        config = EncoderTrainConfig.from_dict(state["train_config"])
        config.steps = steps or config.steps
    torch.manual_seed(config.seed)
    model = Translator(config.model)
    g_params = [p for n, p in model.named_parameters() if not n.startswith("discriminator.")]
    opt_g = torch.optim.Adam(g_params, lr=config.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=config.lr, betas=(0.5, 0.999))
    step, seconds, history = 0, 0.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt_g.load_state_dict(state["optimizer"]["g"])
        opt_d.load_state_dict(state["optimizer"]["d"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        console.print(f"resuming {ckpt_path} at step {step}")
    source = make_source(config)
    val_source = copy.copy(source)  # shares a folder's loaded subjects
    val_source.reuse, val_source._cache, val_source.motions = 1, None, VALIDATION_MOTIONS
    val = [val_source.batch(VALIDATION_OFFSET + i) for i in range(config.val_batches)]

    def save(path: Path, final: bool) -> None:
        optimizer = None if final else {"g": opt_g.state_dict(), "d": opt_d.state_dict()}
        checkpoint.save(path, model, config, step, seconds, history, optimizer, fmt=FORMAT)

    def log(record: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    if step == 0 and not history:
        history.append({"step": 0, **validate(model, val, config.basin_margin), "seconds": 0.0})
        log(history[-1])
    model.train()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not progress) as bar:
        job = bar.add_task("train encoder", total=config.steps, completed=step, info="")
        while step < config.steps:
            start = time.perf_counter()
            slabs = source.batch(step)
            loss, info = generator_losses(model, slabs, config)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_g.step()
            d_loss = discriminator_loss(model, slabs, *info.pop("translated"))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            if not torch.isfinite(loss):
                raise RegodeError(f"training diverged at step {step} (non-finite loss): lower --lr")
            step += 1
            elapsed = time.perf_counter() - start
            seconds += elapsed
            record = {"step": step, "loss": float(loss.detach()), "d_loss": float(d_loss.detach()), **info, "seconds": round(seconds, 2)}
            if step % config.validate_every == 0 or step == config.steps:
                figures = validate(model, val, config.basin_margin)
                record.update(figures)
                history.append({"step": step, **figures, "seconds": round(seconds, 1)})
                save_samples(model, val[0], samples / f"step_{step:06d}.png", config.model.modalities)
            log(record)
            last = history[-1]
            bar.update(job, advance=1, info=f"loss {record['loss']:.3f} ({1 / elapsed:.1f} it/s) val cross {last['cross_l1']:.3f} ratio {last['content_ratio']:.3f}"
                       + (f" ordered {last['ordered']:.2f}" if "ordered" in last else ""))
            if step % config.checkpoint_every == 0 or step == config.steps:
                save(ckpt_path, final=False)
    save(out, final=True)
    return {"steps": step, "seconds": seconds, "history": history}


def load_encoder(path=None, spacing: float | None = None) -> tuple[Translator, dict]:
    """The translation model in ``path`` (None: the shipped ``weights/encoder.pt``; eval mode) and
    its checkpoint document. With ``spacing`` (mm), an encoder trained at another spacing is refused:
    its features are not scale-invariant."""
    path = path or checkpoint.weights_dir() / "encoder.pt"
    document = checkpoint.load(path, fmt=FORMAT, what="encoder")
    try:
        model = Translator(EncoderConfig(**document["model_config"]))
        model.load_state_dict(document["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise RegodeError(f"{path} does not hold a valid encoder: {str(exc).splitlines()[0][:200]}") from None
    trained = model.config.spacing
    if spacing is not None and abs(trained - spacing) > 0.01 * spacing:
        raise RegodeError(f"{path} was trained on {trained:g} mm slices, the images are registered at {spacing:g} mm (use --spacing {trained:g})")
    return model.eval(), document
