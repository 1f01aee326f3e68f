"""The linear probe's solver and its grouped search over C, batched on torch.

The objective is scikit-learn's ``LogisticRegression(solver="lbfgs", class_weight="balanced")``
on standardized columns (multinomial; the intercept unpenalized; a class absent from the rows is
left out, as sklearn's ``classes_`` leaves it out), scaled by the summed row weights:

    mean_w(cross-entropy) + ||W||^2 / (2 C sum(w))

It is strictly convex, so any solver that converges gives sklearn's minimizer. What makes it
fast where sklearn took minutes on 10,015 x 1,280 real embeddings:

- every C of the grid is one member of a batch: one matrix product reads the rows once for all
  of them, and the products are taken in the layout MKL runs fast with few columns on one thread
  (``W^T @ X^T`` and ``R^T @ X``, the rows kept in both layouts: 2-6x faster than ``X @ W`` and
  ``X^T @ R`` at 7 columns);
- each member is its own L-BFGS (``lbfgs.minimize``: its own curvature history, step length and
  stop), so a strongly penalized C that converges in 15 iterations leaves the batch then, and the
  others keep their histories (rebuilding one batched L-BFGS each time a member left, as tried
  before, threw them away);
- L-BFGS runs in preconditioned coordinates ``W = V diag(p) U``: ``V`` the eigenvectors of the
  standardized rows' correlation, ``p = (c0 lambda + 1 / (C sum(w)))^-1/2`` from its eigenvalues
  ``lambda`` and each member's penalty. The penalty ``||W||^2`` is the same in either coordinates,
  so the minimizer is unchanged; only the number of iterations falls (CNN embeddings are strongly
  correlated: the unpreconditioned problem is badly conditioned at large C). One
  eigendecomposition per outer fold serves its inner folds and its final fit.

Convergence is sklearn's rule, ``max |grad W| <= tol`` on the scaled objective, or ``max_iter``
iterations: ``tol`` is sklearn's 1e-4 by default, ``SEARCH_TOL`` (1e-5) in the search over C,
which runs every C to 1e-4 first and continues only the contenders to 1e-5 (``LogisticBatch``
keeps each member's L-BFGS history between the two).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .lbfgs import Result

CURVATURE = 0.1   # c0: the softmax's typical curvature, for the preconditioner only
# The search's gradient tolerance, 10x tighter than sklearn's 1e-4: the rule is absolute, and at
# large C (the penalty's curvature ~1 / (C n), 2e-6 at C = 100 on 5,300 rows) a fit stopped at
# 1e-4 can be far from its minimizer: on the real embeddings its held-out score moved by up to
# 4 points between 1e-4 and 1e-6, by the solver's path (so sklearn's, the old torch search's and
# this one's disagreed there); at 1e-5 every C's score is within 0.9 point of the 1e-6 one.
SEARCH_TOL = 1e-5
# The search first runs every C to sklearn's 1e-4 (half the iterations of 1e-5 at large C) and
# continues only the contenders to SEARCH_TOL: the best C, its grid neighbours and every C
# within 2 points of it (at 1e-4 a large C's score moved by up to 1.4 points on the real
# embeddings, 0.7 on synthetic data: a C further below cannot overtake the best)
COARSE_TOL = 1e-4
CONTENDER_MARGIN = 0.02


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-row weights n / (k * count) over the classes the rows have (sklearn's "balanced")."""
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (len(y) / (len(classes) * counts))[inverse]


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and scale as sklearn's StandardScaler (population sd; 1 for a constant)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean, scale


def _preconditioner(xs, dtype):
    """Eigenvectors and eigenvalues of the standardized rows' correlation (float32 eigh: twice
    as fast as float64's, and a preconditioner needs no more)."""
    import torch
    corr = (xs.float().T @ xs.float()) / len(xs)
    lam, vec = torch.linalg.eigh(corr)
    return vec.to(dtype), lam.clamp(min=0).to(dtype)


def preconditioner(xs: np.ndarray):
    """The basis ``fit_logistic`` and ``choose_c_grouped`` take: ``(V, lambda)`` of standardized
    rows ``xs`` (float32; computed once, it serves every fit on rows like these)."""
    import torch
    return _preconditioner(torch.as_tensor(xs, dtype=torch.float32), torch.float32)


