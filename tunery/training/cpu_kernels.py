"""CPU training kernels for what PEFT and transformers compute slowly on a CPU: LoRA linears, packed attention, RMSNorm.

LoRA on a bf16 base: PEFT computes `base(x) + B(A(x)) * scaling` under autocast: x is cast to fp32
and back, A and B are cast to bf16 in every call, and the scale and the sum are separate passes over
the output, forward and backward. Here A and B are cast once per optimizer step and `addmm` adds
`scaling * (x A^T) B^T` into the base output (and `scaling * (g B) A` into the input gradient);
A's and B's gradients come back in fp32. On an fp32 base (a CPU without fast bf16) the same
function runs on the fp32 adapters as they are: no casts, but the scale and the sum still fused
into the GEMMs (the decoder stack's forward and backward 1.04-1.08x with the fp32 norm below, AMD
EPYC with AVX2). Projections a module calls on one input (a layer's q, k and v; gate and up) run as
one `_LoraGroup`: their A products as one GEMM over the input, and one input gradient that every
member's products accumulate into, instead of one per member summed by autograd.

Packed attention: transformers hands a packed row to SDPA with one block-diagonal mask (or, for one
example, `is_causal` in bf16), and torch's CPU kernel runs slowly on it; per example with
`is_causal` in fp32 the same attention took about half the time forward and backward (256-token
pieces, 9 heads of 64); in an fp32 row those calls are one autograd node (`_PackedFlashAttention`) that
keeps one copy of the row's output (56 MiB less saved per 850-token piece of the default model, the
same bits). In a bf16 row whose examples are all short (at most 512 tokens), each
example's attention is instead a few bf16 batched products with an fp32 softmax between them
(`_ShortCausalAttention`), which ran 1.8x faster than that forward and backward on a Zen 4 EPYC.

RMSNorm with a frozen bf16 or fp32 weight (LoRA's case): transformers' Llama-style norm upcasts
the input to fp32 and keeps that copy for the backward pass, and autograd runs each of its eight
operations backward on its own. `_RMSNorm` computes the same forward (the same operations, so the same bits:
a module is switched only when a probe on its own weight gives bit-identical output) and keeps the
bf16 input and one fp32 scale per row; its backward runs in place on two fp32 temporaries. Half
the norms' saved memory (56 MiB less per 850-token piece of the default model); 1.3-1.5x on the
norm alone, forward and backward (850 rows of 576, Intel Xeon with AMX).

Each applies only to the case measured and passes everything else (DoRA, dropout, several adapters,
fp16 bases, fp32 bases under autocast, padded rows, caches, sliding windows, other devices) to PEFT's or transformers' own path.
Knows nothing of the training loop.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F

ATTENTION = "tunery_packed"


@contextlib.contextmanager
def cpu_kernels(model, optimizer: torch.optim.Optimizer | None, enabled: bool) -> Iterator[None]:
    """Both kernels in `model` while the block runs (if `enabled`); the model is as before after it.

    `optimizer` is the one updating the adapters: after each of its steps their bf16 copies are made again.
    """
    with lora_kernel(model, optimizer, enabled), packed_attention(model, enabled), rms_norm_kernel(model, enabled):
        yield


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, a16, b16, a, b, scaling: float):  # a, b: fp32 parameters, for their grads
        xa = x @ a16.t()
        out = F.linear(x, weight, bias).addmm_(xa, b16.t(), alpha=scaling)
        ctx.save_for_backward(x, weight, a16, b16, xa)
        ctx.scaling = scaling
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, a16, b16, xa = ctx.saved_tensors
        s = ctx.scaling
        grad_xa = grad @ b16
        grad_x = (grad @ weight).addmm_(grad_xa, a16, alpha=s) if ctx.needs_input_grad[0] else None
        grad_a = (grad_xa.t() @ x).float().mul_(s) if ctx.needs_input_grad[5] else None
        grad_b = (grad.t() @ xa).float().mul_(s) if ctx.needs_input_grad[6] else None
        return grad_x, None, None, None, None, grad_a, grad_b, None


def bf16_copy(cache: dict, param: torch.Tensor) -> torch.Tensor:
    """`param` in bf16, cast again after it changed (see `stacked_copy`)."""
    return stacked_copy(cache, [param], torch.bfloat16)


def stacked_copy(cache: dict, params: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """`params` stacked along their first dimension in `dtype`, made again after any of them changed: the cache
    is emptied after each optimizer step (the fused AdamW kernel leaves version counters alone), and an
    in-place change elsewhere bumps a version."""
    key = tuple(id(p) for p in params)
    versions = tuple(p._version for p in params)
    kept = cache.get(key)
    if kept is None or kept[0] != versions:
        stacked = torch.cat([p.detach() for p in params]) if len(params) > 1 else params[0].detach()
        kept = (versions, stacked.to(dtype))
        cache[key] = kept
    return kept[1]


def adapter_of(layer, x: torch.Tensor, args, kwargs) -> str | None:
    """The one plain LoRA adapter this call can compute here, or None for PEFT's own path."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    base = layer.base_layer
    if (name not in layer.lora_A or name in getattr(layer, "lora_variant", {}) or layer.use_dora.get(name)
            or not isinstance(layer.lora_dropout[name], torch.nn.Identity)
            or layer.lora_A[name].bias is not None or layer.lora_B[name].bias is not None):
        return None
    if (type(base) is not torch.nn.Linear or base.weight.requires_grad
            or base.weight.dtype not in (torch.bfloat16, torch.float32)
            or (base.bias is not None and base.bias.requires_grad)):
        return None
    if x.dtype != base.weight.dtype or x.device.type != "cpu":
        return None
    if x.dtype == torch.float32 and (layer.lora_A[name].weight.dtype != torch.float32
                                     or layer.lora_B[name].weight.dtype != torch.float32
                                     or torch.is_autocast_enabled("cpu")):  # autocast would mix dtypes in addmm_
        return None
    return name


