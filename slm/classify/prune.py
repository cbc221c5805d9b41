"""Magnitude pruning of a transformer classifier's encoder, applied by `train_transformer` before the
recovery training (the same loop, usually a few full-mode epochs, optionally distilled from the
unpruned model).

* Attention heads (structured, BERT-style encoders: self-attention `query`/`key`/`value` and the
  `attention.output.dense` projection): each head's importance is the L2 norm of its rows of Q, K, V
  plus its columns of the output projection; the weakest `fraction` of all heads are removed (at
  least one head stays in every layer). The linear layers really shrink, so the model gets faster and
  smaller; the removed heads are recorded (`TransformerClassifier.pruned_heads`) so that loading
  rebuilds the same shapes.
* Linear weights (unstructured): the smallest-magnitude `fraction` of the encoder's linear weights,
  ranked globally, are held at zero through training (torch.nn.utils.prune masks) and then baked in.
  Zeros shrink compressed files, not dense CPU matmuls.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PrunedHeads = dict[int, list[int]]


def attention_layers(encoder: nn.Module) -> list[tuple[nn.Module, nn.Linear]]:
    """[(self-attention module with query/key/value, its output projection)] in layer order."""
    modules = dict(encoder.named_modules())
    found: list[tuple[nn.Module, nn.Linear]] = []
    for name, module in modules.items():
        if all(isinstance(getattr(module, a, None), nn.Linear) for a in ("query", "key", "value")):
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            out = modules.get(f"{parent}.output.dense" if parent else "output.dense")
            if not isinstance(out, nn.Linear):
                raise ValueError(f"no output projection found next to {name}")
            found.append((module, out))
    return found


def head_importance(encoder: nn.Module) -> list[torch.Tensor]:
    """Per layer, one magnitude score per remaining head."""
    scores = []
    for attn, out in attention_layers(encoder):
        size = int(attn.attention_head_size)
        n = attn.query.out_features // size
        q, k, v = (getattr(attn, a).weight.detach().float().view(n, size, -1) for a in ("query", "key", "value"))
        o = out.weight.detach().float().view(out.out_features, n, size)
        score = q.norm(dim=(1, 2)) + k.norm(dim=(1, 2)) + v.norm(dim=(1, 2)) + o.norm(dim=(0, 2))
        scores.append(score)
    return scores


def choose_heads(encoder: nn.Module, fraction: float) -> PrunedHeads:
    """The weakest `fraction` of all heads by magnitude, keeping at least one per layer."""
    scores = head_importance(encoder)
    if not scores:
        raise ValueError("head pruning needs a BERT-style encoder (self-attention query/key/value)")
    ranked = sorted((float(s), layer, head) for layer, row in enumerate(scores) for head, s in enumerate(row))
    budget = int(round(fraction * len(ranked)))
    left = {layer: len(row) for layer, row in enumerate(scores)}
    chosen: PrunedHeads = {}
    for _score, layer, head in ranked:
        if budget <= 0:
            break
        if left[layer] > 1:
            chosen.setdefault(layer, []).append(head)
            left[layer] -= 1
            budget -= 1
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def _keep_rows(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias.detach().clone() if linear.bias is not None and dim == 1 else None
    if linear.bias is not None and dim == 0:
        bias = linear.bias.detach().index_select(0, index).clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def remove_heads(encoder: nn.Module, heads: PrunedHeads) -> None:
    """Shrinks the attention layers of `encoder` in place, removing `heads` ({layer: [head, ...]},
    indices among the layer's current heads)."""
    layers = attention_layers(encoder)
    modules = dict(encoder.named_modules())
    owner = {id(m): n for n, m in modules.items()}
    for layer, drop in heads.items():
        if not drop:
            continue
        attn, out = layers[int(layer)]
        size = int(attn.attention_head_size)
        n = attn.query.out_features // size
        keep_heads = [h for h in range(n) if h not in set(drop)]
        if not keep_heads:
            raise ValueError(f"cannot remove every head of layer {layer}")
        index = torch.tensor([h * size + i for h in keep_heads for i in range(size)], device=attn.query.weight.device)
        for a in ("query", "key", "value"):
            setattr(attn, a, _keep_rows(getattr(attn, a), index, 0))
        parent_name = owner[id(out)].rsplit(".", 1)[0]
        modules[parent_name].dense = _keep_rows(out, index, 1)
        attn.num_attention_heads = len(keep_heads)
        attn.all_head_size = len(keep_heads) * size


def count_heads(encoder: nn.Module) -> int:
    return sum(attn.query.out_features // int(attn.attention_head_size) for attn, _ in attention_layers(encoder))


def mask_weights(encoder: nn.Module, fraction: float) -> list[nn.Linear]:
    """Zeros the smallest `fraction` of the encoder's linear weights (global magnitude ranking) and keeps
    them at zero during training (prune masks); returns the masked layers for `bake_masks`."""
    from torch.nn.utils import prune

    linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the encoder has no linear layers to prune")
    prune.global_unstructured([(m, "weight") for m in linears], pruning_method=prune.L1Unstructured, amount=fraction)
    return linears


def bake_masks(linears: list[nn.Linear]) -> float:
    """Makes the masks permanent (plain weights with zeros); returns the share of zeros."""
    from torch.nn.utils import prune

    zeros = total = 0
    for m in linears:
        if prune.is_pruned(m):
            prune.remove(m, "weight")
        zeros += int((m.weight == 0).sum())
        total += m.weight.numel()
    return zeros / max(1, total)


def summary(before_heads: int, after_heads: int, heads: PrunedHeads, sparsity: float | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if heads:
        removed = {str(layer): drop for layer, drop in heads.items()}  # JSON-shaped: metadata, processes
        out.update(heads_total=before_heads, heads_removed=before_heads - after_heads, pruned_heads=removed)
    if sparsity is not None:
        out["weight_sparsity"] = round(sparsity, 4)
    return out
