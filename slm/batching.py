"""Packed forward passes for the chat engine: the tokens of many requests in ONE model call.

Each engine step feeds the model a single sequence (batch 1) that packs one new token of every decoding
request followed by chunks of prompt tokens of requests still being prefilled. The linear layers (nearly
all the compute and all the weight reads) see them all at once; only attention has to keep the requests
apart. A custom attention function registered with transformers' `AttentionInterface` ("slm_packed")
does that: it writes each token's key/value into its request's slot of a `SlotCache` ([slots, heads,
window, head_dim] per layer, memory committed only where written, nothing ever copied) and attends each request over
its own keys only: every decoding row in one SDPA call (a length mask), each prefill chunk in one causal
SDPA call over its slot.

It works for transformers decoders that route attention through `AttentionInterface` (GPT-2, Llama,
Qwen, ...). Called without a plan (`generate`, perplexity), a model set to "slm_packed" runs plain SDPA.
No Django here.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from slm import cpu_int8

ATTN_IMPLEMENTATION = "slm_packed"
_registered = False


class SlotCache:
    """Keys/values of the running requests: one slot per request, per layer.

    Every slot can hold the whole context window from the start, so nothing is ever grown or copied. On
    the CPU the buffers are position-major, [slots, max_len, kv_heads, dim]: a request's keys are one run of
    memory that slm's C attention reads front to back (head-major, its per-head runs were short reads all
    over the cache: 8 streams of GPT-2 124M spent a quarter of each step there), and anonymous memory maps:
    the OS hands out zero pages and commits memory only where keys are written, so the resident size
    follows the tokens actually cached, not the window. Elsewhere they are [slots, kv_heads, max_len, dim]
    (what SDPA wants). `heads()` gives the [n, kv_heads, length, dim] view of either."""

    def __init__(self, slots: int, max_len: int) -> None:
        self.slots = slots
        self.max_len = max_len
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.position_major = False
        self._maps: list[mmap.mmap] = []

    def _buffer(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        if like.device.type != "cpu":
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        nbytes = math.prod(shape) * like.element_size()
        mm = mmap.mmap(-1, nbytes)  # zero-filled, committed page by page on first write
        self._maps.append(mm)
        return torch.frombuffer(mm, dtype=like.dtype).view(shape)

    def layer(self, idx: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The buffers of layer `idx` (allocated on first use, shaped after `like` [1, kv_heads, M, dim])."""
        while len(self.keys) <= idx:
            self.position_major = like.device.type == "cpu"
            heads, dim = like.shape[1], like.shape[3]
            if self.position_major:
                shape = (self.slots, self.max_len, heads, dim)
            else:
                shape = (self.slots, heads, self.max_len, dim)
            self.keys.append(self._buffer(shape, like))
            self.values.append(self._buffer(shape, like))
        return self.keys[idx], self.values[idx]

    def heads(self, buf: torch.Tensor, lo: int, hi: int, length: int) -> torch.Tensor:
        """Slots lo..hi-1, positions 0..length-1 of a layer buffer as [hi - lo, kv_heads, length, dim]."""
        if self.position_major:
            return buf[lo:hi, :length].transpose(1, 2)
        return buf[lo:hi, :, :length]

    def write(
        self,
        k_all: torch.Tensor,
        v_all: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
    ) -> None:
        """Stores rows of key/value [M, kv_heads, dim] at (slots[r], positions[r])."""
        if self.position_major:
            k_all[slots, positions] = key
            v_all[slots, positions] = value
        else:
            k_all[slots, :, positions] = key
            v_all[slots, :, positions] = value


@dataclass
class Chunk:
    slot: int
    start: int  # index of its first token in the packed input
    length: int
    cached: int  # tokens of this request already in the cache before this chunk


