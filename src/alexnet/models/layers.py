"""Layers the papers define that PyTorch does not ship in their exact form.

* :class:`LocalResponseNorm` — AlexNet §3.3 "local response normalization", in both conventions:
  the paper's (``α`` multiplies the window *sum*, ``k = 2``) and Caffe's / ONNX's / ``torch.nn``'s
  (``α`` is divided by the window size ``n``, ``k = 1`` in Caffe).
* :func:`renormalize_filters_` — Zeiler & Fergus §3: "each filter in the convolutional layers whose RMS value
  exceeds a fixed radius of 1e-1 is renormalized to this fixed radius".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def lrn_reference(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """AlexNet §3.3 written out literally: ``b_i = a_i / (k + alpha * sum_j a_j^2)^beta``.

    ``j`` runs over ``max(0, i - size//2) .. min(N-1, i + size//2)`` (the paper's window; for an even size the
    window is ``i - size//2 .. i + (size-1)//2`` as in ``torch.nn.LocalResponseNorm``). ``alpha`` here multiplies
    the sum, so pass ``alpha / size`` for Caffe's convention. Slow; the reference the fast path is tested against.
    """
    n_ch = x.shape[1]
    out = torch.empty_like(x)
    sq = x * x
    for i in range(n_ch):
        lo, hi = max(0, i - size // 2), min(n_ch - 1, i + (size - 1) // 2)
        out[:, i] = x[:, i] / (k + alpha * sq[:, lo : hi + 1].sum(dim=1)) ** beta
    return out


def channel_window_sum(sq: torch.Tensor, size: int) -> torch.Tensor:
    """Sum of ``sq`` over a window of ``size`` neighbouring channels (dim 1), zero-padded at the ends."""
    before, after = size // 2, (size - 1) // 2
    padded = F.pad(sq, (0, 0, 0, 0, before, after))
    n_ch = sq.shape[1]
    acc = padded[:, 0:n_ch]
    for d in range(1, size):
        acc = acc + padded[:, d : d + n_ch]
    return acc


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Functional LRN; ``alpha`` multiplies the window sum (the paper's convention)."""
    return x / (k + alpha * channel_window_sum(x * x, size)).pow(beta)


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels (AlexNet §3.3).

    ``b_i = a_i / (k + α' Σ_{j in window(i)} a_j²)^β`` with ``α' = alpha`` when ``alpha_over_size`` is False (the
    paper: k=2, n=5, α=1e-4, β=0.75) and ``α' = alpha / size`` when True (Caffe, ONNX ``LRN`` and
    ``torch.nn.LocalResponseNorm``; Caffe's default k=1).
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        alpha_over_size: bool = False,
    ) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.alpha_over_size = alpha_over_size

    @property
    def sum_alpha(self) -> float:
        """The coefficient that multiplies the window sum of squares."""
        return self.alpha / self.size if self.alpha_over_size else self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.sum_alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        conv = "caffe (alpha/size)" if self.alpha_over_size else "paper (alpha*sum)"
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, convention={conv}"


@torch.no_grad()
def renormalize_filters_(model: nn.Module, max_rms: float = 0.1) -> int:
    """Zeiler & Fergus §3: rescale every conv filter whose RMS exceeds ``max_rms`` to RMS ``max_rms``.

    A "filter" is one output channel's weights (``weight[o]``); biases are left alone. Returns how many filters
    were rescaled. Works in place on every ``nn.Conv2d`` of ``model``.
    """
    changed = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight
            rms = w.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            scale = (max_rms / rms).clamp(max=1.0)
            changed += int((scale < 1.0).sum())
            w.mul_(scale)
    return changed
