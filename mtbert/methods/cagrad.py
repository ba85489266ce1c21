"""CAGrad: Liu et al., *Conflict-Averse Gradient Descent for Multi-task Learning*, NeurIPS 2021.

The update d maximises the worst task's improvement, min_i g_i . d, within a ball around the mean
gradient g0 = (1/T) sum_i g_i: ||d - g0|| <= c ||g0||, c = ``grad.cagrad_c`` (c = 0 is the mean
gradient; a large c tends to the multiple-gradient descent direction). Its dual is a T-dimensional
problem over the simplex (the paper's eq. 4 and Algorithm 1):

    w* = argmin_{w in simplex}  g_w . g0 + c ||g0|| ||g_w||,    g_w = sum_i w_i g_i
    d  = g0 + c ||g0|| / ||g_w*|| * g_w*

All of it needs only the T x T Gram matrix of the task gradients. The authors solve for w with
scipy's SLSQP; here it is solved exactly in float64 by visiting the faces of the simplex, each of
which has a closed-form candidate (2^T - 1 faces: 7 for our three tasks). When g_w* = 0 (0 lies in
the hull of the task gradients, a Pareto-stationary point) the closed form divides by zero and d
falls back to the mean gradient.

Scale: the combiner leaves T d / (1 + c^2) in ``.grad``. T puts it on the scale of ``sum`` (the
gradient of the summed losses, T g0), so the learning rate keeps its meaning; 1/(1 + c^2) is the
authors' default rescaling (``rescale=1`` in their code), which keeps the norm from growing with c.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from mtbert.methods.base import COMBINERS, Surgery, gram_matrix

MAX_TASKS = 12  # the dual solve visits the 2^T - 1 faces of the simplex


def _face_minimum(Y: Tensor, y0: Tensor, c: float, face: list[int]) -> Tensor | None:
    """The minimiser of y0 . y + c ||y|| over the affine hull of the points Y[face], as weights (T,)
    on the simplex, or None when it has none or it lies outside the face.

    With p the hull's point nearest 0 and Q an orthonormal basis of its directions, y = p + Q z and
    ||y||^2 = ||p||^2 + ||z||^2; setting the gradient Q^T y0 + c z / ||y|| to 0 gives the closed form
    z = -Q^T y0 ||y|| / c, ||y|| = ||p|| / sqrt(1 - ||Q^T y0||^2 / c^2) (unbounded below if ||Q^T y0|| >= c).
    """
    base = Y[face[0]]
    if len(face) == 1:
        return F.one_hot(torch.tensor(face[0]), len(Y)).double()
    Q, R = torch.linalg.qr((Y[face[1:]] - base).T)  # (T, k), (k, k)
    if R.diagonal().abs().min() <= 1e-10 * max(1.0, float(R.abs().max())):
        return None  # affinely dependent points: the faces of a subset cover their hull
    q = Q.T @ y0
    q_sq = float(q @ q)
    if q_sq >= c * c:
        return None
    p = base - Q @ (Q.T @ base)
    y = p - Q @ q * (float(p.norm()) / math.sqrt(1 - q_sq / (c * c)) / c)
    u = torch.linalg.solve_triangular(R, (Q.T @ (y - base)).unsqueeze(1), upper=True).squeeze(1)
    local = torch.cat([(1 - u.sum()).reshape(1), u])  # barycentric coordinates on the face
    if float(local.min()) < -1e-12:
        return None
    w = torch.zeros(len(Y), dtype=torch.float64)
    w[face] = local.clamp_min(0)
    return w / w.sum()


def cagrad_weights(gram: Tensor, c: float) -> Tensor:
    """The dual solution w* (T,) on the simplex, from the Gram matrix (T, T) of the task gradients.

    Exact: the minimum lies in the relative interior of one face of the simplex, where it is the
    stationary point over the face's affine hull (``_face_minimum``); every face is tried and the
    best point kept. The problem is solved in coordinates y_i (rows of Y, Y Y^T = gram / ||g0||^2)
    that stand for the task gradients, so only the Gram matrix is needed.
    """
    T = gram.shape[0]
    if T > MAX_TASKS:
        raise ValueError(f"CAGrad got {T} task gradients, but solves for at most {MAX_TASKS}")
    A = gram.double()
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64)
    g0_sq = float(mean @ A @ mean)
    if c == 0 or g0_sq <= 0:
        return mean
    lam, V = torch.linalg.eigh(A / g0_sq)
    Y = V * lam.clamp_min(0).sqrt()  # (T, T): row i stands for g_i / ||g0||
    y0 = Y.T @ mean  # stands for g0 / ||g0||
    best, best_w = math.inf, mean
    for size in range(1, T + 1):
        for face in itertools.combinations(range(T), size):
            w = _face_minimum(Y, y0, c, list(face))
            if w is not None:
                y = Y.T @ w
                value = float(y0 @ y) + c * float(y.norm())
                if value < best:
                    best, best_w = value, w
    return best_w


def cagrad_coefficients(gram: Tensor, c: float) -> Tensor:
    """(T,) coefficients of the paper's d in terms of the task gradients: 1/T + c ||g0|| / ||g_w*|| w*."""
    T = gram.shape[0]
    A = gram.double()
    mean = torch.full((T,), 1.0 / T, dtype=torch.float64)
    g0_sq = float(mean @ A @ mean)
    w = cagrad_weights(gram, c)
    gw_sq = float(w @ A @ w)
    if c == 0 or g0_sq <= 0 or gw_sq <= 1e-16 * g0_sq:  # see the module docstring: d = g0
        return mean
    return mean + c * math.sqrt(g0_sq / gw_sq) * w


def conflict_averse(grads: Tensor, c: float) -> Tensor:
    """CAGrad's update direction d (P,) for the task gradients ``grads`` (T, P); c = 0 gives their mean."""
    if grads.ndim != 2 or grads.shape[0] < 1:
        raise ValueError(f"grads has shape {tuple(grads.shape)}, but must be (T, P) with T >= 1 tasks")
    if not c >= 0:
        raise ValueError(f"grad.cagrad_c is {c!r}, but must be >= 0")
    return cagrad_coefficients(gram_matrix(grads), c).to(grads.dtype) @ grads


@COMBINERS.register("cagrad")
class CAGrad(Surgery):
    """CAGrad on the encoder with c = ``grad.cagrad_c``; the update is T d / (1 + c^2) (see above)."""

    def mix(self, tasks: list[str], counts: Mapping[str, int], gram: Tensor) -> Tensor:
        c = self.config.cagrad_c
        return cagrad_coefficients(gram, c) * (len(tasks) / (1 + c * c))
