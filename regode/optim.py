"""Adam (Kingma & Ba), written out.

``torch.optim`` imports PyTorch's compiler (``torch._dynamo``) when its first optimiser is built:
about 2 s of start-up, which a command that registers one pair pays every time. The per-pair
optimisations (``register``'s polish, ``fit-field``) use this one; training keeps ``torch.optim``.
"""

from __future__ import annotations

import torch


class Adam:
    """Adam over ``tensors`` (leaf tensors that require grad), the update of ``torch.optim.Adam``
    without weight decay or amsgrad; :meth:`step` takes the learning rate, so callers can decay it.
    ``scales`` (one per tensor: a number, or a tensor that broadcasts to it) multiply the learning
    rate of each tensor, so that unknowns of different units move comparable distances per step."""

    def __init__(self, tensors, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, scales=None):
        self.tensors = list(tensors)
        self.scales = list(scales) if scales is not None else [1.0] * len(self.tensors)
        self.betas, self.eps, self.count = betas, eps, 0
        self.means = [torch.zeros_like(t) for t in self.tensors]
        self.squares = [torch.zeros_like(t) for t in self.tensors]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """One update from the tensors' gradients (a tensor without one is left alone), then the
        gradients are cleared."""
        (b1, b2) = self.betas
        self.count += 1
        correction1, correction2 = 1 - b1**self.count, 1 - b2**self.count
        for t, scale, mean, square in zip(self.tensors, self.scales, self.means, self.squares, strict=False):
            if t.grad is None:
                continue
            mean.mul_(b1).add_(t.grad, alpha=1 - b1)
            square.mul_(b2).addcmul_(t.grad, t.grad, value=1 - b2)
            t.sub_(lr * scale / correction1 * mean / (square.sqrt() / correction2**0.5 + self.eps))
            t.grad = None
