"""The head's optimizer: Adam written out (see ``Adam``) over torch's public functional Adam, so
that fitting a head never imports torch's dynamo compiler."""
from __future__ import annotations

import torch
from torch.optim.adam import adam


class Adam:
    """``torch.optim.Adam(fused=True)``'s update, through the same public functional call
    (``torch.optim.adam.adam(..., fused=True)``: one pass over each parameter, where the foreach
    update makes eight; the step of a 5-member 256-wide FiLM head went from 5.2 to 1.3 ms). One
    model's weights are bit-identical to torch's optimizer's (tests/test_head_batch.py); it is
    written out because constructing a torch optimizer imports the dynamo compiler, 2.5 s of every
    fit-head process and of every cv worker. With parameters stacked along a first axis of k
    models (``head_batch``), ``step(active)`` updates only the models marked active, each with
    its own step count, as k separate optimizers would up to float rounding: the kernel rounds
    its vector lanes and its scalar tail differently, so where a model's elements fall in them
    can change the last bits."""

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
        # each state in its parameter's memory layout (that of the fused update's other inputs)
        self.exp_avg = [torch.empty_like(p).copy_(m[positions])
                        for p, m in zip(self.params, self.exp_avg, strict=True)]
        self.exp_avg_sq = [torch.empty_like(p).copy_(v[positions])
                           for p, v in zip(self.params, self.exp_avg_sq, strict=True)]
        self.steps = [self.steps[i] for i in positions]
        self.stacked = len(positions)

    @torch.no_grad()
    def step(self, active: list[bool] | None = None) -> None:
        grads = [p.grad for p in self.params]
        if self.stacked is None:
            self.steps[0] += 1
            self._update(self.params, grads, self.exp_avg, self.exp_avg_sq,
                         [self.steps[0]] * len(self.params))
            return
        active = [True] * self.stacked if active is None else active
        for k, on in enumerate(active):
            self.steps[k] += bool(on)
        if all(active) and len(set(self.steps)) == 1:
            self._update(self.params, grads, self.exp_avg, self.exp_avg_sq,
                         [self.steps[0]] * len(self.params))
            return
        # Models out of step (some sat a step out): each active one's slices with its own step
        # count (bias corrections), in one call; inactive ones left as they are.
        live = [k for k, a in enumerate(active) if a]
        self._update([p[k] for k in live for p in self.params],
                     [g[k] for k in live for g in grads],
                     [m[k] for k in live for m in self.exp_avg],
                     [v[k] for k in live for v in self.exp_avg_sq],
                     [self.steps[k] for k in live for _ in self.params])

    def _update(self, params, grads, exp_avg, exp_avg_sq, steps: list[int]) -> None:
        # The step counts as torch's optimizer keeps them: a float32 tensor per parameter
        # (here views of one tensor: one allocation), which the call advances by one before
        # the update. The call's own cost (grouping the tensors, advancing the counts) is
        # ~50 us a step more than the private kernel alone (measured on one head step).
        counts = torch.tensor(steps, dtype=torch.float32).sub_(1).unbind()
        params, grads, exp_avg, exp_avg_sq = ([_dense(t) for t in ts]
                                              for ts in (params, grads, exp_avg, exp_avg_sq))
        adam(params, grads, exp_avg, exp_avg_sq, [], list(counts), fused=True, amsgrad=False,
             beta1=self.beta1, beta2=self.beta2, lr=self.lr, weight_decay=self.weight_decay,
             eps=self.eps, maximize=False)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a contiguous tensor over the same memory: a weight stored transposed (see
    ``head_batch._laid_out``; its gradient and Adam state share its layout) as its transpose.
    The update is elementwise, so this changes nothing but the speed: the fused kernel copies
    a non-contiguous tensor in and out (2 ms a step of a 5-member 128-wide FiLM head)."""
    return t.mT if not t.is_contiguous() and t.dim() >= 2 and t.mT.is_contiguous() else t