@dataclass
class _DecodeGroup:
    rows: torch.Tensor | slice  # packed indices of the group's decoding tokens
    lo: int  # the group attends over slots lo..hi-1
    hi: int
    scatter: torch.Tensor | None  # slot - lo of each row, None when the rows are exactly slots lo..hi-1
    mask: torch.Tensor | None  # [hi - lo, 1, 1, width]: the keys each slot may see; None: all
    width: int

    @classmethod
    def build(cls, members: list[int], slots: list[int], lengths: list[int], device: torch.device) -> _DecodeGroup:
        members = sorted(members, key=lambda i: slots[i])
        group_slots = [slots[i] for i in members]
        lo, hi = group_slots[0], group_slots[-1] + 1
        width = max(lengths[i] for i in members)
        seen = [1] * (hi - lo)  # slots in the range outside the group look at one (finite) key
        for i in members:
            seen[slots[i] - lo] = lengths[i]
        contiguous = members == list(range(members[0], members[0] + len(members)))
        rows: torch.Tensor | slice = (
            slice(members[0], members[-1] + 1) if contiguous else torch.tensor(members, device=device)
        )
        identity = group_slots == list(range(lo, hi))
        scatter = None if identity else torch.tensor([s - lo for s in group_slots], device=device)
        mask = None
        if min(seen) < width:
            mask = (torch.arange(width, device=device)[None, :] < torch.tensor(seen, device=device)[:, None])[
                :, None, None, :
            ]
        return cls(rows, lo, hi, scatter, mask, width)


@dataclass
class StepPlan:
    """Where each packed token belongs, built by the engine before the forward pass."""

    cache: SlotCache
    slots: torch.Tensor  # [M] slot of each packed token
    positions: torch.Tensor  # [M] its position in its request
    dec_slots: list[int]  # slots of the decoding rows, whose tokens come first in the packed input
    dec_lengths: list[int]  # keys each decoding row attends to (its new token included)
    chunks: list[Chunk] = field(default_factory=list)
    _groups: list[_DecodeGroup] | None = None
    _c: bool | None = None
    _dec_slots_t: torch.Tensor | None = None
    _dec_lengths_t: torch.Tensor | None = None
    _causal: dict[int, torch.Tensor] = field(default_factory=dict)

    def _decode_groups(self, device: torch.device) -> list[_DecodeGroup]:
        """Decoding rows grouped by context length (a group's rows are within 2x + 32 tokens of each other),
        so a long conversation does not make every short one attend over its width. Built once per step."""
        if self._groups is None:
            order = sorted(range(len(self.dec_slots)), key=lambda i: self.dec_lengths[i])
            groups: list[list[int]] = []
            for i in order:
                if groups and self.dec_lengths[i] <= 2 * self.dec_lengths[groups[-1][0]] + 32:
                    groups[-1].append(i)
                else:
                    groups.append([i])
            self._groups = [_DecodeGroup.build(g, self.dec_slots, self.dec_lengths, device) for g in groups]
        return self._groups

    def _in_c(self, query: torch.Tensor, key: torch.Tensor, k_all: torch.Tensor) -> bool:
        """True where this step's cache writes and decode attention run in slm's C kernels (CPU, fp32,
        position-major cache, head size a multiple of 8, kernels built); decided once per step. 8 streams of
        GPT-2 124M shape: SDPA over the head-major cache (a masked call per length group) plus the indexed
        writes were 9 ms of a 27 ms step."""
        if self._c is None:
            self._c = bool(
                self.cache.position_major
                and query.device.type == "cpu"
                and query.dtype == key.dtype == k_all.dtype == torch.float32
                and query.shape[-1] % 8 == 0
                and all(t.stride(2) == 1 and t.stride(1) == t.shape[2] for t in (query, key))
                and cpu_int8.library() is not None
            )
            if self._c:
                self._dec_slots_t = torch.tensor(self.dec_slots, dtype=torch.int64)
                self._dec_lengths_t = torch.tensor(self.dec_lengths, dtype=torch.int64)
        return self._c

    def attend(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
    ) -> torch.Tensor:
        """query/key/value [1, heads, M, dim] of the packed tokens -> attention output [1, M, heads, dim]."""
        return self.attend_packed(
            layer, query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), scaling
        ).unsqueeze(0)

    def attend_packed(
        self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
    ) -> torch.Tensor:
        """query/key/value [M, heads, dim] of the packed tokens (any strides) -> attention output [M, heads, dim]."""
        cache = self.cache
        k_all, v_all = cache.layer(layer, key.unsqueeze(0).transpose(1, 2))
        in_c = self._in_c(query, key, k_all)
        if in_c:
            cpu_int8.kv_write(k_all, v_all, key, value, self.slots, self.positions)  # value: strided like key
        else:
            cache.write(k_all, v_all, self.slots, self.positions, key, value)
        gqa = query.shape[1] != key.shape[1]
        out = query.new_empty(query.shape)  # [M, heads, dim]
        if self.dec_slots and in_c:
            n = len(self.dec_slots)
            scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
            cpu_int8.attend_decode(query[:n], k_all, v_all, self._dec_slots_t, self._dec_lengths_t, scale, out[:n])
        for g in self._decode_groups(query.device) if self.dec_slots and not in_c else ():
            q = query[g.rows].unsqueeze(2)  # [n, heads, 1, dim]
            if g.scatter is not None:  # slots lo..hi-1 not in the group get a dummy query, discarded
                full = query.new_zeros(g.hi - g.lo, *q.shape[1:])
                full[g.scatter] = q
                q = full
            k, v = cache.heads(k_all, g.lo, g.hi, g.width), cache.heads(v_all, g.lo, g.hi, g.width)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask, scale=scaling, enable_gqa=gqa)
            out[g.rows] = (o if g.scatter is None else o[g.scatter])[:, :, 0]
        for c in self.chunks:
            q = query[c.start : c.start + c.length].transpose(0, 1).unsqueeze(0)  # [1, heads, L, dim]
            total = c.cached + c.length
            k, v = cache.heads(k_all, c.slot, c.slot + 1, total), cache.heads(v_all, c.slot, c.slot + 1, total)
            if c.cached == 0:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
            else:
                causal = self._causal.get(c.start)
                if causal is None:  # the chunk's queries see the request's cached keys and their own prefix
                    rows = torch.arange(c.cached, total, device=query.device)[:, None]
                    causal = self._causal[c.start] = torch.arange(total, device=query.device)[None, :] <= rows
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=causal, scale=scaling, enable_gqa=gqa)
            out[c.start : c.start + c.length] = o[0].transpose(0, 1)
        return out


