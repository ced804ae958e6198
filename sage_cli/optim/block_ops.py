"""Layer operations whose backward splits each weight gradient into its per-block parts.

A batch made of K disjoint blocks (one per training domain), pushed through layers that do not mix samples,
has, in one backward of Σ_k L_k, each sample's own-block output gradient. So the weight gradient of a layer,
a sum over samples, splits exactly into K block sums: for a linear layer g_k = D_kᵀ X_k, for a convolution the
weight gradient of block k's inputs and output gradients, for a norm's affine γ the sum of D_k ⊙ x̂_k. The
functions here compute those K parts instead of the summed gradient (the same FLOPs: the blocks partition the
batch) and hand them to a ``Collector``, which keeps the K×K Gramian ⟨g_i, g_j⟩ and ḡ = Σ_k w_k g_k and lets
the K copies go, layer by layer. Autograd still computes every input gradient natively.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import Function


class Inseparable(RuntimeError):
    """A layer saw a batch that is not the blocks' concatenation (or an operation with no per-block rule)."""


class Collector:
    """The K×K Gramian of the per-block gradients and their weighted sum ḡ, gathered parameter by parameter.

    A parameter used several times in one forward (a shared layer) has its block gradients summed over its
    uses before it enters the Gramian (⟨a₁+a₂, b₁+b₂⟩ is not ⟨a₁, b₁⟩ + ⟨a₂, b₂⟩)."""

    def __init__(self, sizes: list[int]):
        self.sizes = [int(s) for s in sizes]
        self.n = sum(self.sizes)
        self.weights: torch.Tensor | None = None  # w_k, set once the losses are known (before the backward)
        self.gram: torch.Tensor | None = None
        self.grads: dict[int, torch.Tensor] = {}
        self.uses: dict[int, int] = {}
        self._pending: dict[int, list] = {}
        self._params: dict[int, torch.Tensor] = {}

    def check(self, x: torch.Tensor) -> None:
        if x.ndim == 0 or x.shape[0] != self.n:
            raise Inseparable(f"a layer saw a batch of {tuple(x.shape)}, not the {self.n} samples of the blocks")

    def use(self, *params) -> None:
        """Called in the forward: one more use of each (trainable) parameter."""
        for p in params:
            if p is not None and p.requires_grad:
                self.uses[id(p)] = self.uses.get(id(p), 0) + 1
                self._params[id(p)] = p

    def split(self, t: torch.Tensor):
        return t.split(self.sizes, 0)

    def add(self, p: torch.Tensor | None, blocks: torch.Tensor) -> None:
        """The K block gradients of ``p`` (K × p.shape) from one of its uses."""
        if p is None or not p.requires_grad:
            return
        key = id(p)
        entry = self._pending.setdefault(key, [0, None])
        entry[0] += 1
        entry[1] = blocks if entry[1] is None else entry[1] + blocks
        if entry[0] == self.uses.get(key, 1):
            self._finish(key)

    def _finish(self, key: int) -> None:
        _, blocks = self._pending.pop(key)
        p = self._params[key]
        B = blocks.reshape(len(self.sizes), -1).float()
        self.gram = B @ B.T if self.gram is None else self.gram + B @ B.T
        self.grads[key] = (self.weights.to(B.dtype) @ B).reshape(p.shape).to(p.dtype)

    def result(self, params) -> tuple[list[torch.Tensor], torch.Tensor]:
        """ḡ per parameter (zeros where no gradient reached it) and the Gramian."""
        for key in list(self._pending):  # uses whose output got no gradient contribute zero
            self._finish(key)
        K = len(self.sizes)
        gram = self.gram if self.gram is not None else torch.zeros(K, K, device=self.weights.device)
        return [self.grads.get(id(p), torch.zeros_like(p)) for p in params], gram


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


# Under autocast (``training.precision: bf16``) these functions do what autocast does to the ops they replace:
# matmuls and convolutions in the autocast dtype, norms in float32 (torch's autocast op lists). They run their
# forward with autocast off on explicitly cast tensors and their backward in the same dtypes (autocast is not
# active in a backward), and hand each input gradient back in its input's dtype.
def _matmul_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast runs a matmul in on ``x``'s device now, or None outside autocast."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def _cast(dtype, *tensors):
    return tuple(t.to(dtype) if dtype is not None and t is not None else t for t in tensors)