def kernel_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    siblings = self.__dict__.get("_tunery_siblings")
    if siblings is not None:
        out = siblings.output(self, x, args, kwargs)
        if out is not None:
            return out
    name = adapter_of(self, x, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    cache = self.__dict__["_tunery_bf16"]
    x2 = x.reshape(-1, x.shape[-1])
    a_x, b_x = (bf16_copy(cache, a), bf16_copy(cache, b)) if x.dtype == torch.bfloat16 else (a.detach(), b.detach())
    out = _LoraLinear.apply(x2, self.base_layer.weight, self.base_layer.bias, a_x, b_x, a, b, float(self.scaling[name]))
    return out.view(*x.shape[:-1], out.shape[-1])


class _LoraGroup(torch.autograd.Function):
    """`count` LoRA linears reading the same input: `_LoraLinear`'s chain for each, with the A products as one
    GEMM (`a` stacks the members' A, `xa` is read in slices), and in backward one input gradient buffer that
    every member's products accumulate into (autograd would sum `count` separate ones)."""

    @staticmethod
    def forward(ctx, x, scaling: float, count: int, *tensors):
        # tensors: weights, biases (or None), the stacked A (compute dtype), each B (compute dtype), each A, each B
        weights, biases = tensors[:count], tensors[count:2 * count]
        a = tensors[2 * count]
        bs = tensors[2 * count + 1:3 * count + 1]
        xa = x @ a.t()
        outs, start = [], 0
        for weight, bias, b in zip(weights, biases, bs):
            rank = b.shape[1]
            outs.append(F.linear(x, weight, bias).addmm_(xa[:, start:start + rank], b.t(), alpha=scaling))
            start += rank
        ctx.save_for_backward(x, a, xa, *weights, *bs)
        ctx.scaling, ctx.count = scaling, count
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        x, a, xa, *rest = ctx.saved_tensors
        count, s = ctx.count, ctx.scaling
        weights, bs = rest[:count], rest[count:]
        grad_xa = torch.cat([grad @ b for grad, b in zip(grads, bs)], dim=1)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = grads[0] @ weights[0]
            for grad, weight in zip(grads[1:], weights[1:]):
                grad_x.addmm_(grad, weight)
            grad_x.addmm_(grad_xa, a, alpha=s)
        ranks = [b.shape[1] for b in bs]
        first_a = 3 + 3 * count + 1  # needs_input_grad's index of the first member's A parameter
        grad_as: list = [None] * count
        if any(ctx.needs_input_grad[first_a:first_a + count]):
            grad_as = list((grad_xa.t() @ x).float().mul_(s).split(ranks))
        grad_bs, start = [], 0
        for i, (grad, rank) in enumerate(zip(grads, ranks)):
            wanted = ctx.needs_input_grad[first_a + count + i]
            grad_bs.append((grad.t() @ xa[:, start:start + rank]).float().mul_(s) if wanted else None)
            start += rank
        return (grad_x, None, None) + (None,) * (3 * count + 1) + tuple(grad_as) + tuple(grad_bs)


SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # projections a module calls on one input


class _Siblings:
    """LoRA linears of one module that its forward calls one after another on the same tensor (a layer's q, k
    and v projections; gate and up): the first call computes every member's output with `_LoraGroup` and
    keeps the others' for their own calls, which must come with that very tensor, unchanged since."""

    def __init__(self, layers: list, cache: dict):
        self.layers, self.cache = layers, cache
        self.kept: tuple | None = None  # (input, its version, {layer: output})

    def output(self, layer, x: torch.Tensor, args, kwargs) -> torch.Tensor | None:
        kept = self.kept
        if kept is not None and kept[0] is x and kept[1] == x._version and layer in kept[2]:
            out = kept[2].pop(layer)
            if not kept[2]:
                self.kept = None
            return out
        self.kept = None
        if x.is_inference():  # no version counter to tell a change between the calls
            return None
        names = [adapter_of(m, x, args, kwargs) for m in self.layers]
        if None in names or len({float(m.scaling[n]) for m, n in zip(self.layers, names)}) != 1:
            return None
        a_params = [m.lora_A[n].weight for m, n in zip(self.layers, names)]
        b_params = [m.lora_B[n].weight for m, n in zip(self.layers, names)]
        bs = [bf16_copy(self.cache, b) if x.dtype == torch.bfloat16 else b.detach() for b in b_params]
        x2 = x.reshape(-1, x.shape[-1])
        outs = _LoraGroup.apply(x2, float(self.layers[0].scaling[names[0]]), len(self.layers),
                                *[m.base_layer.weight for m in self.layers], *[m.base_layer.bias for m in self.layers],
                                stacked_copy(self.cache, a_params, x.dtype), *bs, *a_params, *b_params)
        outs = {m: out.view(*x.shape[:-1], out.shape[-1]) for m, out in zip(self.layers, outs)}
        mine = outs.pop(layer)
        self.kept = (x, x._version, outs)
        return mine


def sibling_groups(model, cache: dict) -> list[_Siblings]:
    """A `_Siblings` for each module with two or more PEFT LoRA linears named in one `SIBLINGS` set."""
    from peft.tuners.lora.layer import Linear

    groups = []
    for module in model.modules():
        for names in SIBLINGS:
            layers = [module._modules.get(n) for n in names]  # its own children (PEFT's wrappers forward getattr)
            layers = [m for m in layers if type(m) is Linear]
            if len(layers) > 1:
                groups.append(_Siblings(layers, cache))
    return groups


def lora_layers(model) -> list[torch.nn.Module]:
    from peft.tuners.lora.layer import Linear

    return [m for m in model.modules() if type(m) is Linear]


@contextlib.contextmanager
def lora_kernel(model, optimizer: torch.optim.Optimizer | None, enabled: bool) -> Iterator[None]:
    """PEFT LoRA Linear layers compute through `_LoraLinear` while the block runs (where `adapter_of` allows)."""
    layers = lora_layers(model) if enabled else []
    cache: dict = {}
    hook = optimizer.register_step_post_hook(lambda *args: cache.clear()) if optimizer and layers else None
    for layer in layers:
        layer.forward = types.MethodType(kernel_forward, layer)
        layer.__dict__["_tunery_bf16"] = cache
    groups = sibling_groups(model, cache) if layers else []
    for group in groups:
        for layer in group.layers:
            layer.__dict__["_tunery_siblings"] = group
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()
        for group in groups:
            group.kept = None
            for layer in group.layers:
                del layer.__dict__["_tunery_siblings"]
        for layer in layers:
            del layer.forward
            del layer.__dict__["_tunery_bf16"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' Llama RMSNorm, operation for operation, and the fp32 scale of each row."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * (xf * rstd).to(x.dtype), rstd


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        out, rstd = rms_norm(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return out

    @staticmethod
    def backward(ctx, grad):
        # y = w * bf16(h), h = x * rstd: dL/dx = rstd * (gh - h * mean(gh * h)), gh = grad * w
        x, weight, rstd = ctx.saved_tensors
        h = x * rstd  # fp32 (bf16 x fp32 promotes exactly); never in place: x may be the saved fp32 input itself
        gh = (grad * weight).float()
        dot = (gh * h).mean(-1, keepdim=True)
        return gh.sub_(h.mul_(dot)).mul_(rstd).to(x.dtype), None, None


def norm_epsilon(module) -> float | None:
    """The epsilon of a Llama-style RMSNorm module with a frozen 1-D bf16 or fp32 weight, or None."""
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if (not isinstance(weight, torch.nn.Parameter) or weight.dim() != 1
            or weight.dtype not in (torch.bfloat16, torch.float32)
            or weight.requires_grad or weight.device.type != "cpu" or not isinstance(eps, float)):
        return None
    return eps


def computes_like_kernel(module, eps: float) -> bool:
    """Whether the module's own forward gives `_RMSNorm`'s output bit for bit (a probe on random rows)."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(4, module.weight.shape[0], generator=generator) * 3).to(module.weight.dtype)
    with torch.no_grad():
        try:
            own = type(module).forward(module, x)
        except Exception:  # a norm that takes other arguments is not the one measured
            return False
        return isinstance(own, torch.Tensor) and own.dtype == x.dtype and torch.equal(own, rms_norm(x, module.weight, eps)[0])


def norm_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if args or kwargs or x.dtype != self.weight.dtype or x.device.type != "cpu" or self.weight.requires_grad:
        return type(self).forward(self, x, *args, **kwargs)
    return _RMSNorm.apply(x, self.weight, self.__dict__["_tunery_eps"])


def rms_norms(model) -> list[tuple[torch.nn.Module, float]]:
    """The RMSNorm modules `_RMSNorm` computes exactly, with their epsilons."""
    found = []
    for module in model.modules():
        if "RMSNorm" not in type(module).__name__ or "forward" in module.__dict__:
            continue
        eps = norm_epsilon(module)
        if eps is not None and computes_like_kernel(module, eps):
            found.append((module, eps))
    return found


@contextlib.contextmanager
def rms_norm_kernel(model, enabled: bool) -> Iterator[None]:
    """RMSNorms with frozen bf16 or fp32 weights compute through `_RMSNorm` while the block runs."""
    norms = rms_norms(model) if enabled else []
    for module, eps in norms:
        module.forward = types.MethodType(norm_forward, module)
        module.__dict__["_tunery_eps"] = eps
    try:
        yield
    finally:
        for module, _ in norms:
            del module.forward
            del module.__dict__["_tunery_eps"]


def packed_attention_forward(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None,
                             dropout: float = 0.0, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: (batch, heads, tokens, head_dim) in, (batch, tokens, heads, head_dim) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if position_ids is None or not handles(module, query, key, position_ids, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    bounds = example_bounds(position_ids[0])
    if short_enough(query, bounds):
        return _ShortCausalAttention.apply(query, key, value, bounds,
                                           query.shape[-1] ** -0.5 if scaling is None else float(scaling)), None
    if query.dtype == torch.float32 and key.dtype == value.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
        return _PackedFlashAttention.apply(query, key, value, bounds, None if scaling is None else float(scaling)), None
    outputs = []
    with torch.autocast("cpu", enabled=False):  # fp32 here: torch's CPU kernel is faster in fp32 than bf16
        for start, end in bounds:
            outputs.append(F.scaled_dot_product_attention(
                query[:, :, start:end].float(), key[:, :, start:end].float(), value[:, :, start:end].float(),
                is_causal=True, scale=scaling, enable_gqa=key.shape[1] != query.shape[1]))
    out = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _PackedFlashAttention(torch.autograd.Function):
    """Each example of a packed fp32 row through torch's fused CPU kernel, in one autograd node.

    The same kernel calls as `F.scaled_dot_product_attention` per example (so the same values), but
    each example's output is written into the row's (tokens, heads, head_dim) output, which is also
    the output projection's input: one copy kept for the backward pass instead of the kernel's and the
    projection's, and no concatenation. Backward writes each example's query, key and value gradients
    into one buffer each, where autograd would fill a zero tensor the size of the row for every
    example's slice and add them up.
    """

    @staticmethod
    def forward(ctx, query, key, value, bounds, scale: float | None):  # (1, heads, tokens, dim) -> (1, tokens, heads, dim)
        heads, tokens, dim = query.shape[1:]
        out = query.new_empty(1, tokens, heads, dim)
        logsumexps = []
        for start, end in bounds:
            o, lse = _FLASH(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], 0.0, True, scale=scale)
            out[0, start:end] = o[0].transpose(0, 1)
            logsumexps.append(lse)
        ctx.bounds, ctx.scale = bounds, scale
        ctx.save_for_backward(query, key, value, out, *logsumexps)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, *logsumexps = ctx.saved_tensors
        grad_q, grad_k, grad_v = torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)
        for (start, end), lse in zip(ctx.bounds, logsumexps, strict=True):
            part = slice(start, end)
            gq, gk, gv = _FLASH_BACKWARD(
                grad_out[:, part].transpose(1, 2), query[:, :, part], key[:, :, part], value[:, :, part],
                out[:, part].transpose(1, 2), lse, 0.0, True, scale=ctx.scale)
            grad_q[:, :, part], grad_k[:, :, part], grad_v[:, :, part] = gq, gk, gv
        return grad_q, grad_k, grad_v, None, None


SHORT_EXAMPLE_TOKENS = 512  # longest example attended with the bf16 products below
SHORT_SAVED_BYTES = 16 << 20  # most bytes of attention weights one layer keeps for its backward pass


def short_enough(query: torch.Tensor, bounds: list[tuple[int, int]]) -> bool:
    """bf16 rows whose examples are all short: their full attention weights are small enough to keep."""
    if query.dtype != torch.bfloat16:
        return False
    lengths = [end - start for start, end in bounds]
    return max(lengths) <= SHORT_EXAMPLE_TOKENS and 2 * query.shape[1] * sum(n * n for n in lengths) <= SHORT_SAVED_BYTES


class _ShortCausalAttention(torch.autograd.Function):
    """Causal attention of each example in a packed bf16 row, as bf16 batched products.

    Per example and key-value head, the query heads that share it are stacked into one
    (heads x tokens, head_dim) matrix, so each product is one `bmm` over the key-value heads; scores
    are scaled and masked in the product's fp32 accumulators, rounded to bf16 once, softmaxed with
    fp32 inside, and the bf16 weights kept for the backward pass (transformers' eager attention under
    autocast rounds the same way). Forward and backward each make one elementwise pass over the
    weights (softmax, and softmax's backward), the rest is products. For examples of a few hundred
    tokens these products run as bf16 GEMMs (with a 64-wide inner dimension, a fraction of the
    machine's `F.linear` rate), where torch's fused CPU kernel runs its per-block loops in fp32 (its
    faster precision at these lengths): 1.8x faster on a Zen 4 EPYC, 1.7x on a Xeon with AMX.
    The row's query, key and value gradients are written in place, one buffer each.
    """

    @staticmethod
    def forward(ctx, query, key, value, bounds, scale: float):  # (1, heads, tokens, head_dim) -> (1, tokens, heads, head_dim)
        heads, tokens, dim = query.shape[1:]
        groups = heads // key.shape[1]
        out = query.new_empty(1, tokens, heads, dim)
        saved = []
        with torch.autocast("cpu", enabled=False):
            for start, end in bounds:
                n = end - start
                q = query[0, :, start:end].reshape(key.shape[1], groups * n, dim)
                # scaled and masked inside the product (its fp32 accumulators), rounded to bf16 once
                scores = torch.baddbmm(causal_bias(n, groups), q, key[0, :, start:end].transpose(1, 2), alpha=scale)
                weights = torch.softmax(scores, dim=-1)  # bf16 in and out, fp32 inside
                o = torch.bmm(weights, value[0, :, start:end])
                out[0, start:end] = o.view(heads, n, dim).transpose(0, 1)
                saved += [q, weights]
        ctx.bounds, ctx.scale, ctx.groups = bounds, scale, groups
        ctx.save_for_backward(key, value, *saved)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        key, value, *saved = ctx.saved_tensors
        kv_heads, tokens, dim = key.shape[1:]
        heads = kv_heads * ctx.groups
        grad_q = key.new_empty(1, heads, tokens, dim)
        grad_k, grad_v = torch.empty_like(key), torch.empty_like(value)
        with torch.autocast("cpu", enabled=False):
            for i, (start, end) in enumerate(ctx.bounds):
                q, weights = saved[2 * i: 2 * i + 2]
                n = end - start
                g = grad_out[0, start:end].transpose(0, 1).reshape(kv_heads, ctx.groups * n, dim).to(key.dtype)
                grad_v[0, :, start:end] = torch.bmm(weights.transpose(1, 2), g)
                grad_weights = torch.bmm(g, value[0, :, start:end].transpose(1, 2))
                # softmax's Jacobian applied to the rounded dP itself (fp32 inside, one pass): each row's
                # gradient sums to 0; the scale goes on dq, dk
                grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, key.dtype)
                grad_q[0, :, start:end] = torch.bmm(grad_scores, key[0, :, start:end]).mul_(ctx.scale).view(heads, n, dim)
                grad_k[0, :, start:end] = torch.bmm(grad_scores.transpose(1, 2), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None, None


@functools.cache
def causal_mask() -> torch.Tensor:
    """(SHORT_EXAMPLE_TOKENS, SHORT_EXAMPLE_TOKENS) bf16: 0 where a query may attend, -inf above the diagonal."""
    return torch.full((SHORT_EXAMPLE_TOKENS, SHORT_EXAMPLE_TOKENS), float("-inf"), dtype=torch.bfloat16).triu(1)


def causal_bias(n: int, groups: int) -> torch.Tensor:
    """The causal mask of an n-token example for `groups` query heads stacked: (1, groups * n, n)."""
    return causal_mask()[:n, :n].expand(groups, n, n).reshape(1, groups * n, n)


def handles(module, query: torch.Tensor, key: torch.Tensor, position_ids: torch.Tensor, dropout: float, kwargs: dict) -> bool:
    """Only the case measured: one packed CPU row, causal, no window, no sinks, no dropout.

    Training's forward passes (`use_cache=False`) are the only callers: with a cache transformers
    reads a packed row as one sequence, which a cache's caller never builds.
    """
    return (query.device.type == "cpu" and query.shape[0] == 1
            and position_ids.shape == (1, query.shape[2]) and key.shape[2] == query.shape[2]
            and dropout == 0.0 and getattr(module, "is_causal", True)
            and getattr(module, "sliding_window", None) is None
            and not any(kwargs.get(k) is not None for k in ("s_aux", "softcap", "sliding_window")))


def example_bounds(positions: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each example in a packed row: a new one starts wherever positions do not count up by 1."""
    starts = torch.nonzero(positions[1:] != positions[:-1] + 1).flatten() + 1
    edges = [0, *starts.tolist(), positions.shape[0]]
    return list(zip(edges[:-1], edges[1:], strict=False))


def register() -> None:
    """Make ATTENTION a transformers attention implementation (its mask is SDPA's, for the rows it passes on)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextlib.contextmanager
def packed_attention(model, enabled: bool) -> Iterator[None]:
    """Use ATTENTION while the block runs, if `enabled` and the model uses SDPA; its own choice is restored after."""
    config = getattr(model, "config", None)
    if not enabled or config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    register()
    configs = [c for c in {id(m.config): m.config for m in model.modules()
                           if getattr(getattr(m, "config", None), "_attn_implementation", None) == "sdpa"}.values()]
    for c in configs:
        c._attn_implementation = ATTENTION
    try:
        yield
    finally:
        for c in configs:
            c._attn_implementation = "sdpa"
