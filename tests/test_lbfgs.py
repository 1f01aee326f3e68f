"""The batched L-BFGS: each member runs as if it ran alone (its own history, steps and stop), and
a badly conditioned batch of the probe's objective converges every member by sklearn's rule."""
from __future__ import annotations

import numpy as np
import torch

from skinfeat.learn.lbfgs import minimize
from skinfeat.learn.linear_search import fit_logistic, standardize


def _logistic_batch(n=120, d=6, m=4, seed=0):
    """M independent binary logistic regressions with ridge penalties of very different size
    (so the members converge after different numbers of iterations), float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, n, d, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3, d,
                                                                              dtype=torch.float64)
    y = (torch.rand(m, n, generator=g, dtype=torch.float64) < 0.4).double()
    ridge = torch.logspace(-4, 0, m, dtype=torch.float64)

    def fun(theta, idx):
        z = (x[idx] @ theta[:, :, None])[..., 0]
        value = torch.nn.functional.softplus(z).mean(1) - (y[idx] * z).mean(1) + \
            0.5 * ridge[idx] * theta.square().sum(1)
        grad = ((torch.sigmoid(z) - y[idx])[..., None] * x[idx]).mean(1) + ridge[idx, None] * theta
        return value, grad, grad.abs().amax(1)
    return fun, m, d


def test_members_run_as_if_alone():
    """The batch's result for each member equals that member minimized alone: the same
    iterations and the same point; members stop at different iterations."""
    fun, m, d = _logistic_batch()
    together = minimize(fun, torch.zeros(m, d, dtype=torch.float64), 1e-8, history=5)
    assert together.converged.all() and len(set(together.iterations.tolist())) > 1
    for i in range(m):
        def alone(theta, idx, i=i):
            return fun(theta, torch.full_like(idx, i))
        solo = minimize(alone, torch.zeros(1, d, dtype=torch.float64), 1e-8, history=5)
        assert int(solo.iterations[0]) == int(together.iterations[i])
        torch.testing.assert_close(solo.x[0], together.x[i], rtol=1e-9, atol=1e-12)


def test_continued_run_is_one_run():
    """Stopped at a loose tolerance and continued (``start``) to a tight one, for some members:
    those run exactly as one run to the tight tolerance (histories kept), the others stay."""
    fun, m, d = _logistic_batch()
    once = minimize(fun, torch.zeros(m, d, dtype=torch.float64), 1e-9, history=5)
    loose = minimize(fun, torch.zeros(m, d, dtype=torch.float64), 1e-3, history=5)
    stopped = loose.iterations.clone()
    assert (stopped < once.iterations).all()
    tols = torch.tensor([1e-9, 1e-3, 1e-9, 1e-3], dtype=torch.float64)
    both = minimize(fun, None, tols, start=loose)
    assert both.converged.all()
    for i in (0, 2):
        assert int(both.iterations[i]) == int(once.iterations[i])
        torch.testing.assert_close(both.x[i], once.x[i], rtol=1e-9, atol=1e-12)
    assert (both.iterations[[1, 3]] == stopped[[1, 3]]).all()


def test_max_iter_stops_unconverged():
    fun, m, d = _logistic_batch()
    capped = minimize(fun, torch.zeros(m, d, dtype=torch.float64), 1e-12, max_iter=2)
    assert (capped.iterations == 2).all() and not capped.converged.any()


def _ill_conditioned(n=1500, d=160, k=7, seed=0):
    """Embedding-like rows: strongly correlated columns (a few shared factors), scales spanning
    two decades, imbalanced classes with a weak signal."""
    rng = np.random.default_rng(seed)
    y = rng.choice(k, n, p=np.array([0.6, 0.12, 0.1, 0.08, 0.05, 0.03, 0.02]))
    factors = rng.normal(size=(n, 12)) + 0.8 * rng.normal(size=(k, 12))[y]
    x = factors @ rng.normal(size=(12, d)) + 0.3 * rng.normal(size=(n, d))
    return x * np.logspace(-2, 0.2, d), y


def test_badly_conditioned_batch_meets_sklearns_rule():
    """Every C from 1e-4 to 1e2 meets sklearn's rule (max |gradient| <= 1e-4), recomputed here
    in float64 from the returned coefficients, not taken from the solver's own report: an
    unconverged large-C member (under-fitted, it scores well) fails here."""
    x, y = _ill_conditioned()
    mean, scale = standardize(x)
    xs = (x - mean) / scale
    cs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0]
    stats = {}
    coef, intercept, _ = fit_logistic(xs, y, cs, 7, stats=stats)
    assert all(stats["converged"]) and max(stats["iterations"]) > 30, stats
    weights = len(y) / (7 * np.bincount(y))[y]   # sklearn's balanced weights
    total = weights.sum()   # sklearn divides its objective by it

    def gradient(w, b, c):
        """sklearn's largest gradient entry (of its objective divided by ``total``), float64."""
        z = xs @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        resid = weights[:, None] * (p - np.eye(7)[y]) / total
        return max(np.abs(resid.T @ xs + w / (c * total)).max(), np.abs(resid.sum(0)).max())

    grads = [gradient(coef[i], intercept[i], c) for i, c in enumerate(cs)]
    assert max(grads) <= 1.05e-4, grads   # float32 products: a little rounding
