"""L-BFGS for a batch of independent smooth convex problems, each member with its own history.

``minimize(fun, x0, tol)`` minimizes M functions at once: ``fun(x, idx)`` evaluates the members
``idx`` at the rows of ``x`` (one row a member) and returns their values, gradients and a
convergence measure each (the linear probe's is sklearn's ``max |gradient|``). What the batch
shares is the evaluation (one matrix product reads the data once for all members); the rest is
per member, as if each ran alone:

- its own curvature history (its pairs of its last ``history`` steps, in a ring of its own:
  the steps it did not run leave it as it was), its own initial scaling ``s.y / y.y`` and its
  own step length;
- a member stops when its measure reaches ``tol`` (or at ``max_iter``, or when its line search
  cannot make progress: scipy's L-BFGS-B stops there too) and leaves the evaluation; the others
  go on with their histories intact (a member leaving the batch costs the others nothing).

The line search backtracks from the step 1 (Armijo's sufficient decrease; on float32 near the
optimum, where a loss difference is below rounding, the step is taken when the directional
derivative at the trial point shows it has not overshot: Hager and Zhang's approximate Wolfe
condition). Only the members still searching are evaluated again.

``minimize(fun, None, tol, start=result)`` continues an earlier run where it stopped, with its
histories (``Result.state``): the linear probe's search runs every C to a loose tolerance and
then tightens only the contenders' (``tol`` may be one value per member).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

C1 = 1e-4          # Armijo's sufficient decrease
MAX_TRIALS = 20    # line-search evaluations per iteration before a member stops
HISTORY = 10       # curvature pairs kept per member (scipy's L-BFGS-B default, as sklearn's)


@dataclass(frozen=True)
class Result:
    """The minimizers (M, D), the values (M,), the measures (M,), the iterations run by each
    member (M,) and whether each reached ``tol`` (M,), all torch tensors; ``evaluations``: the
    calls of ``fun`` (each over the members still running)."""
    x: torch.Tensor
    f: torch.Tensor
    measure: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    evaluations: int
    state: tuple = ()   # (gradients, the histories, ring, scalings, stalled): for ``start``


def minimize(fun: Callable, x0, tol, *, max_iter: int = 1000, history: int = HISTORY,
             start: Result | None = None) -> Result:
    """Minimize M independent functions from ``x0`` (M, D). ``fun(x, idx) -> (f, g, measure)``
    for members ``idx`` (a long tensor) at ``x`` (len(idx), D): values (m,), gradients (m, D),
    convergence measures (m,). A member is done when its measure is <= ``tol`` (a number, or one
    per member). ``start``: an earlier result of the same functions to continue (``x0`` is then
    ignored): its points, histories and iteration counts (``max_iter`` counts them too)."""
    import torch

    if start is None:
        x = x0.clone()
        m_all, d = x.shape
        f, g, measure = fun(x, torch.arange(m_all))
        f, g, measure = f.clone(), g.clone(), measure.clone()
        # each member's last ``history`` pairs in a ring of its own (its slot ``ring[i]`` is
        # written next); a step whose pair was not positive leaves an empty slot (rho 0), which
        # the recursion passes over; a member that is done leaves its ring as it is
        s_hist = torch.zeros(history, m_all, d, dtype=x.dtype)
        y_hist = torch.zeros(history, m_all, d, dtype=x.dtype)
        rho = torch.zeros(history, m_all, dtype=x.dtype)
        ring = torch.zeros(m_all, dtype=torch.long)
        gamma = torch.ones(m_all, dtype=x.dtype)
        iters = torch.zeros(m_all, dtype=torch.long)
        stalled = torch.zeros(m_all, dtype=torch.bool)
        evaluations = 1
    else:   # the same tensors, continued in place (the earlier result is used up)
        x, f, measure, iters, evaluations = (start.x, start.f, start.measure, start.iterations,
                                             start.evaluations)
        g, s_hist, y_hist, rho, ring, gamma, stalled = start.state
        history = len(s_hist)
    tol = torch.as_tensor(tol, dtype=measure.dtype)
    rounding = 100 * torch.finfo(x.dtype).eps   # relative: loss differences below cannot tell
    while True:
        active = (measure > tol) & (iters < max_iter) & ~stalled
        if not active.any():
            break
        idx = active.nonzero()[:, 0]
        gi = g[idx]
        # the two-loop recursion, per member, on the members still running
        q = -gi
        alphas, pairs = [], []
        for j in range(history):   # newest first
            slot = (ring[idx] - 1 - j) % history
            pair = (s_hist[slot, idx], y_hist[slot, idx], rho[slot, idx])
            a = pair[2] * (pair[0] * q).sum(1)
            q = q - a[:, None] * pair[1]
            alphas.append(a)
            pairs.append(pair)
        r = gamma[idx, None] * q
        for (sj, yj, rj), a in zip(reversed(pairs), reversed(alphas), strict=True):
            b = rj * (yj * r).sum(1)
            r = r + (a - b)[:, None] * sj
        slope = (gi * r).sum(1)
        uphill = slope >= 0   # not a descent direction (rounding): the scaled gradient instead
        if uphill.any():
            r[uphill] = -gamma[idx[uphill], None] * gi[uphill]
            slope = (gi * r).sum(1)
        # the line search, from the step 1, only the members still searching evaluated again
        step = torch.ones(len(idx), dtype=x.dtype)
        new_f, new_g, new_measure = f[idx].clone(), gi.clone(), measure[idx].clone()
        accepted = torch.zeros(len(idx), dtype=torch.bool)
        searching = torch.arange(len(idx))
        for _ in range(MAX_TRIALS):
            members = idx[searching]
            ft, gt, mt = fun(x[members] + step[searching, None] * r[searching], members)
            evaluations += 1
            f0, s0 = f[members], slope[searching]
            dphi = (gt * r[searching]).sum(1)
            armijo = ft <= f0 + C1 * step[searching] * s0
            wolfe = (ft <= f0 + rounding * f0.abs().clamp(min=1.0)) & (dphi <= -0.8 * s0)
            ok = armijo | wolfe
            done = searching[ok]
            new_f[done], new_g[done], new_measure[done] = ft[ok], gt[ok], mt[ok]
            accepted[done] = True
            if ok.all():
                break
            # backtrack: the secant of the directional derivative, kept within [0.1, 0.5]
            rest = searching[~ok]
            secant = s0[~ok] / (s0[~ok] - dphi[~ok]).clamp(min=1e-30)
            step[rest] = step[rest] * secant.clamp(0.1, 0.5)
            searching = rest
        ok_idx = idx[accepted]
        stalled[idx[~accepted]] = True
        slot = ring[idx]
        s_hist[slot, idx] = 0
        y_hist[slot, idx] = 0
        rho[slot, idx] = 0
        if len(ok_idx):
            s = step[accepted, None] * r[accepted]
            yv = new_g[accepted] - g[ok_idx]
            sy, yy = (s * yv).sum(1), (yv * yv).sum(1)
            x[ok_idx] = x[ok_idx] + s
            f[ok_idx], g[ok_idx], measure[ok_idx] = (new_f[accepted], new_g[accepted],
                                                     new_measure[accepted])
            iters[ok_idx] += 1
            good = sy > 1e-10 * yy    # the curvature pair is kept only when positive
            keep = ok_idx[good]
            s_hist[ring[keep], keep], y_hist[ring[keep], keep] = s[good], yv[good]
            rho[ring[keep], keep] = 1 / sy[good]
            gamma[keep] = sy[good] / yy[good]
        ring[idx] = (ring[idx] + 1) % history
    return Result(x, f, measure, iters, measure <= tol, evaluations,
                  (g, s_hist, y_hist, rho, ring, gamma, stalled))
