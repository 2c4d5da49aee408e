"""Linear classifiers on fixed features: the softmax and the linear SVM of Zeiler & Fergus §5.3 (Table 7).

Both minimise a strongly convex objective to its one optimum in float64 (the softmax by L-BFGS, the SVM by
Newton's method), so a result depends on the features and ``C`` alone, not on a learning rate, epochs or the
order of the images:

- ``softmax`` (multinomial logistic regression): ½‖W‖² + C Σᵢ −log softmax(xᵢW + b)[yᵢ], the bias not penalised
  (scikit-learn's ``LogisticRegression(C=C)``);
- ``svm`` (one-vs-rest, L2-regularised squared hinge, liblinear's default): for each class c,
  ½(‖w_c‖² + b_c²) + C Σᵢ max(0, 1 − tᵢ(xᵢ·w_c + b_c))² with tᵢ = +1 for the class and −1 for the others; the
  bias is penalised, as liblinear's constant feature (scikit-learn's ``LinearSVC(C=C)``).

Each feature is first standardised by the training images' mean and standard deviation (scikit-learn's
``StandardScaler``; a constant feature is only centred), so that ``C`` means the same on every layer.

Conv features outnumber the training images (ZF's layer 1 has 96×55×55 = 290,400 per image; Caltech-101 trains on
30 images of each of 102 classes). Then the problem is solved exactly in the span of the training images: at the
optimum W = −C Xᵀ G (the loss's gradient G), so W = Xᵀ U Λ^-½ A with X Xᵀ = U Λ Uᵀ, and both objectives become the
same objective of A on the images' coordinates X Xᵀ U Λ^-½ = U Λ^½ (n×n); a test image's are (x Xᵀ) U Λ^-½. The
decisions are the same; each step costs n²k instead of n·d·k, and no float64 copy of the features is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Kind = Literal["softmax", "svm"]
KINDS: tuple[Kind, ...] = ("svm", "softmax")

CHUNK = 8192  # feature columns standardised and multiplied at a time: bounded float64 memory


@dataclass
class Linear:
    """``decision(x) = x @ weight + bias`` (float64): the largest score is the predicted class."""

    weight: torch.Tensor  # d×k
    bias: torch.Tensor  # k
    converged: bool = True

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight) @ self.weight + self.bias


def fit(
    kind: Kind,
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    C: float = 1.0,
    *,
    tolerance: float | None = None,
) -> Linear:
    """The optimum of ``kind``'s objective (module docstring) on features ``x`` (n×d) and labels ``y`` (n), on
    ``x``'s device in float64: the softmax by L-BFGS to a gradient of at most ``tolerance`` (default
    :data:`TOLERANCE`; :func:`_fit_softmax`), the SVM exactly, by Newton's method on its active sets
    (:func:`_fit_svm`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown classifier {kind!r}; choose one of: {', '.join(KINDS)}")
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    x = x.double()
    y = y.to(x.device, torch.int64)
    if kind == "softmax":
        return _fit_softmax(x, y, classes, C, TOLERANCE if tolerance is None else tolerance)
    return _fit_svm(x, y, classes, C)


# The largest gradient entry at which a fit counts as converged, in the objective divided by C·n (the mean loss
# plus ½‖W‖²/(C·n)): scikit-learn's LogisticRegression stops at 1e-4 on this same objective by default.
TOLERANCE = 1e-5


def _fit_softmax(
    x: torch.Tensor,
    y: torch.Tensor,
    classes: int,
    C: float,
    tolerance: float = TOLERANCE,
    max_iter: int = 5000,
) -> Linear:
    """L-BFGS with a strong-Wolfe line search on W / s, where sⱼ = (1 + C λⱼ / 4)^-½ and λⱼ is feature j's sum of
    squares: the objective's curvature along feature j is at most 1 + C λⱼ / 2 (a softmax's Hessian is at most
    ½ I), so in principal coordinates (:func:`principal_coordinates`) this change of variables makes it nearly
    round; it changes the path, not the optimum. ``converged``: the objective's gradient in W ends at most
    ``tolerance`` (L-BFGS stops once its gradient in W / s is below that times the smallest sⱼ, which ensures
    it)."""
    n, d = x.shape
    step = (1 + 0.25 * C * x.square().sum(0)).rsqrt().unsqueeze(1)
    free = torch.zeros(d, classes, dtype=torch.float64, device=x.device, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, device=x.device, requires_grad=True)
    scale = 1.0 / (C * n)  # the same minimiser, with gradients of order one whatever the number of images

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        weight = free * step
        loss = F.cross_entropy(x @ weight + bias, y, reduction="sum")
        value = scale * (0.5 * weight.square().sum() + C * loss)
        value.backward()
        return value

    optimiser = torch.optim.LBFGS(
        [free, bias],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tolerance * float(step.min()),
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    optimiser.step(closure)
    closure()
    # the gradient in W, not in W / s: of the objective itself (divided by C·n)
    grad = torch.cat([(free.grad / step).flatten(), bias.grad.flatten()])  # type: ignore[union-attr, operator]
    return Linear((free * step).detach(), bias.detach(), bool(grad.abs().max() <= tolerance))


def _svm_objective(beta: torch.Tensor, f: torch.Tensor, sign: torch.Tensor, C: float) -> torch.Tensor:
    """Each class's SVM objective at dual coefficients ``beta`` with training decisions ``f`` = K̃ β."""
    return 0.5 * (beta * f).sum(0) + C * (1 - sign * f).clamp(min=0).square().sum(0)


def newton_points(
    system: torch.Tensor, sign: torch.Tensor, active: torch.Tensor, *, complement: bool | None = None
) -> torch.Tensor:
    """For each class c (a column), β with β_A = M_AA⁻¹ t_A on its active set A and 0 elsewhere, M = ``system``
    (K̃ + I/2C, n×n). Where A is the smaller part, M_AA is factorised directly (|A|³/3); where the images
    outside A are (the usual case: most images sit inside the margin), M⁻¹ is computed once for every class and
    M_AA⁻¹ = (M⁻¹)_AA − (M⁻¹)_AR ((M⁻¹)_RR)⁻¹ (M⁻¹)_RA (R the rest, the inverse of a principal block), which
    costs |R|³/3 + n·|R| per class. ``complement`` forces one way (tests)."""
    classes = sign.shape[1]
    out = torch.zeros_like(sign)
    inverse = solved = None
    for c in range(classes):
        a = active[:, c].nonzero().squeeze(1)
        r = (~active[:, c]).nonzero().squeeze(1)
        if not len(a):
            continue
        if complement is False or (complement is None and len(a) <= len(r)):
            factor = torch.linalg.cholesky(system[a][:, a])
            out[a, c] = torch.cholesky_solve(sign[a, c : c + 1], factor).squeeze(1)
            continue
        if inverse is None:
            inverse = torch.cholesky_inverse(torch.linalg.cholesky(system))
            solved = inverse @ (sign * active)  # (M⁻¹ t_A) of every class at once, t zero outside A
        assert solved is not None
        out[a, c] = solved[a, c]
        if len(r):
            v = torch.linalg.solve(inverse[r][:, r], solved[r, c])
            out[a, c] -= inverse[a][:, r] @ v
    return out


def _fit_svm(x: torch.Tensor, y: torch.Tensor, classes: int, C: float, max_iter: int = 100) -> Linear:
    """Newton's method for the squared-hinge SVM in its kernel form (Chapelle, "Training a support vector machine
    in the primal", 2007; Keerthi & DeCoste 2005): w = x̃ᵀβ with x̃ = [x, 1] (the bias a constant feature), so
    f = K̃ β with K̃ = x xᵀ + 1. On the images that violate the margin (the active set A) the objective is
    quadratic, and its minimiser is β_A = (K̃_AA + I / 2C)⁻¹ t_A, 0 elsewhere; a step to it (halved until the
    objective falls) gives new decisions and a new active set (:func:`newton_points`). An active set that a
    full step leaves unchanged is the exact optimum: this ends in a few steps."""
    n = len(x)
    kernel = x @ x.T + 1.0
    sign = torch.full((n, classes), -1.0, dtype=torch.float64, device=x.device)
    sign[torch.arange(n, device=x.device), y] = 1.0
    beta = torch.zeros_like(sign)
    f = torch.zeros_like(sign)
    system = kernel + torch.eye(n, dtype=torch.float64, device=x.device) / (2 * C)
    converged = False
    for _ in range(max_iter):
        active = sign * f < 1
        direction = newton_points(system, sign, active) - beta
        f_direction = kernel @ direction
        before = _svm_objective(beta, f, sign, C)
        step = torch.ones(classes, dtype=torch.float64, device=x.device)
        for _ in range(60):
            after = _svm_objective(beta + step * direction, f + step * f_direction, sign, C)
            worse = after > before + 1e-12 * before.abs()
            if not worse.any():
                break
            step = torch.where(worse, step / 2, step)
        beta, f = beta + step * direction, f + step * f_direction
        if bool((step == 1).all()) and bool(((sign * f < 1) == active).all()):
            converged = True
            break
    return Linear(x.T @ beta, beta.sum(0), converged)


@dataclass
class Standardiser:
    """The training features' per-feature mean and standard deviation (1 for a constant feature)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, device: torch.device | str = "cpu") -> Standardiser:
        mean = torch.empty(x.shape[1], dtype=torch.float64, device=device)
        std = torch.empty_like(mean)
        for j in range(0, x.shape[1], CHUNK):
            part = x[:, j : j + CHUNK].to(device, torch.float64)
            mean[j : j + CHUNK] = part.mean(0)
            std[j : j + CHUNK] = part.std(0, correction=0)
        return cls(mean, torch.where(std > 1e-12 * std.max().clamp(min=1e-300), std, torch.ones_like(std)))

    def columns(self, x: torch.Tensor, j: int) -> torch.Tensor:
        """Columns ``j … j+CHUNK`` of ``x`` standardised, float64, on the statistics' device."""
        part = x[:, j : j + CHUNK].to(self.mean.device, torch.float64)
        return (part - self.mean[j : j + CHUNK]) / self.std[j : j + CHUNK]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.columns(x, j) for j in range(0, x.shape[1], CHUNK)], 1)