class LogisticBatch:
    """The probe's objective on standardized rows ``xs``, one member per C in ``cs``, minimized
    by per-member L-BFGS; ``solve`` may be called again with a tighter tolerance (for some
    members, or all) and continues where the last call stopped, histories and all."""

    def __init__(self, xs: np.ndarray, y: np.ndarray, cs, n_classes: int, *,
                 sample_weight: np.ndarray | None = None, dtype: str = "float32", basis=None):
        import torch

        dt = getattr(torch, dtype)
        x = torch.as_tensor(np.ascontiguousarray(xs), dtype=dt)
        n, f = x.shape
        w = balanced_weights(y) if sample_weight is None else np.asarray(sample_weight, np.float64)
        total = float(w.sum())
        present = torch.zeros(n_classes, dtype=torch.bool)
        present[np.unique(y)] = True
        k = n_classes
        # two classes: sklearn fits one vector w = W1 - W0 with penalty ||w||^2 / 2C; the
        # symmetric pair's minimizer has W0 = -W1, so ||W0||^2 + ||W1||^2 = ||w||^2 / 2: the
        # pair needs 2 / C
        twice = 2.0 if int(present.sum()) == 2 else 1.0
        self.inv_c = torch.as_tensor([twice / (c * total) for c in cs], dtype=dt)     # (M,)
        vec, lam = basis if basis is not None else _preconditioner(x, dt)
        self.vec, lam = vec.to(dt), lam.to(dt)
        self.p = (CURVATURE * lam[None, :] + self.inv_c[:, None]).rsqrt()[:, None, :]  # (M,1,F)
        self.pb = CURVATURE ** -0.5                                             # the intercept's
        self.mask = torch.where(present, 0.0, -torch.inf).to(dt)[:, None]       # (K, 1)
        # rows in both layouts: a product with few columns is several times faster as a wide
        # one (W^T @ X^T and R^T @ X) than as a tall one (X @ W, X^T @ R) in MKL on one thread
        self.x, self.xt = x, x.T.contiguous()                                  # (N, F), (F, N)
        self.onehot = torch.zeros(k, n, dtype=dt)                              # (K, N)
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        self.onehot[self.y, torch.arange(n)] = 1.0
        self.wt = torch.as_tensor(w / total, dtype=dt)
        self.present, self.shape = present, (len(cs), k, f)
        self.result: Result | None = None

    def _weights(self, theta, idx):
        """W^T (m*K, F) of members ``idx`` from their coordinates ``theta`` (m, K*F + K)."""
        _, k, f = self.shape
        return (self.p[idx] * theta[:, :k * f].view(len(idx), k, f)).view(-1, f) @ self.vec.T

    def _objective(self, theta, idx):
        import torch

        (_, k, f), n, m = self.shape, len(self.y), len(idx)
        kf, wt = k * f, self.wt
        wt_ = self._weights(theta, idx)
        z = (wt_ @ self.xt).view(m, k, n) + self.pb * theta[:, kf:, None] + self.mask
        lse = torch.logsumexp(z, dim=1)                                        # (m, N)
        ce = lse - z.gather(1, self.y[None, None, :].expand(m, 1, n))[:, 0]
        resid = wt * (torch.exp(z - lse[:, None]) - self.onehot)               # (m, K, N)
        ic = self.inv_c[idx]
        value = (wt * ce).sum(1) + 0.5 * ic * wt_.view(m, kf).square().sum(1)
        gw = (resid.view(m * k, n) @ self.x).view(m, k, f) + ic[:, None, None] * wt_.view(m, k, f)
        gb = resid.sum(2)                                                      # (m, K)
        # sklearn's rule: the largest gradient entry in the original coordinates
        measure = torch.maximum(gw.abs().amax((1, 2)), gb[:, self.present].abs().amax(1))
        gu = self.p[idx] * (gw.view(m * k, f) @ self.vec).view(m, k, f)
        return value, torch.cat([gu.view(m, kf), self.pb * gb], 1), measure

    def solve(self, tol, *, max_iter: int = 1000, warm=None):
        """Run every member until its gradient measure is <= ``tol`` (one value, or one per
        member) or ``max_iter`` iterations in all; the first time from zero, or from ``warm``
        coefficients ``(coef (M, K, F), intercept (M, K))``, then onwards."""
        import torch

        from .lbfgs import minimize

        m, k, f = self.shape
        dt = self.x.dtype
        x0 = torch.zeros(m, k * f + k, dtype=dt)
        if warm is not None and self.result is None:   # W = V diag(p) U: U = (W V) / p
            coef = torch.as_tensor(warm[0], dtype=dt)
            x0[:, :k * f] = ((coef @ self.vec) / self.p).reshape(m, k * f)
            intercept = torch.as_tensor(warm[1], dtype=dt)
            x0[:, k * f:] = torch.where(intercept.isfinite(), intercept, 0.0) / self.pb
        with torch.no_grad():
            self.result = minimize(self._objective, x0, tol, max_iter=max_iter,
                                   start=self.result)
        return self.result

    def coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """``coef`` (M, K, F) and ``intercept`` (M, K) at the current points, float64."""
        import torch

        m, k, f = self.shape
        if self.result is None:
            raise RuntimeError("LogisticBatch.coefficients before minimize")
        theta = self.result.x
        with torch.no_grad():
            coef = self._weights(theta, torch.arange(m)).view(m, k, f)
            intercept = self.pb * theta[:, k * f:] + self.mask[:, 0]
        return coef.double().numpy(), intercept.double().numpy()


