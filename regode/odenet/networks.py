"""The per-level networks f^(l) of MS-ODENet.

Each network sees, on one pyramid level, the current warped moving image, the fixed image, the
time t (a constant channel) and the similarity force: the gradient of mutual information with
respect to a displacement of each point the velocity moves (the fixed points before the current
motion, or x + theta(x) before the start), times the number of voxels (the direction a
classical optimiser would follow, given to the network as learned optimisers are given their
gradient; it vanishes at the optimum). It returns a velocity of the transform's parameters in the level grid's
axes: mm (and
radians for rotations) per unit time. The model turns grid-axis vectors into world LPS vectors,
so a network never depends on the image's direction cosines.

The velocity is a learned term plus a learned step times the (smoothed, projected) force. The
learned term's last layer starts at zero, so an untrained model is a multi-scale gradient flow of
mutual information, and training learns how to do better than that.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..preprocess import blur
from ..rotations import skew


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that always runs oneDNN's kernel on a CPU (float32, zero padding). PyTorch's
    heuristic sends batch-1 volumes whose first four dimensions hold fewer than 20480 values (the
    deep layers of these networks) to its im2col kernel, 5 to 8 times slower here. Same parameters
    and state dict; the same results to float rounding; differentiable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() == 5
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and _onednn()
        ):
            return torch.mkldnn_convolution(
                x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super().forward(x)


def _onednn() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(Conv3d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))


IN_CHANNELS = 6


class GuidedStep(nn.Module):
    """A network whose velocity adds a learned step times the similarity force. The step is
    learned on a log scale (``log_step``), so that Adam's steps change it by a factor rather than by
    an amount: files that hold ``step`` itself (written before the change) still load."""

    def __init__(self, step: float):
        super().__init__()
        self.log_step = nn.Parameter(torch.tensor(math.log(step)))

    @property
    def step(self) -> torch.Tensor:
        return self.log_step.exp()

    def without_force(self) -> None:
        """Step 0: the force term off (with an untrained learned term, a zero velocity)."""
        self.log_step.data.fill_(-math.inf)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        if prefix + "step" in state_dict and prefix + "log_step" not in state_dict:
            step = state_dict.pop(prefix + "step")
            if not bool(torch.all(step >= 0)):
                error_msgs.append(f"{prefix}step is negative ({float(step):g})")  # load_state_dict raises with it
            state_dict[prefix + "log_step"] = step.log()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _inputs(warped: torch.Tensor, fixed: torch.Tensor, t: torch.Tensor, force: torch.Tensor) -> torch.Tensor:
    """warped, fixed, t and the similarity force (3 channels): the network's input channels."""
    time = torch.as_tensor(t, dtype=fixed.dtype, device=fixed.device).reshape(-1)[:1]
    return torch.cat([warped, fixed.expand_as(warped), time.expand_as(warped), force], dim=1)


def _pool(x: torch.Tensor, times: int) -> torch.Tensor:
    for _ in range(times):
        x = F.avg_pool3d(x, 2, 2, ceil_mode=True)
    return x


class RigidNet(GuidedStep):
    """Conv layers down to 1/8 resolution that predict a local velocity (mm) and a confidence per
    coarse voxel, then a weighted least-squares fit of one rigid velocity to them: 6 values, the
    angular velocity (rad) and the translation velocity (mm) about the rotation centre.

    The fit is the fixed 'fully connected' layer of this head: it makes the network's job local
    (where does this patch of the warped image need to move?) and equivariant to position, which
    is what lets a small CPU-trained network handle rotations of 75 degrees.
    """

    def __init__(self, width: int = 16, scale: float = 10.0, ridge: float = 1e-3, step: float = 100.0):
        # step: mm per unit time along the force's rigid fit, the untrained model's; a trained file
        # holds its own per level (weights/rigid.pt learned 1091, 870 and 152 on brain-like pairs)
        super().__init__(step)
        w = width
        self.features = nn.Sequential(
            _block(IN_CHANNELS, w, 2), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 2), _block(2 * w, 2 * w)
        )
        self.flow = Conv3d(2 * w, 4, 3, 1, 1)
        nn.init.zeros_(self.flow.weight)
        nn.init.zeros_(self.flow.bias)
        self.scale, self.ridge, self.stride = scale, ridge, 8

    def forward(self, warped, fixed, t, force, center_index, spacing: float):
        """``center_index [B, 3]``: the rotation centre as a continuous (x, y, z) index of the level
        grid; ``spacing``: the level's (isotropic) spacing in mm."""
        out = self.flow(self.features(_inputs(warped, fixed, t, force)))
        learned = self.fit(
            out[:, :3] * self.scale, F.softplus(out[:, 3:] + 1.0), center_index, spacing, self.stride, self.ridge
        )
        pooled = _pool(force, 2)
        guided = self.fit(pooled, torch.ones_like(pooled[:, :1]), center_index, spacing, 4, self.ridge, offset=1.5)
        return learned + self.step * guided

    @staticmethod
    def fit(*args, **kwargs) -> torch.Tensor:
        return fit_rigid_velocity(*args, **kwargs)


