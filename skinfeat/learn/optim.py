"""The head's optimizer: Adam written out (see ``Adam``), so that fitting a head never imports
``torch._dynamo``."""
from __future__ import annotations

import torch


class Adam:
    """``torch.optim.Adam(foreach=True)``'s arithmetic, op for op (bit-identical weights:
    tests/test_head.py), written out because constructing a torch optimizer imports
    ``torch._dynamo``, 2.5 s of every fit-head process and of every cv worker. With parameters
    stacked along a first axis of k models (``head_batch``), ``step(active)`` updates only the
    models marked active, each with its own step count, exactly as k separate optimizers."""

    def __init__(self, params, lr: float, eps: float = 1e-7, betas=(0.9, 0.999),
                 weight_decay: float = 0.0, stacked: int | None = None):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.eps, self.weight_decay = lr, eps, weight_decay
        self.beta1, self.beta2 = betas
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.stacked = stacked
        self.steps = [0] * (stacked or 1)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def keep(self, positions: list[int], params) -> None:
        """Stacked models: keep those at ``positions`` (their state), now stacked as ``params``
        (the old parameters indexed the same way): finished models stop costing work."""
        self.params = [p for p in params if p.requires_grad]
        self.exp_avg = [m[positions].clone() for m in self.exp_avg]
        self.exp_avg_sq = [v[positions].clone() for v in self.exp_avg_sq]
        self.steps = [self.steps[i] for i in positions]
        self.stacked = len(positions)

    @torch.no_grad()
    def step(self, active: list[bool] | None = None) -> None:
        grads = [p.grad for p in self.params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        if self.stacked is None:
            self.steps[0] += 1
            self._update(self.params, grads, self.exp_avg, self.exp_avg_sq, self.steps[0])
            return
        active = [True] * self.stacked if active is None else active
        for k, on in enumerate(active):
            self.steps[k] += bool(on)
        if all(active) and len(set(self.steps)) == 1:
            self._update(self.params, grads, self.exp_avg, self.exp_avg_sq, self.steps[0])
            return
        # Models out of step: each its own bias corrections, inactive ones left as they are.
        # The same float32 operations as _update's scalar ones (addcdiv is (value * t1) / t2).
        on = torch.tensor(active)
        step_size = torch.tensor([(self.lr / (1 - self.beta1 ** max(t, 1))) * -1
                                  for t in self.steps], dtype=torch.float32)
        bc2_sqrt = torch.tensor([(1 - self.beta2 ** max(t, 1)) ** 0.5 for t in self.steps],
                                dtype=torch.float32)
        m_new = torch._foreach_lerp(self.exp_avg, grads, 1 - self.beta1)
        v_new = torch._foreach_mul(self.exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(v_new, grads, grads, 1 - self.beta2)
        for p, m, v, mn, vn in zip(self.params, self.exp_avg, self.exp_avg_sq, m_new, v_new):
            shape = (-1,) + (1,) * (p.ndim - 1)
            mask = on.view(shape)
            denom = vn.sqrt().div_(bc2_sqrt.view(shape)).add_(self.eps)
            p.add_(torch.where(mask, step_size.view(shape) * mn / denom, 0.0))
            m.copy_(torch.where(mask, mn, m))
            v.copy_(torch.where(mask, vn, v))

    def _update(self, params, grads, exp_avg, exp_avg_sq, step: int) -> None:
        torch._foreach_lerp_(exp_avg, grads, 1 - self.beta1)
        torch._foreach_mul_(exp_avg_sq, self.beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - self.beta2)
        step_size = (self.lr / (1 - self.beta1 ** step)) * -1
        bias_correction2_sqrt = (1 - self.beta2 ** step) ** 0.5
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, step_size)