def fit_logistic(xs: np.ndarray, y: np.ndarray, cs, n_classes: int, *,
                 sample_weight: np.ndarray | None = None, max_iter: int = 1000,
                 tol: float = 1e-4, dtype: str = "float32", basis=None, stats: dict | None = None,
                 warm=None) -> tuple[np.ndarray, np.ndarray, int]:
    """Multinomial logistic regressions on standardized ``xs``, one per C in ``cs``, batched.

    Returns ``coef`` (len(cs), n_classes, F), ``intercept`` (len(cs), n_classes) and the most
    L-BFGS iterations any member ran. Classes that ``y`` lacks get coefficient 0 and an
    intercept of -inf (they are never predicted, as sklearn leaves them out). ``basis`` is a
    precomputed ``(V, lambda)`` of a similar design (the preconditioner only: any basis gives the
    same minimizer). Each C is its own L-BFGS (``lbfgs.minimize``: its own history and steps,
    leaving the batch when it converges); they share each evaluation's matrix products. ``stats``,
    when given, receives each member's iterations, whether it converged and the evaluations.
    ``warm``: coefficients ``(coef, intercept)`` to start from (``warm_start``), else zero."""
    batch = LogisticBatch(xs, y, cs, n_classes, sample_weight=sample_weight, dtype=dtype,
                          basis=basis)
    res = batch.solve(tol, max_iter=max_iter, warm=warm)
    if stats is not None:
        stats.update(iterations=res.iterations.tolist(), converged=res.converged.tolist(),
                     evaluations=res.evaluations)
    coef, intercept = batch.coefficients()
    return coef, intercept, int(res.iterations.max())