def _no_autocast(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)


def _norm_dtype(x: torch.Tensor) -> torch.dtype | None:
    return torch.float32 if _matmul_dtype(x) is not None else None


class _Linear(Function):
    """y = x Wᵀ + b (or x P for a projection stored input × output, ``transposed``), over the last dimension."""

    @staticmethod
    def forward(ctx, x, weight, bias, collector, transposed):
        ctx.collector, ctx.transposed = collector, transposed
        ctx.dtype, ctx.in_dtype = _matmul_dtype(x), x.dtype
        ctx.save_for_backward(x, weight, bias)
        xc, wc, bc = _cast(ctx.dtype, x, weight, bias)
        with _no_autocast(x):
            return F.linear(xc, wc.mT if transposed else wc, bc)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        x, w = _cast(ctx.dtype, x, weight)  # ``weight`` itself stays: the collector knows the parameter by it
        col = ctx.collector
        W = w.mT if ctx.transposed else w
        grad_x = (grad_out @ W).to(ctx.in_dtype) if ctx.needs_input_grad[0] else None
        pairs = list(zip(col.split(grad_out), col.split(x)))
        if weight.requires_grad:  # a frozen layer (linear probing, VPT) costs its input gradient only
            blocks = torch.stack([_rows(d).mT @ _rows(xk) for d, xk in pairs])
            col.add(weight, blocks.mT if ctx.transposed else blocks)
        if bias is not None and bias.requires_grad:
            col.add(bias, torch.stack([_rows(d).sum(0) for d, _ in pairs]))
        return grad_x, None, None, None, None


def linear(x, weight, bias, collector: Collector, transposed: bool = False):
    collector.check(x)
    collector.use(weight, bias)
    return _Linear.apply(x, weight, bias, collector, transposed)


