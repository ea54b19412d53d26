"""The fast kernels of the similarity measures, penalties and networks against direct reference versions."""

import pytest
import torch
import torch.nn.functional as F

from regode.losses import mattes_mutual_information, mutual_information


def _mi_from_tables(wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    joint = wa.T @ wb
    joint = joint / joint.sum()
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    return (joint * (torch.log(joint + 1e-10) - torch.log(pa * pb + 1e-10))).sum()


def _samples():
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(4000, generator=gen, dtype=torch.float64)
    b = (0.6 * a + 0.4 * torch.rand(4000, generator=gen, dtype=torch.float64)) ** 2
    # the ends of the range, and a bin centre and a bin edge of a 32-bin table
    edges = torch.tensor([0.0, 1.0, 1.0, 0.0, 15 / 31, 15.5 / 31], dtype=torch.float64)
    return torch.cat([a, edges]), torch.cat([b, edges.flip(0)])


def test_parzen_mutual_information_equals_full_gaussian_windows():
    """mutual_information computes each window on the 7 bins around the sample; the value and
    the gradient equal those of windows evaluated on every bin."""
    a, b = _samples()
    bins, sigma = 32, 0.5 / 31
    centers = torch.linspace(0, 1, bins, dtype=torch.float64)

    def window(v):
        w = torch.exp(-0.5 * ((v[:, None] - centers) / sigma) ** 2)
        return w / w.sum(1, keepdim=True)

    x = a.clone().requires_grad_(True)
    reference = _mi_from_tables(window(x), window(b))
    (grad_ref,) = torch.autograd.grad(reference, x)
    y = a.clone().requires_grad_(True)
    value = mutual_information(y[None], b[None], max_samples=10**6)
    (grad,) = torch.autograd.grad(value, y)
    assert float(value.detach()) == pytest.approx(float(reference.detach()), rel=1e-9)
    assert torch.allclose(grad, grad_ref, rtol=1e-6, atol=1e-9 * float(grad_ref.abs().max()))


def test_mattes_mutual_information_equals_dense_bspline_tables():
    """mattes_mutual_information adds each sample to its 4 x 4 bins in closed form; the value and
    the gradient equal those of the cubic B-spline kernel evaluated at every bin, values of
    exactly 0 and 1 included."""
    a, b = _samples()
    bins = 32

    def table(v):
        d = ((1 + v * (bins - 3))[:, None] - torch.arange(bins, dtype=v.dtype)).abs()
        return torch.where(d < 1, 2 / 3 - d**2 + d**3 / 2, (2 - d).clamp(min=0) ** 3 / 6)

    x = a.clone().requires_grad_(True)
    reference = _mi_from_tables(table(x), table(b))
    (grad_ref,) = torch.autograd.grad(reference, x)
    y = a.clone().requires_grad_(True)
    value = mattes_mutual_information(y, b)
    (grad,) = torch.autograd.grad(value, y)
    assert float(value.detach()) == pytest.approx(float(reference.detach()), rel=1e-9)
    assert torch.allclose(grad, grad_ref, rtol=1e-6, atol=1e-9 * float(grad_ref.abs().max()))


@pytest.mark.parametrize("shape,stride", [((1, 8, 6, 7, 5), 1), ((1, 8, 9, 10, 11), 2), ((2, 3, 6, 6, 6), 1)])
def test_networks_convolution_equals_pytorch(shape, stride):
    """The networks' Conv3d (oneDNN's kernel forced on a CPU) gives F.conv3d's outputs and
    gradients; float64 takes PyTorch's own path."""
    from regode.odenet.networks import Conv3d

    torch.manual_seed(0)
    conv = Conv3d(shape[1], 4, 3, stride, 1)
    x = torch.randn(*shape, requires_grad=True)
    out = conv(x)
    reference = F.conv3d(x, conv.weight, conv.bias, stride, 1)
    assert out.shape == reference.shape
    assert torch.allclose(out, reference, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (x, conv.weight, conv.bias))
    grads_ref = torch.autograd.grad(reference.square().sum(), (x, conv.weight, conv.bias))
    for g, r in zip(grads, grads_ref, strict=False):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    double = conv.double()(x.detach().double())
    assert double.dtype == torch.float64
    assert torch.allclose(double.float(), reference.detach(), atol=1e-5)


@pytest.mark.parametrize(
    "shape,window", [((2, 3, 7, 9, 11), 5), ((1, 5, 6, 5, 8), 3), ((1, 1, 5, 5, 5), 5), ((1, 2, 4, 6, 3), 1)]
)
def test_box_mean_equals_average_pooling(shape, window):
    """The running-sum box filter behind local NCC gives avg_pool3d's windows and gradients."""
    from regode.losses import box_mean

    x = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    out, reference = box_mean(x, window), F.avg_pool3d(x, window, stride=1)
    assert out.shape == reference.shape
    assert torch.allclose(out, reference, atol=1e-12)
    weights = torch.rand(reference.shape, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    (grad_ref,) = torch.autograd.grad((reference * weights).sum(), x)
    assert torch.allclose(grad, grad_ref, atol=1e-12)


def test_local_ncc_of_a_linear_relation_and_of_noise():
    """Squared local NCC is 1 for a local linear relation of either sign and near 0 for unrelated noise."""
    from regode.losses import local_ncc

    gen = torch.Generator().manual_seed(2)
    a = torch.rand(1, 1, 12, 10, 11, dtype=torch.float64, generator=gen)
    assert float(local_ncc(a, 3 * a + 1)) == pytest.approx(1.0, abs=5e-3)  # eps in the denominator
    assert float(local_ncc(a, 1 - a)) == pytest.approx(1.0, abs=5e-3)
    assert float(local_ncc(a, torch.rand(a.shape, dtype=torch.float64, generator=gen))) < 0.1


def test_determinant3_equals_torch_det():
    """The cofactor determinant of the folding penalty gives torch.linalg.det's values and gradients."""
    from regode.losses import determinant3

    m = (
        torch.eye(3, dtype=torch.float64)
        + 0.6 * torch.randn(4, 5, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ).requires_grad_(True)
    assert torch.allclose(determinant3(m), torch.linalg.det(m), atol=1e-12)
    (grad,) = torch.autograd.grad(determinant3(m).sum(), m)
    (grad_ref,) = torch.autograd.grad(torch.linalg.det(m).sum(), m)
    assert torch.allclose(grad, grad_ref, atol=1e-10)


def test_fit_samples_the_fixed_image_on_a_lattice_as_at_its_points(monkeypatch):
    """regode.fitting reads the fixed image on a downsized lattice separably; the values are those
    of sampling at the lattice's world points, also where the lattice leaves the image (padding)."""
    from dataclasses import replace

    from regode.fitting import _fixed_values
    from regode.grid import Grid
    from regode.lattice import Lattice, downsize
    from regode.sampling import sample

    grid = Grid((13, 11, 9), (1.5, 2.0, 1.0), (-10.0, 4.0, 7.0), (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    volume = torch.rand(1, 1, *grid.shape, generator=torch.Generator().manual_seed(5))
    lattice = downsize(grid, 2, torch.Generator().manual_seed(6))
    assert lattice.grid is not None
    shifted = Lattice(
        lattice.points + 3.0,
        lattice.step,
        replace(lattice.grid, origin=tuple(float(o) + 3.0 for o in lattice.grid.origin)),
    )
    expected = [sample(volume, grid, lat.points) for lat in (lattice, shifted)]
    monkeypatch.setattr("regode.fitting.sample", None)  # the separable path only
    for lat, values in zip((lattice, shifted), expected, strict=False):
        assert torch.allclose(_fixed_values(volume, grid, lat), values, atol=1e-5)