def choose_c_grouped(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, cs,
                     inner_folds: int, seed: int, *, max_iter: int = 1000,
                     tol: float = SEARCH_TOL, coarse_tol: float = COARSE_TOL,
                     basis=None, solutions: list | None = None,
                     ) -> tuple[float, dict[float, float], int]:
    """The grid's C with the best mean balanced accuracy over an inner grouped CV (ties: the
    smaller C, the stronger penalty), as the probe's search always chose it; the grid's middle
    alone when folds cannot be made. Returns (C, {C: mean score}, inner folds used).

    Folds are sklearn's ``StratifiedGroupKFold(inner_folds, shuffle=True, random_state=seed)``;
    each fold's columns are standardized on its training rows; every C of a fold is fitted in
    one batch (balanced class weights of the fold's training rows), first to sklearn's
    ``coarse_tol``; the contenders (the best, its neighbours, every C within
    ``CONTENDER_MARGIN``) are then continued to ``tol`` and scored again, until the contenders
    of the refined scores are all refined. The other Cs' scores are their loose fits'.
    ``basis``: the preconditioner (``preconditioner``) of rows like these; by default the
    first fold's. ``solutions``, when given, receives each inner fold's fit at the chosen C:
    ``(mean, scale, coef (K, F), intercept (K,))`` in its own standardization."""
    from sklearn.metrics import balanced_accuracy_score

    from ..data.splits import stratified_group_folds
    from ..progress import track

    cs = sorted(cs)
    y = np.asarray(y)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    counts = np.bincount(y)
    k = min(inner_folds, len(np.unique(groups)), max(int(counts[counts > 0].min()), 2))
    if len(cs) == 1 or k < 2 or len(np.unique(y)) < 2:
        return cs[len(cs) // 2], {}, 0
    fold_of = stratified_group_folds(y, groups, k, seed)   # sklearn's folds, 10x faster
    folds = [(np.flatnonzero(fold_of != i), np.flatnonzero(fold_of == i)) for i in range(k)]
    n_classes = int(y.max()) + 1
    coarse = max(tol, coarse_tol)
    fitted = []   # (batch, standardized test rows, their labels) per inner fold
    for tr, te in track(folds, total=len(folds), desc=f"linear C search ({len(cs)} C)"):
        if len(np.unique(y[tr])) < 2:
            continue
        mean, scale = standardize(x[tr])
        xs = (x[tr] - mean) / scale
        if basis is None:   # one preconditioner for every fold: their rows are alike
            basis = preconditioner(xs)
        batch = LogisticBatch(xs, y[tr], cs, n_classes, basis=basis)
        batch.solve(coarse, max_iter=max_iter)
        fitted.append([batch, (x[te] - mean) / scale, y[te], None, mean, scale])

    def score(members):
        for fold in fitted:
            batch, xt, yt, got = fold[:4]
            coef, intercept = batch.coefficients()
            m, kk, f = coef.shape
            z = (xt @ coef.reshape(m * kk, f).T).reshape(-1, m, kk)
            got = got or [0.0] * m
            for i, pred in enumerate((z + intercept).argmax(axis=2).T):
                if i in members:
                    got[i] = balanced_accuracy_score(yt, pred)
            fold[3] = got
        return {c: float(np.mean([fold[3][i] for fold in fitted])) if fitted else -np.inf
                for i, c in enumerate(cs)}

    scores = score(set(range(len(cs))))
    # the loose tolerance's scores pick the contenders; each is continued to ``tol`` (its
    # history kept) and scored again, until no C within CONTENDER_MARGIN of the best (and no
    # neighbour of the best) has a loose score only
    refined: set[int] = set()
    while coarse > tol:
        best = max(range(len(cs)), key=lambda i: (scores[cs[i]], -cs[i]))
        todo = {i for i, c in enumerate(cs) if scores[c] >= scores[cs[best]] - CONTENDER_MARGIN}
        todo = (todo | {best - 1, best, best + 1}) & set(range(len(cs))) - refined
        if not todo:
            break
        refined |= todo
        tols = [tol if i in refined else coarse for i in range(len(cs))]
        for batch, *_ in fitted:
            batch.solve(tols, max_iter=max_iter)
        scores = score(todo)
    best = max(cs, key=lambda c: (scores[c], -c))
    if solutions is not None:
        for batch, *_, mean, scale in fitted:
            coef, intercept = batch.coefficients()
            solutions.append((mean, scale, coef[cs.index(best)], intercept[cs.index(best)]))
    return best, scores, k


def warm_start(solutions: list, mean: np.ndarray, scale: np.ndarray):
    """The mean of the inner folds' fits (``choose_c_grouped``'s ``solutions``), each moved to
    the standardization ``mean`` / ``scale``: a start for the fit on all the rows at that C
    (near its minimizer, so fewer iterations; the minimizer itself does not depend on it).
    ``(coef (1, K, F), intercept (1, K))``; a class some fold lacked starts at 0."""
    coefs, intercepts = [], []
    for m_f, s_f, coef, intercept in solutions:
        # (x - m_f) / s_f @ W^T + b == (x - mean) / scale @ (W * scale / s_f)^T + b'
        coefs.append(coef * (scale / s_f))
        b = intercept + coef @ ((mean - m_f) / s_f)
        intercepts.append(np.where(np.isfinite(intercept), b, 0.0))
    return np.mean(coefs, axis=0)[None], np.mean(intercepts, axis=0)[None]


def choose_c_sklearn(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, cs,
                     inner_folds: int, seed: int, *, max_iter: int = 1000,
                     ) -> tuple[float, dict[float, float]]:
    """The reference: the probe's search before it moved to torch (one sklearn
    ``StandardScaler + LogisticRegression`` per C and inner fold), for tests and benchmarks."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cs = sorted(cs)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    folds = StratifiedGroupKFold(inner_folds, shuffle=True, random_state=seed).split(x, y, groups)
    folds = list(folds)
    scores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        for c in cs:
            scores[c] = float(np.mean([balanced_accuracy_score(y[te], make_pipeline(
                StandardScaler(), LogisticRegression(C=c, class_weight="balanced",
                                                     max_iter=max_iter)).fit(x[tr], y[tr])
                .predict(x[te])) for tr, te in folds]))
    return max(cs, key=lambda c: (scores[c], -c)), scores