def _gram(a: torch.Tensor, b: torch.Tensor, standardise: Standardiser) -> torch.Tensor:
    """Standardised ``a`` times standardised ``b`` transposed (float64), a chunk of columns at a time."""
    out = torch.zeros(len(a), len(b), dtype=torch.float64, device=standardise.mean.device)
    for j in range(0, a.shape[1], CHUNK):
        left = standardise.columns(a, j)
        out += left @ (left if b is a else standardise.columns(b, j)).T  # X Xᵀ: each chunk standardised once
    return out


def _kept(eigenvalues: torch.Tensor, vectors: torch.Tensor, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    keep = eigenvalues > rtol * eigenvalues.max().clamp(min=1e-300)
    return eigenvalues[keep], vectors[:, keep]


def span_coordinates(
    gram: torch.Tensor, cross: torch.Tensor, rtol: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images' coordinates U Λ^½ and the test images' (cross) U Λ^-½ in the span of the training
    images, from their Gram matrix X Xᵀ = U Λ Uᵀ (n×n) and the test images' products with them ``cross`` (m×n);
    the directions whose eigenvalue is below ``rtol`` times the largest are dropped (the training images' rank)."""
    eigenvalues, vectors = _kept(*torch.linalg.eigh(gram), rtol)
    return vectors * eigenvalues.sqrt(), (cross @ vectors) / eigenvalues.sqrt()


def principal_coordinates(
    x_train: torch.Tensor, x_test: torch.Tensor, standardise: Standardiser, rtol: float = 1e-10
) -> tuple[torch.Tensor, torch.Tensor]:
    """The standardised features of the training and test images along the training images' principal axes
    (float64, on the standardiser's device): X V and X_test V with Xᵀ X = V Λ Vᵀ, the axes of no variance
    dropped. A rotation: distances, inner products and so both classifiers' decisions are unchanged, while each
    coordinate's sum of squares is its eigenvalue. With more features than images, the coordinates are taken
    in the span of the training images (:func:`span_coordinates`), from n×n products only."""
    if x_train.shape[1] > len(x_train):
        return span_coordinates(
            _gram(x_train, x_train, standardise), _gram(x_test, x_train, standardise), rtol
        )
    train, test = standardise(x_train), standardise(x_test)
    _, axes = _kept(*torch.linalg.eigh(train.T @ train), rtol)
    return train @ axes, test @ axes


__all__ = [
    "KINDS",
    "TOLERANCE",
    "Kind",
    "Linear",
    "Standardiser",
    "fit",
    "newton_points",
    "principal_coordinates",
    "span_coordinates",
]