class AffineNet(RigidNet):
    """:class:`RigidNet` with an affine head: the weighted least-squares fit is of one affine
    velocity ``v(r) = M r + t`` (12 values: M's rows, 1 per unit time, then t in mm), so the local
    velocities may also scale and shear the image."""

    @staticmethod
    def fit(*args, **kwargs) -> torch.Tensor:
        return fit_affine_velocity(*args, **kwargs)


def _offsets(v: torch.Tensor, center_index: torch.Tensor, spacing: float, stride: int, offset: float) -> torch.Tensor:
    """``r [B, N, 3]``: mm from the centre (``center_index``, an (x, y, z) index of the input grid)
    of the voxels of ``v [B, 3, z, y, x]`` (voxel k sits at input index ``stride * k + offset``),
    in z, y, x voxel order and x, y, z components."""
    nz, ny, nx = v.shape[2:]
    axes = [torch.arange(n, dtype=v.dtype, device=v.device) * stride + offset for n in (nx, ny, nz)]
    index = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).permute(2, 1, 0, 3).reshape(1, -1, 3)  # z, y, x order
    return (index - center_index[:, None, :].to(v.dtype)) * spacing


def _weighted_fit(
    a: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, angular: int, extent: float, ridge: float
) -> torch.Tensor:
    """The parameters ``p`` that best explain ``v`` as ``a p`` (``a [B, N, 3, P]``) in weighted least
    squares with a ridge; the first ``angular`` parameters are per-mm quantities (rotations,
    matrix entries), scaled by the field's ``extent`` (mm) so that every block is in mm and the
    system well conditioned."""
    count = a.shape[-1]
    w = weight.flatten(2).transpose(1, 2)[..., None]  # [B, N, 1, 1]
    m = (a.transpose(-1, -2) @ (w * a)).sum(1)  # [B, P, P]
    b = (a.transpose(-1, -2) @ (w * v.flatten(2).transpose(1, 2)[..., None])).sum(1)  # [B, P, 1]
    s = torch.diag(torch.tensor([1 / extent] * angular + [1.0] * (count - angular), dtype=v.dtype, device=v.device))
    m = s @ m @ s + ridge * w.sum((1, 2, 3))[:, None, None] * torch.eye(count, dtype=v.dtype, device=v.device)
    return (s @ torch.linalg.solve(m, s @ b))[..., 0]


def fit_rigid_velocity(
    v: torch.Tensor,
    weight: torch.Tensor,
    center_index: torch.Tensor,
    spacing: float,
    stride: int = 1,
    ridge: float = 1e-3,
    offset: float = 0.0,
) -> torch.Tensor:
    """The rigid velocity ``[B, 6]`` (omega, t) that best explains a velocity field ``v [B, 3, z, y, x]``
    (mm, grid axes) in weighted least squares: ``v(r) ~ omega x r + t``, ``r`` in mm from the centre
    (``center_index [B, 3]``, (x, y, z) index of the input grid; voxel k of ``v`` sits at input index
    ``stride * k + offset``)."""
    r = _offsets(v, center_index, spacing, stride, offset)  # [B, N, 3]
    cross = skew(-r)  # omega x r = -(r x omega) = skew(-r) @ omega
    a = torch.cat([cross, torch.eye(3, dtype=v.dtype, device=v.device).expand_as(cross)], -1)  # [B, N, 3, 6]
    return _weighted_fit(a, v, weight, 3, spacing * stride * max(v.shape[2:]), ridge)