def _layer_norm(ln: Any) -> Any:
    """A LayerNorm module's forward as a plain call on rows: torch's functional for nn.LayerNorm (no module
    call overhead), the module itself where it is slm's C one (slm.precision.CLayerNorm)."""
    if type(ln) is torch.nn.LayerNorm:
        shape, weight, bias, eps = (ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        return lambda x: F.layer_norm(x, shape, weight, bias, eps)
    return ln.forward


@dataclass
class _GPT2Layer:
    ln_1: Any  # LayerNorm forward ([M, width] rows -> rows)
    qkv: Any  # the modules' forward methods (nn.Linear, Int8Linear or HF Conv1D), called on [M, in] rows
    proj: Any
    ln_2: Any
    fc: Any
    act: Any
    out: Any
    scaling: float


class PackedGPT2:
    """The engine's packed step for GPT-2 models, without transformers' module machinery: one loop over
    the layers on [M, width] rows, the same weights, layer modules and attention (`StepPlan.attend_packed`)
    as the model's own forward with "slm_packed", minus the per-call kwargs, masks, hooks and output
    objects (12 layers x 4 modules' `__call__` plus the model's bookkeeping was ~5 ms of a 30 ms int8 step
    on one stream). Only the rows in `keep` reach the final norm and the LM head. `build` returns None for
    other architectures, which keep the generic path (the model called with `slm_plan`).

    On the int8 VNNI kernel (slm.precision: LayerNorms and GELU in C) the step is fused: each int8 layer's
    call also does the LayerNorm before it, the GELU after it and the residual add (in place), five C calls
    per layer instead of ~20 torch ops, with the same bits as the model's own forward (GPT-2 124M, one
    stream: a ~13 ms step lost ~1.5 ms of op overhead)."""

    def __init__(self, model: Any) -> None:
        from slm.precision import CGELU, CLayerNorm, Int8Linear

        t = model.transformer
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.width = t.embed_dim
        first = t.h[0].attn
        self.heads, self.head_dim = first.num_heads, first.head_dim
        self.layers = [
            _GPT2Layer(
                ln_1=_layer_norm(b.ln_1),
                qkv=b.attn.c_attn.forward,
                proj=b.attn.c_proj.forward,
                ln_2=_layer_norm(b.ln_2),
                fc=b.mlp.c_fc.forward,
                act=b.mlp.act,
                out=b.mlp.c_proj.forward,
                scaling=float(b.attn.scaling),
            )
            for b in t.h
        ]
        self.ln_f = _layer_norm(t.ln_f)
        self.head = model.lm_head.forward
        self.fused: list[tuple[Any, ...]] | None = None
        blocks = list(t.h)
        linears = [m for b in blocks for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)] + [
            model.lm_head
        ]
        norms = [m for b in blocks for m in (b.ln_1, b.ln_2)] + [t.ln_f]
        if (
            all(isinstance(m, Int8Linear) and m.kernel == "vnni512" for m in linears)
            and all(isinstance(m, CLayerNorm) for m in norms)
            and all(isinstance(b.mlp.act, CGELU) for b in blocks)
        ):
            self.fused = [
                (b.ln_1, b.attn.c_attn.fused, b.attn.c_proj.fused, b.ln_2, b.mlp.c_fc.fused, b.mlp.c_proj.fused)
                for b in blocks
            ]
            self.fused_head = (t.ln_f, model.lm_head.fused)
            self.mlp_width = blocks[0].mlp.c_fc.out_features
        self.scratch: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def build(cls, model: Any) -> PackedGPT2 | None:
        if type(model).__name__ != "GPT2LMHeadModel":
            return None
        cfg = model.config
        if getattr(cfg, "add_cross_attention", False) or not hasattr(model.transformer.h[0].attn, "scaling"):
            return None
        return cls(model)

    def __call__(self, input_ids: torch.Tensor, plan: StepPlan, keep: torch.Tensor) -> torch.Tensor:
        """input_ids [M] packed tokens -> logits [len(keep), vocab] of the rows `keep`."""
        m, width = input_ids.shape[0], self.width
        h = F.embedding(input_ids, self.wte) + F.embedding(plan.positions, self.wpe)
        if self.fused is not None:
            return self._fused(h, plan, keep)
        for i, layer in enumerate(self.layers):
            qkv = layer.qkv(layer.ln_1(h)).view(m, 3, self.heads, self.head_dim)
            a = plan.attend_packed(i, qkv[:, 0], qkv[:, 1], qkv[:, 2], layer.scaling)
            h = layer.proj(a.view(m, width)) + h
            h = h + layer.out(layer.act(layer.fc(layer.ln_2(h))))
        return self.head(self.ln_f(h[keep]))

    def _fused(self, h: torch.Tensor, plan: StepPlan, keep: torch.Tensor) -> torch.Tensor:
        m, width = h.shape
        if self.scratch is None or self.scratch[0].shape[0] != m:  # reused while the step size stays
            self.scratch = (torch.empty(m, 3 * width), torch.empty(m, self.mlp_width))
        qkv_out, fc_out = self.scratch
        for i, (ln_1, qkv, proj, ln_2, fc, out) in enumerate(self.fused):  # type: ignore[arg-type]
            x = qkv(h, norm=ln_1, out=qkv_out).view(m, 3, self.heads, self.head_dim)
            a = plan.attend_packed(i, x[:, 0], x[:, 1], x[:, 2], self.layers[i].scaling)
            proj(a.view(m, width), residual=h)  # h += proj(a), in place
            out(fc(h, norm=ln_2, gelu=True, out=fc_out), residual=h)  # h += out(gelu(fc(ln_2(h))))
        ln_f, head = self.fused_head
        return head(h[keep].contiguous(), norm=ln_f)


def _packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    plan: StepPlan | None = kwargs.get("slm_plan")
    if plan is None:  # an ordinary call (generate, perplexity): plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    return plan.attend(module.layer_idx, query, key, value, scaling), None


def _packed_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """The engine's plan carries the masking; ordinary calls get SDPA's causal mask."""
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Registers "slm_packed" with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, _packed_attention)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _packed_mask)
    _registered = True


def enable_packed(model: Any) -> Any:
    """Switches `model` (a transformers PreTrainedModel) to packed attention; returns it."""
    register()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model
