"""Which layers can split their weight gradients per block, and the forward each runs while one backward
gathers the per-block statistics (``block_ops``).

A rule replaces a module's ``forward`` for the duration of one recorded forward pass; the replacement computes
the same function with ``block_ops``. Covered: Linear (with any leading token dimensions), Conv2d, LayerNorm,
GroupNorm, eval-mode BatchNorm, Embedding, open_clip's LayerScale, self-attention ``nn.MultiheadAttention``
(batch first), open_clip's ``VisionTransformer`` (class token, positional embedding, projection) and VPT's
prompt tokens (``models.clip.PromptedTransformer``). Frozen layers compute their input gradients only. A
BatchNorm in training mode normalises over the whole concatenated batch, so it mixes the domains' samples
and no per-block split exists: ``plan`` says so and the caller takes the exact path.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from . import block_ops as ops


def _linear(m, col):
    return lambda x: ops.linear(x, m.weight, m.bias, col)


def _conv(m, col):
    explicit = m.padding_mode != "zeros" or isinstance(m.padding, str)

    def forward(x):
        if explicit:  # as nn.Conv2d does for non-zero padding modes; 'same'/'valid' become explicit pads
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        else:
            padding = m.padding
        return ops.conv2d(x, m.weight, m.bias, col, m.stride, padding, m.dilation, m.groups)

    return forward


def _layer_norm(m, col):
    return lambda x: ops.layer_norm(x, m.weight, m.bias, col, m.normalized_shape, m.eps).to(x.dtype)


def _group_norm(m, col):
    return lambda x: ops.group_norm(x, m.weight, m.bias, col, m.num_groups, m.eps)


def _batch_norm(m, col):  # eval mode only: running statistics, per sample
    return lambda x: ops.frozen_batch_norm(x, m.weight, m.bias, col, m.running_mean, m.running_var, m.eps)


def _embedding(m, col):
    return lambda index: ops.embedding(index, m.weight, col, m.padding_idx)


def _layer_scale(m, col):
    return lambda x: ops.affine(x, m.gamma, None, col, m.gamma.shape)


def _attention(m, col):
    """nn.MultiheadAttention's self-attention (F.multi_head_attention_forward) with per-block projections."""

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not (query is key and key is value) or key_padding_mask is not None:
            raise ops.Inseparable("only self-attention without a key padding mask has a per-block rule")
        N, L, E = query.shape
        H = m.num_heads
        q, k, v = ops.linear(query, m.in_proj_weight, m.in_proj_bias, col).chunk(3, dim=-1)
        q, k, v = (t.reshape(N, L, H, E // H).transpose(1, 2) for t in (q, k, v))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # MHA: True = masked out
                attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill_(attn_mask, float("-inf"))
            attn_mask = attn_mask.reshape(N, H, L, L) if attn_mask.ndim == 3 else attn_mask
            is_causal = False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(N, L, E)
        return ops.linear(out, m.out_proj.weight, m.out_proj.bias, col), None

    return forward


def _vision_transformer(m, col):
    """open_clip's VisionTransformer.forward (open_clip 3.x) with the class token, positional embedding and
    projection through ``block_ops``; its conv, norms and blocks run their own rules."""

    def forward(x):
        x = m.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = ops.token_embeddings(x, m.class_embedding, m.positional_embedding, col)
        x = m.patch_dropout(x)
        x = m.transformer(m.ln_pre(x))
        pooled, _ = m._pool(x)
        return ops.linear(pooled, m.proj, None, col, transposed=True) if m.proj is not None else pooled

    return forward


def _prompted(m, col):
    """models.clip.PromptedTransformer: VPT's prompt tokens through ``block_ops.prompts``."""
    return lambda x, attn_mask=None: m.run(x, lambda x, prompt, end: ops.prompts(x, prompt, end, col))


def _is_open_clip_vit(m) -> bool:
    return type(m).__name__ == "VisionTransformer" and hasattr(m, "class_embedding") and hasattr(m, "_pool")


def rule_for(m: nn.Module):
    """(rule, None) for a covered module, (None, why) for one that prevents the split, (None, None) otherwise."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if m.training or m.running_mean is None:
            return None, "BatchNorm in training mode normalises over the whole batch, mixing the domains"
        return (_batch_norm if m.affine else None), None
    if isinstance(m, nn.Linear):
        return _linear, None
    if isinstance(m, nn.Conv2d):
        return _conv, None
    if isinstance(m, nn.LayerNorm):
        return (_layer_norm if m.elementwise_affine else None), None
    if isinstance(m, nn.GroupNorm):
        return (_group_norm if m.affine else None), None
    if isinstance(m, nn.Embedding):
        if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
            return None, "Embedding with max_norm, scale_grad_by_freq or sparse gradients"
        return _embedding, None
    if isinstance(m, nn.MultiheadAttention):
        if not (m._qkv_same_embed_dim and m.batch_first and m.bias_k is None and not m.add_zero_attn):
            return None, "MultiheadAttention other than batch-first self-attention with packed projections"
        if m.training and m.dropout > 0:
            return None, "attention dropout"
        return _attention, None
    if type(m).__name__ == "LayerScale" and isinstance(getattr(m, "gamma", None), nn.Parameter):
        return _layer_scale, None
    if type(m).__name__ == "PromptedTransformer" and hasattr(m, "run"):
        return _prompted, None
    if _is_open_clip_vit(m):
        if getattr(m, "attn_pool", None) is not None or getattr(m, "output_tokens", False):
            return None, "attention pooling or token outputs"
        if not isinstance(m.patch_dropout, nn.Identity) and m.training:
            return None, "patch dropout"
        if not getattr(m.transformer, "batch_first", True):
            return None, "a sequence-first transformer"
        return _vision_transformer, None
    return None, None


def plan(model: nn.Module, params) -> tuple[list, str | None]:
    """The (module, rule) pairs that cover every one of ``params``, or ([], why not)."""
    installs, claimed = [], set()
    for name, m in model.named_modules():
        rule, why = rule_for(m)
        label = f"{name or 'the model'} ({type(m).__name__})"
        if why:
            return [], f"{label}: {why}"
        own = list(m.parameters(recurse=False))
        if rule is not None:
            installs.append((m, rule))
            claimed.update(id(p) for p in own)
        elif any(p.requires_grad for p in own):
            return [], f"{label} has parameters and no per-block rule"
    outside = [p for p in params if id(p) not in claimed]
    if outside:
        return [], f"{len(outside)} trainable parameters are not the model's layers' own"
    return installs, None


@contextmanager
def installed(installs, collector):
    """Every covered module runs its rule inside the block; its own forward again after it."""
    saved = []
    try:
        for m, rule in installs:
            saved.append((m, m.__dict__.get("forward")))
            m.forward = rule(m, collector)
        yield
    finally:
        for m, previous in saved:
            if previous is None:
                del m.forward
            else:
                m.forward = previous