def fit_affine_velocity(
    v: torch.Tensor,
    weight: torch.Tensor,
    center_index: torch.Tensor,
    spacing: float,
    stride: int = 1,
    ridge: float = 1e-3,
    offset: float = 0.0,
) -> torch.Tensor:
    """As :func:`fit_rigid_velocity`, for an affine velocity ``v(r) ~ M r + t``: ``[B, 12]``, the
    rows of M (1 per unit time) then t (mm per unit time)."""
    r = _offsets(v, center_index, spacing, stride, offset)  # [B, N, 3]
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    # (M r)_i = sum_j M_ij r_j: row i of the design holds r in columns 3i..3i+2
    rows = torch.einsum("ik,bnj->bnikj", eye, r).flatten(-2)  # [B, N, 3, 9]
    a = torch.cat([rows, eye.expand(*rows.shape[:2], 3, 3)], -1)  # [B, N, 3, 12]
    return _weighted_fit(a, v, weight, 9, spacing * stride * max(v.shape[2:]), ridge)


class BSplineNet(GuidedStep):
    """A fully convolutional net with downsampling, resampled to the control grid: control-point
    velocities (``scale`` mm per unit output), ``[B, 3, *control_shape]``."""

    def __init__(self, width: int = 16, scale: float = 10.0, step: float = 5.0):
        super().__init__(step)
        w = width
        self.features = nn.Sequential(_block(IN_CHANNELS, w, 2), _block(w, 2 * w, 2), _block(2 * w, 2 * w))
        self.head = nn.Sequential(_block(2 * w, 2 * w), Conv3d(2 * w, 3, 3, 1, 1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.scale = scale

    def forward(self, warped, fixed, t, force, to_control, spread):
        """``to_control(features)`` resamples a feature map to the control grid (the model knows
        where the control points lie in this level's grid); ``spread(force)`` is the force's
        B-spline-weighted mean about each control point over the voxels where it is read (an ascent
        direction: the control points' gradient, normalised per control point)."""
        learned = self.head(to_control(self.features(_inputs(warped, fixed, t, force)))) * self.scale
        return learned + self.step * spread(force)


class UNet(GuidedStep):
    """A small 3D U-Net working at half the level's resolution, its output upsampled to the level
    grid: voxel velocities (``scale`` mm per unit output), ``[B, 3, nz, ny, nx]``. The velocity (the
    learned term plus the step times the force) is smoothed by a Gaussian of ``smoothing`` voxels of
    the level, as SyN and demons smooth their update fields: the force of a 2 mm image is a field of
    edges, and a displacement that follows it unsmoothed tears the image apart."""

    def __init__(self, width: int = 16, scale: float = 5.0, step: float = 25.0, smoothing: float = 4.0):
        super().__init__(step)
        w = width
        self.smoothing = smoothing
        self.enc = nn.ModuleList(
            [_block(IN_CHANNELS, w, 2), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 2), _block(2 * w, 2 * w, 2)]
        )
        self.dec = nn.ModuleList([_block(4 * w, 2 * w), _block(4 * w, 2 * w), _block(3 * w, w)])
        self.out = Conv3d(w, 3, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.scale = scale

    def forward(self, warped, fixed, t, force):
        x = _inputs(warped, fixed, t, force)
        size = x.shape[2:]
        skips = []
        for layer in self.enc:
            x = layer(x)
            skips.append(x)
        skips.pop()
        for layer in self.dec:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = layer(torch.cat([x, skip], dim=1))
        learned = self.out(x) * self.scale  # at half the level's resolution
        guided = F.interpolate(_pool(force, 2), size=learned.shape[2:], mode="trilinear", align_corners=False)
        velocity = learned + self.step * guided
        if self.smoothing > 0:  # smoothed at half resolution: the same filter on 8 times fewer voxels
            velocity = blur(velocity, (self.smoothing / 2,) * 3)
        return F.interpolate(velocity, size=size, mode="trilinear", align_corners=False)
