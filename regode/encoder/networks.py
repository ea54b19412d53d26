"""The translation model: content encoder E^c, style encoder E^s, generator G and discriminator D.

Inputs are 2D stacks of ``slices`` adjacent slices (channels) of a volume normalised to [0, 1].

- E^c (fully convolutional, instance-normalised): image -> content feature map at half resolution.
  It does not see the modality: content is what two contrasts of one anatomy share.
- E^s (conv + global average pooling + FC): image and the modality's one-hot code (as constant
  channels) -> a style vector.
- G: content + the one-hot code of the target modality (as channels) -> image; the style enters
  through adaptive instance normalisation (AdaIN) whose scales and shifts an MLP computes from the
  style vector.
- D (conditional PatchGAN): image + one-hot code -> a map of realism scores (least-squares GAN).

Only E^c is used for registration; the rest exists to train it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import EncoderConfig


def one_hot(index: torch.Tensor, count: int, like: torch.Tensor) -> torch.Tensor:
    """The one-hot codes of ``index [B]`` as constant channels ``[B, count, h, w]`` shaped like ``like``."""
    code = F.one_hot(index.long(), count).to(like.dtype)
    return code[:, :, None, None].expand(-1, -1, *like.shape[2:])


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, padding_mode="reflect"),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, padding_mode="reflect"),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x):
        return x + self.body(x)


class ContentEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        w, c = config.width, config.content
        layers = [
            nn.Conv2d(config.slices, w, 7, 1, 3, padding_mode="reflect"),
            nn.InstanceNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, c, 4, 2, 1, padding_mode="reflect"),
            nn.InstanceNorm2d(c),
            nn.ReLU(inplace=True),
        ]
        layers += [ResBlock(c) for _ in range(config.blocks)]
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, slices, h, w]`` -> content ``[B, content, ceil(h/2), ceil(w/2)]``."""
        h, w = image.shape[-2:]
        image = F.pad(image, (0, w % 2, 0, h % 2), mode="replicate")
        return self.net(image)


class StyleEncoder(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        w, k = config.width, len(config.modalities)
        self.count = k
        self.net = nn.Sequential(
            nn.Conv2d(config.slices + k, w, 7, 1, 3, padding_mode="reflect"),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * w, 4 * w, 4, 2, 1),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(4 * w, config.style)

    def forward(self, image: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """``[B, slices, h, w]`` and modality indices ``[B]`` -> style ``[B, style]``."""
        features = self.net(torch.cat([image, one_hot(modality, self.count, image)], 1))
        return self.fc(features.mean((2, 3)))


class AdaIN(nn.Module):
    """Instance normalisation with a per-sample scale and shift given from outside."""

    def forward(self, x, scale, shift):
        return F.instance_norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class AdaResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, padding_mode="reflect")
        self.norm = AdaIN()
        self.params = 4 * channels  # (scale, shift) for each of the two norms

    def forward(self, x, p):
        s1, b1, s2, b2 = p.chunk(4, dim=1)
        y = F.relu(self.norm(self.conv1(x), s1, b1))
        return x + self.norm(self.conv2(y), s2, b2)


class Generator(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        w, c, k = config.width, config.content, len(config.modalities)
        self.count = k
        self.inlet = nn.Conv2d(c + k, c, 1)
        self.blocks = nn.ModuleList(AdaResBlock(c) for _ in range(config.blocks))
        n_params = sum(b.params for b in self.blocks)
        self.mlp = nn.Sequential(nn.Linear(config.style + k, 64), nn.ReLU(inplace=True), nn.Linear(64, n_params))
        self.outlet = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c, w, 5, 1, 2, padding_mode="reflect"),
            nn.GroupNorm(1, w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, config.slices, 7, 1, 3, padding_mode="reflect"),
        )

    def forward(self, content: torch.Tensor, style: torch.Tensor, modality: torch.Tensor, size=None) -> torch.Tensor:
        """Content ``[B, content, h', w']``, style ``[B, style]`` and target modality ``[B]`` -> image
        ``[B, slices, 2h', 2w']`` in [0, 1] (cropped to ``size`` (h, w) if given)."""
        code = F.one_hot(modality.long(), self.count).to(style.dtype)
        params = self.mlp(torch.cat([style, code], 1)).split([b.params for b in self.blocks], dim=1)
        x = self.inlet(torch.cat([content, one_hot(modality, self.count, content)], 1))
        for block, p in zip(self.blocks, params, strict=False):
            x = block(x, p)
        out = torch.sigmoid(self.outlet(x))
        return out if size is None else out[..., : size[0], : size[1]]


class Discriminator(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        w, k = 2 * config.width, len(config.modalities)
        self.count = k
        self.net = nn.Sequential(
            nn.Conv2d(config.slices + k, w, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, 2 * w, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * w, 1, 3, 1, 1),
        )

    def forward(self, image: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, one_hot(modality, self.count, image)], 1))


class Translator(nn.Module):
    """The whole translation model; ``content`` is E^c."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.content = ContentEncoder(config)
        self.style = StyleEncoder(config)
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)

    def translate(self, image: torch.Tensor, style_image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``image``'s content rendered in the style of ``style_image`` (of modality ``target``)."""
        return self.generator(self.content(image), self.style(style_image, target), target, image.shape[-2:])