class _Conv(Function):
    """A 2-d convolution (zero padding applied beforehand); input gradient for the whole batch, weight gradient
    per block, both by aten's ``convolution_backward``."""

    @staticmethod
    def forward(ctx, x, weight, bias, collector, stride, padding, dilation, groups):
        ctx.collector, ctx.conf = collector, (stride, padding, dilation, groups)
        ctx.dtype, ctx.in_dtype = _matmul_dtype(x), x.dtype
        ctx.save_for_backward(x, weight, bias)
        xc, wc, bc = _cast(ctx.dtype, x, weight, bias)
        with _no_autocast(x):
            return F.conv2d(xc, wc, bc, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        x, w = _cast(ctx.dtype, x, weight)  # ``weight`` itself stays: the collector knows the parameter by it
        stride, padding, dilation, groups = ctx.conf
        col = ctx.collector

        def backward(d, xx, mask):
            return torch.ops.aten.convolution_backward(d, xx, w, None, stride, padding, dilation, False,
                                                       [0] * len(stride), groups, mask)

        grad_x = backward(grad_out, x, [True, False, False])[0].to(ctx.in_dtype) if ctx.needs_input_grad[0] else None
        pairs = list(zip(col.split(grad_out), col.split(x)))
        if weight.requires_grad:
            col.add(weight, torch.stack([backward(d, xk, [False, True, False])[1] if len(d) else torch.zeros_like(w)
                                         for d, xk in pairs]))
        if bias is not None and bias.requires_grad:
            col.add(bias, torch.stack([d.sum((0, *range(2, d.ndim))) for d, _ in pairs]))
        return grad_x, None, None, None, None, None, None, None


def conv2d(x, weight, bias, collector: Collector, stride, padding, dilation, groups):
    collector.check(x)
    collector.use(weight, bias)
    return _Conv.apply(x, weight, bias, collector, tuple(stride), tuple(padding), tuple(dilation), groups)


class _Affine(Function):
    """y = x ⊙ γ + β with γ, β broadcast as ``view`` (LayerScale's γ)."""

    @staticmethod
    def forward(ctx, xhat, weight, bias, collector, view):
        ctx.collector, ctx.view = collector, view
        ctx.save_for_backward(xhat, weight, bias)
        y = xhat * weight.view(view)
        return y + bias.view(view) if bias is not None else y

    @staticmethod
    def backward(ctx, grad_out):
        xhat, weight, bias = ctx.saved_tensors
        col, view = ctx.collector, ctx.view
        grad_x = (grad_out * weight.view(view)).to(xhat.dtype) if ctx.needs_input_grad[0] else None
        _affine_blocks(col, weight, bias, grad_out, xhat, view)
        return grad_x, None, None, None, None


def affine(xhat, weight, bias, collector: Collector, view):
    collector.check(xhat)
    collector.use(weight, bias)
    return _Affine.apply(xhat, weight, bias, collector, tuple(view))


def _affine_blocks(col, weight, bias, grad_out, xhat, view):
    """The per-block γ and β gradients of y = x̂ ⊙ γ + β: Σ D_k ⊙ x̂_k and Σ D_k, summed to γ's broadcast shape."""
    pairs = list(zip(col.split(grad_out), col.split(xhat)))
    if weight is not None:
        col.add(weight, torch.stack([(d * xk).sum_to_size(view).reshape(weight.shape) if len(d)
                                     else torch.zeros_like(weight) for d, xk in pairs]))
    if bias is not None:
        col.add(bias, torch.stack([d.sum_to_size(view).reshape(bias.shape) if len(d) else torch.zeros_like(bias)
                                   for d, _ in pairs]))


class _LayerNorm(Function):
    """torch's fused layer norm forward and input backward; γ, β per block from x̂ recomputed in the backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, collector, shape, eps):
        ctx.dtype, ctx.in_dtype = _norm_dtype(x), x.dtype
        (xc,) = _cast(ctx.dtype, x)
        with _no_autocast(x):
            y, mean, rstd = torch.native_layer_norm(xc, shape, weight, bias, eps)
        ctx.collector, ctx.shape = collector, shape
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        (x,) = _cast(ctx.dtype, x)
        grad_out = grad_out.to(x.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_layer_norm_backward(grad_out, x, ctx.shape, mean, rstd, weight, bias,
                                                               [True, False, False])[0].to(ctx.in_dtype)
        _affine_blocks(ctx.collector, weight, bias, grad_out, (x - mean) * rstd, ctx.shape)
        return grad_x, None, None, None, None, None


def layer_norm(x, weight, bias, collector: Collector, shape, eps):
    collector.check(x)
    collector.use(weight, bias)
    return _LayerNorm.apply(x, weight, bias, collector, tuple(shape), eps)


class _GroupNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, collector, groups, eps):
        N, C = x.shape[:2]
        hw = x[0, 0].numel()
        ctx.dtype, ctx.in_dtype = _norm_dtype(x), x.dtype
        (xc,) = _cast(ctx.dtype, x)
        with _no_autocast(x):
            y, mean, rstd = torch.native_group_norm(xc, weight, bias, N, C, hw, groups, eps)
        ctx.collector, ctx.conf = collector, (N, C, hw, groups)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        (x,) = _cast(ctx.dtype, x)
        grad_out = grad_out.to(x.dtype)
        N, C, hw, groups = ctx.conf
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_group_norm_backward(grad_out.contiguous(), x, mean, rstd, weight, N, C, hw,
                                                               groups, [True, False, False])[0].to(ctx.in_dtype)
        xhat = ((x.reshape(N, groups, -1) - mean[..., None]) * rstd[..., None]).reshape(x.shape)
        _affine_blocks(ctx.collector, weight, bias, grad_out, xhat, (C,) + (1,) * (x.ndim - 2))
        return grad_x, None, None, None, None, None


def group_norm(x, weight, bias, collector: Collector, groups, eps):
    collector.check(x)
    collector.use(weight, bias)
    return _GroupNorm.apply(x, weight, bias, collector, groups, eps)


class _FrozenBatchNorm(Function):
    """An eval-mode BatchNorm, y = x · γ/σ + (β − μγ/σ) per channel, in one pass; per block, γ's gradient is
    (Σ D_k x_k − μ Σ D_k)/σ and β's Σ D_k, from sums over the block."""

    @staticmethod
    def forward(ctx, x, weight, bias, collector, mean, var, eps):
        (x,) = _cast(_norm_dtype(x), x)  # autocast runs batch_norm in float32; so does the backward, from this x
        invstd = torch.rsqrt(var + eps)
        scale = weight * invstd
        view = (-1,) + (1,) * (x.ndim - 2)
        ctx.collector, ctx.view = collector, view
        ctx.save_for_backward(x, weight, bias, mean, invstd, scale)
        return torch.addcmul((bias - mean * scale).view(view), x, scale.view(view))

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, mean, invstd, scale = ctx.saved_tensors
        col = ctx.collector
        grad_x = (grad_out * scale.view(ctx.view)).to(x.dtype) if ctx.needs_input_grad[0] else None
        dims = (0, *range(2, x.ndim))
        d_sums = [d.sum(dims) for d in col.split(grad_out)]
        dx_sums = [(d * xk).sum(dims) for d, xk in zip(col.split(grad_out), col.split(x))]
        col.add(weight, torch.stack([(dx - mean * ds) * invstd for dx, ds in zip(dx_sums, d_sums)]))
        col.add(bias, torch.stack(d_sums))
        return grad_x, None, None, None, None, None, None


def frozen_batch_norm(x, weight, bias, collector: Collector, mean, var, eps):
    collector.check(x)
    collector.use(weight, bias)
    return _FrozenBatchNorm.apply(x, weight, bias, collector, mean, var, eps)


class _Embedding(Function):
    @staticmethod
    def forward(ctx, index, weight, collector, padding_idx):
        ctx.collector, ctx.padding_idx = collector, padding_idx
        ctx.save_for_backward(index)
        ctx.weight = weight
        return F.embedding(index, weight, padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        col = ctx.collector
        blocks = []
        for d, ik in zip(col.split(grad_out), col.split(index)):
            g = torch.zeros(ctx.weight.shape, dtype=grad_out.dtype, device=grad_out.device)
            g.index_add_(0, ik.reshape(-1), _rows(d))
            if ctx.padding_idx is not None:
                g[ctx.padding_idx] = 0
            blocks.append(g)
        col.add(ctx.weight, torch.stack(blocks))
        return None, None, None, None


def embedding(index, weight, collector: Collector, padding_idx=None):
    collector.check(index)
    collector.use(weight)
    return _Embedding.apply(index, weight, collector, padding_idx)


class _TokenEmbeddings(Function):
    """A ViT's class token and positional embedding: [cls; patches] + pos, per sample."""

    @staticmethod
    def forward(ctx, patches, cls, pos, collector):
        ctx.collector = collector
        ctx.has = (cls.requires_grad, pos.requires_grad)
        ctx.params = (cls, pos)
        tokens = torch.cat([cls.reshape(1, 1, -1).expand(patches.shape[0], 1, -1).to(patches.dtype), patches], 1)
        return tokens + pos.to(patches.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        col = ctx.collector
        cls, pos = ctx.params
        parts = col.split(grad_out)
        col.add(pos, torch.stack([d.sum(0) for d in parts]))
        col.add(cls, torch.stack([d[:, 0].sum(0) for d in parts]))
        return grad_out[:, 1:] if ctx.needs_input_grad[0] else None, None, None, None


def token_embeddings(patches, cls, pos, collector: Collector):
    collector.check(patches)
    collector.use(cls, pos)
    return _TokenEmbeddings.apply(patches, cls, pos, collector)


class _Prompts(Function):
    """VPT's prompt tokens put after the class token, the same for every sample: [x₀; prompt; x_end:]. Their
    gradient per block is the sum of the block's samples' gradients at the prompt positions."""

    @staticmethod
    def forward(ctx, x, prompt, end, collector):
        ctx.collector, ctx.prompt, ctx.end, ctx.shape = collector, prompt, end, x.shape
        tokens = prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :1], tokens, x[:, end:]], 1)

    @staticmethod
    def backward(ctx, grad_out):
        n = ctx.prompt.shape[0]
        ctx.collector.add(ctx.prompt, torch.stack([d[:, 1:1 + n].sum(0) for d in ctx.collector.split(grad_out)]))
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.new_zeros(ctx.shape)
            grad_x[:, :1] = grad_out[:, :1]
            grad_x[:, ctx.end:] = grad_out[:, 1 + n:]
        return grad_x, None, None, None


def prompts(x, prompt, end: int, collector: Collector):
    """``x`` (N, L, D) with ``prompt`` (P, D) after its first token, replacing tokens 1..end-1."""
    collector.check(x)
    collector.use(prompt)
    return _Prompts.apply(x, prompt, end, collector)
