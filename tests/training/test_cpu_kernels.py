"""The CPU training kernels (`train.kernels: auto`) against PEFT's and transformers' own computation.

LoRA's GEMM chain: the same function as PEFT's layer, closer to fp32 than PEFT's bf16 path, with
adapter copies refreshed after every update. Packed attention: each example in a packed row
attends exactly as alone. RMSNorm: transformers' output bit for bit, without the fp32 copy. Whole runs: fp32 is unchanged (1e-5), bf16 stays on fp32's loss curve.
"""

from __future__ import annotations

import json

import pytest
import torch

import tunery
from tests.training.conftest import make_conversations
from tunery.training import cpu_kernels
from tunery.training.cpu_kernels import cpu_kernels as kernels_on


def lora_layer(dtype=torch.bfloat16, **lora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(64, 96, bias=False)).to(dtype)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["0"], **lora))
    for name, p in model.named_parameters():
        if "lora_" in name:  # B starts at zero: give both factors weight so every gradient is tested
            with torch.no_grad():
                p.normal_(0, 0.05)
    return model


def forward_backward(model, x, kernels: bool):
    x = x.clone().requires_grad_(True)
    with kernels_on(model, None, kernels), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out.float(), x.grad.float(), grads


def fp32_reference(model, x):
    """The same layer computed wholly in fp32 from the bf16 base weight: what both bf16 paths approximate."""
    layer = model.base_model.model[0]
    w = layer.base_layer.weight.float()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    x = x.float().clone().requires_grad_(True)
    out = x @ w.t() + layer.scaling["default"] * (x @ a.t()) @ b.t()
    out.square().sum().backward()
    grads = {"a": a.grad.clone(), "b": b.grad.clone()}
    a.grad = b.grad = None
    return out, x.grad, grads


def rel(a, b) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def test_lora_kernel_matches_fp32_at_least_as_well_as_peft(monkeypatch):
    model = lora_layer()
    calls = []
    real_apply = cpu_kernels._LoraLinear.apply
    monkeypatch.setattr(cpu_kernels._LoraLinear, "apply", lambda *a: calls.append(1) or real_apply(*a))
    x = torch.randn(2, 40, 64).to(torch.bfloat16)
    ref_out, ref_gx, ref_g = fp32_reference(model, x)
    names = {"a": "base_model.model.0.lora_A.default.weight", "b": "base_model.model.0.lora_B.default.weight"}
    errors = {}
    for kernels in (False, True):
        out, gx, grads = forward_backward(model, x, kernels)
        assert all(g.dtype == torch.float32 for g in grads.values())
        errors[kernels] = [rel(out, ref_out), rel(gx, ref_gx)] + [rel(grads[names[k]], ref_g[k]) for k in "ab"]
    assert len(calls) == 1  # the kernel ran once, PEFT's path the other time
    assert max(errors[True]) < 1e-2
    for ours, peft in zip(errors[True], errors[False], strict=True):
        assert ours <= peft * 1.5 + 1e-3


@pytest.mark.parametrize("update", ["fused AdamW", "in place"])
def test_lora_kernel_recasts_adapters_after_an_update(update):
    model = lora_layer()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)  # its kernel leaves version counters alone
    x = torch.randn(1, 16, 64).to(torch.bfloat16)
    with kernels_on(model, optimizer, True), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(x)
        if update == "in place":
            with torch.no_grad():
                for p in params:
                    p.mul_(3.0)
        else:
            before.float().square().sum().backward()
            optimizer.step()
        after = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        peft_after = model(x)
    assert rel(after.float(), before.float()) > 0.01  # the update shows
    assert rel(after.float(), peft_after.float()) < 1e-2


@pytest.mark.parametrize("setting", [{"use_dora": True}, {"lora_dropout": 0.1}])
def test_lora_kernel_leaves_other_variants_to_peft(monkeypatch, setting):
    model = lora_layer(**setting)
    monkeypatch.setattr(cpu_kernels._LoraLinear, "apply", lambda *a: pytest.fail("kernel used"))
    forward_backward(model, torch.randn(1, 8, 64).to(torch.bfloat16), kernels=True)


def test_lora_kernel_on_an_fp32_base_computes_peft_fp32_layer(monkeypatch):
    """A CPU without fast bf16 trains in fp32: the kernel runs on the fp32 adapters themselves."""
    model = lora_layer(dtype=torch.float32)
    calls = []
    real_apply = cpu_kernels._LoraLinear.apply
    monkeypatch.setattr(cpu_kernels._LoraLinear, "apply", lambda *a: calls.append(1) or real_apply(*a))
    x0 = torch.randn(2, 40, 64)
    results = {}
    for kernels in (False, True):
        x = x0.clone().requires_grad_(True)
        with kernels_on(model, None, kernels):
            out = model(x)
        out.square().sum().backward()
        results[kernels] = [out, x.grad] + [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
    assert len(calls) == 1
    assert len(results[True]) == 4  # output, input gradient, A's and B's gradients
    for ours, peft in zip(results[True], results[False], strict=True):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, peft, rtol=1e-5, atol=1e-6)
    with kernels_on(model, None, True), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x0)  # an fp32 base under autocast keeps PEFT's path
    assert len(calls) == 1


class Projections(torch.nn.Module):
    """q, k and v read one input (k and v with frozen biases, as Qwen's); `change` edits it in place between q and k."""

    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(64, 96, bias=False)
        self.k_proj = torch.nn.Linear(64, 32)
        self.v_proj = torch.nn.Linear(64, 32)

    def forward(self, x, change: bool = False, other: torch.Tensor | None = None):
        q = self.q_proj(x)
        if change:
            x.mul_(2.0)  # the same tensor, changed in place between the calls (run without autograd)
        k = self.k_proj(x if other is None else other)
        return torch.cat([q, k, self.v_proj(x)], dim=-1)


def projections(dtype, **lora):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(Projections().to(dtype), LoraConfig(target_modules=["q_proj", "k_proj", "v_proj"], **lora))
    for name, p in model.named_parameters():
        if "lora_" in name:
            with torch.no_grad():
                p.normal_(0, 0.05)
    return model


def run_projections(model, x, kernels: bool, **kwargs):
    x = x.clone().requires_grad_(True)
    with kernels_on(model, None, kernels):
        out = model(x, **kwargs)
    out.float().square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return [out.float(), x.grad.float()] + grads


def counting(monkeypatch, cls) -> list:
    calls = []
    real_apply = cls.apply
    monkeypatch.setattr(cls, "apply", lambda *a: calls.append(1) or real_apply(*a))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lora", [{"r": 8, "lora_alpha": 16}, {"r": 8, "lora_alpha": 16, "rank_pattern": {"k_proj": 4}, "alpha_pattern": {"k_proj": 8}}])
def test_sibling_projections_compute_as_each_alone(monkeypatch, dtype, lora):
    """q, k and v through one group kernel: the outputs and every gradient of each layer through its own."""
    model = projections(dtype, **lora)
    groups = counting(monkeypatch, cpu_kernels._LoraGroup)
    x = torch.randn(2, 24, 64).to(dtype)
    grouped = run_projections(model, x, True)
    assert len(groups) == 1
    monkeypatch.setattr(cpu_kernels, "SIBLINGS", ())
    alone = run_projections(model, x, True)
    peft = run_projections(model, x, False)
    assert len(groups) == 1 and len(grouped) == 8  # output, input gradient, 3 A's and 3 B's gradients
    for ours, theirs, reference in zip(grouped, alone, peft, strict=True):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        if dtype == torch.float32:  # the same products in other GEMMs: summed in another order (2e-6 apart on AVX-512)
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
        else:  # the same products, summed in another order
            assert rel(ours, theirs) < 1e-2


@pytest.mark.parametrize("case", ["changed", "another"])
def test_a_sibling_called_on_another_or_a_changed_input_computes_on_it(case):
    model = projections(torch.float32, r=8, lora_alpha=16)
    x = torch.randn(1, 12, 64)
    kwargs = {"change": True} if case == "changed" else {"other": torch.randn(1, 12, 64)}
    results = {}
    for kernels in (True, False):
        with kernels_on(model, None, kernels), torch.no_grad():
            results[kernels] = model(x.clone(), **kwargs)
    torch.testing.assert_close(results[True], results[False], rtol=1e-5, atol=1e-6)
    with kernels_on(model, None, True), torch.inference_mode():  # tensors without a version counter
        torch.testing.assert_close(model(x.clone(), **kwargs), results[False], rtol=1e-5, atol=1e-6)


def test_siblings_with_different_scalings_are_computed_each_alone(monkeypatch):
    model = projections(torch.bfloat16, r=8, lora_alpha=16, alpha_pattern={"v_proj": 32})
    groups = counting(monkeypatch, cpu_kernels._LoraGroup)
    singles = counting(monkeypatch, cpu_kernels._LoraLinear)
    x = torch.randn(1, 12, 64).to(torch.bfloat16)
    ours = run_projections(model, x, True)
    assert not groups and len(singles) == 3
    monkeypatch.setattr(cpu_kernels, "SIBLINGS", ())
    theirs = run_projections(model, x, True)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_a_lora_model_computes_its_projections_in_groups(tiny_model_dir, monkeypatch):
    """Each decoder layer: q, k, v as one group and gate, up as another; o and down alone. Nothing kept after."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    groups = counting(monkeypatch, cpu_kernels._LoraGroup)
    singles = counting(monkeypatch, cpu_kernels._LoraLinear)
    layers = model.config.num_hidden_layers
    ids = torch.randint(0, model.config.vocab_size, (1, 20))
    with kernels_on(model, None, True):
        model(input_ids=ids).logits.float().sum().backward()
        kept = [m.__dict__["_tunery_siblings"] for m in cpu_kernels.lora_layers(model)
                if "_tunery_siblings" in m.__dict__]
        assert len(groups) == 2 * layers and len(singles) == 2 * layers
        assert len(kept) == 5 * layers and all(group.kept is None for group in kept)  # every output was taken
        attention = model.base_model.model.model.layers[0].self_attn
        attention.q_proj(torch.randn(1, 3, model.config.hidden_size, dtype=torch.bfloat16))  # k and v never asked
        assert attention.q_proj.__dict__["_tunery_siblings"].kept is not None
    assert all(group.kept is None for group in kept)  # nothing held once the block ends
    assert not any("_tunery_siblings" in m.__dict__ for m in cpu_kernels.lora_layers(model))


def test_packed_attention_gives_each_example_its_own_attention(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    torch.manual_seed(1)
    examples = [torch.randint(0, 300, (n,)) for n in (7, 12, 5)]
    ids = torch.cat(examples)[None]
    positions = torch.cat([torch.arange(len(e)) for e in examples])[None]
    with torch.no_grad():
        alone = torch.cat([model(input_ids=e[None]).logits[0] for e in examples])
        reference = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        with kernels_on(model, None, True):
            assert model.config._attn_implementation == cpu_kernels.ATTENTION
            packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
    assert model.config._attn_implementation == "sdpa"
    assert torch.allclose(reference, alone, atol=1e-5)
    assert torch.allclose(packed, alone, atol=1e-5)


def packed_row(lengths, heads=6, kv_heads=2, dim=16, seed=0):
    torch.manual_seed(seed)
    tokens = sum(lengths)
    q = (torch.randn(1, heads, tokens, dim) * 2).to(torch.bfloat16).requires_grad_(True)
    k = (torch.randn(1, kv_heads, tokens, dim) * 2).to(torch.bfloat16).requires_grad_(True)
    v = torch.randn(1, kv_heads, tokens, dim).to(torch.bfloat16).requires_grad_(True)
    edges = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    return q, k, v, list(zip(edges[:-1], edges[1:], strict=True))


def per_example_fp64(q, k, v, bounds, scale):
    """Each example alone through torch's own attention in fp64: what the packed kernels approximate."""
    q, k, v = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True, scale=scale, enable_gqa=True)
        for s, e in bounds], dim=2).transpose(1, 2)
    return out, (q, k, v)


@pytest.mark.parametrize("lengths", [(7, 30, 1, 12), (40,), (1, 1, 1)])
def test_fp32_packed_attention_is_torchs_kernel_per_example_with_one_output_kept(lengths):
    """fp32 rows: the same kernel calls as SDPA per example (the same bits, forward and backward), and the
    row's output, which the output projection reads, is the one copy kept for the backward pass."""
    q, k, v, bounds = packed_row(lengths)
    q, k, v = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    grad = torch.randn(1, sum(lengths), q.shape[1], q.shape[3])
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = cpu_kernels._PackedFlashAttention.apply(q, k, v, bounds, 0.25)
    out.backward(grad)
    mine = [out.detach(), q.grad, k.grad, v.grad]
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q2[:, :, s:e], k2[:, :, s:e], v2[:, :, s:e], is_causal=True, scale=0.25, enable_gqa=True)
        for s, e in bounds], dim=2).transpose(1, 2)
    ref.backward(grad)
    for ours, theirs in zip(mine, [ref.detach(), q2.grad, k2.grad, v2.grad], strict=True):
        assert torch.equal(ours, theirs)
    row_sized = [t for t in saved if t.numel() == out.numel()]
    assert len(row_sized) == 2 and {t.data_ptr() for t in row_sized} == {q.data_ptr(), out.data_ptr()}


def test_fp32_packed_rows_of_a_model_use_the_one_node_attention(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    calls = []
    real_apply = cpu_kernels._PackedFlashAttention.apply
    monkeypatch.setattr(cpu_kernels._PackedFlashAttention, "apply", lambda *a: calls.append(1) or real_apply(*a))
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    with kernels_on(model, None, True):
        model(input_ids=torch.randint(0, 300, (1, 12)), position_ids=positions, use_cache=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # an fp32 model under autocast: the loop as before
            model(input_ids=torch.randint(0, 300, (1, 12)), position_ids=positions, use_cache=False)
    assert len(calls) == model.config.num_hidden_layers


@pytest.mark.parametrize("lengths", [(7, 30, 1, 12), (40,), (1, 1, 1)])
def test_short_attention_matches_each_example_alone(lengths):
    q, k, v, bounds = packed_row(lengths)
    scale = 0.25
    assert cpu_kernels.short_enough(q, bounds)
    out = cpu_kernels._ShortCausalAttention.apply(q, k, v, bounds, scale)
    ref, ref_inputs = per_example_fp64(q, k, v, bounds, scale)
    grad = torch.randn(out.shape)
    out.float().mul(grad).sum().backward()
    ref.mul(grad.double()).sum().backward()
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert rel(out.double(), ref) < 1e-2
    for ours, theirs in zip((q, k, v), ref_inputs, strict=True):
        assert (ours.grad.double() - theirs.grad).norm() <= 2e-2 * theirs.grad.norm()  # 0 for 1-token examples' q
    # an example's gradients come from its own tokens only: the first example's are unchanged by the others
    if len(lengths) > 1:
        first = lengths[0]
        q1, k1, v1 = (t.detach()[:, :, :first].clone().requires_grad_(True) for t in (q, k, v))
        cpu_kernels._ShortCausalAttention.apply(q1, k1, v1, [(0, first)], scale).float().mul(
            grad[:, :first]).sum().backward()
        assert torch.equal(q1.grad, q.grad[:, :, :first]) and torch.equal(k1.grad, k.grad[:, :, :first])


def test_short_attention_is_for_short_bf16_rows_only():
    q, _, _, bounds = packed_row((30, 12))
    assert cpu_kernels.short_enough(q, bounds)
    assert not cpu_kernels.short_enough(q.float(), bounds)  # fp32 rows keep torch's kernel
    long_q, _, _, long_bounds = packed_row((cpu_kernels.SHORT_EXAMPLE_TOKENS + 1,), dim=4)
    assert not cpu_kernels.short_enough(long_q, long_bounds)  # its weights would be kept whole
    many_heads = torch.zeros(1, 64, 4 * 512, 4, dtype=torch.bfloat16)
    assert not cpu_kernels.short_enough(many_heads, [(i * 512, (i + 1) * 512) for i in range(4)])


def test_packed_bf16_attention_uses_the_short_kernel(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).eval()
    calls = []
    real_apply = cpu_kernels._ShortCausalAttention.apply
    monkeypatch.setattr(cpu_kernels._ShortCausalAttention, "apply", lambda *a: calls.append(1) or real_apply(*a))
    torch.manual_seed(1)
    examples = [torch.randint(0, 300, (n,)) for n in (7, 12, 5)]
    ids = torch.cat(examples)[None]
    positions = torch.cat([torch.arange(len(e)) for e in examples])[None]
    with torch.no_grad():
        alone = torch.cat([model.float()(input_ids=e[None]).logits[0] for e in examples])
        model.to(torch.bfloat16)
        with kernels_on(model, None, True):
            packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
    assert len(calls) == model.config.num_hidden_layers  # every layer's attention went through the short kernel
    assert rel(packed.float(), alone) < 2e-2


def test_example_bounds():
    positions = torch.tensor([0, 1, 2, 0, 1, 0, 0, 1, 2, 3])
    assert cpu_kernels.example_bounds(positions) == [(0, 3), (3, 5), (5, 6), (6, 10)]


def llama_norm(width=96, dtype=torch.bfloat16, trainable=False):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    norm = LlamaRMSNorm(width, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.2, 2.0)
    return norm.to(dtype).requires_grad_(trainable)


def norm_grad(norm, x, grad):
    x = x.clone().requires_grad_(True)
    out = norm(x)
    out.backward(grad)
    return out, x.grad


def test_rms_norm_kernel_computes_transformers_norm_with_half_the_saved_memory():
    norm = llama_norm()
    x = (torch.randn(2, 37, 96) * 4).to(torch.bfloat16)
    grad = torch.randn(2, 37, 96).to(torch.bfloat16)
    own_out, own_grad = norm_grad(norm, x, grad)
    saved = []
    with kernels_on(norm, None, True), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        assert "forward" in norm.__dict__
        out, x_grad = norm_grad(norm, x, grad)
    assert "forward" not in norm.__dict__ and "_tunery_eps" not in norm.__dict__
    assert torch.equal(out, own_out)  # the same operations forward: the same bits
    x64 = x.double().requires_grad_(True)
    (norm.weight.double() * x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5)).backward(grad.double())
    assert rel(x_grad.double(), x64.grad) <= rel(own_grad.double(), x64.grad) * 1.1 + 1e-4
    assert rel(x_grad.double(), x64.grad) < 1e-2
    # the bf16 input and one fp32 scale per row, not an fp32 copy of the input
    big = [t for t in saved if t.numel() == x.numel()]
    assert big and all(t.dtype == torch.bfloat16 for t in big)


def test_rms_norm_kernel_on_fp32_keeps_the_input_and_transformers_bits(monkeypatch):
    """fp32 training (a CPU without fast bf16): the same output bits, the gradient to rounding, and the
    saved input (the caller's own tensor, not a copy) left as it was by the backward pass."""
    norm = llama_norm(dtype=torch.float32)
    x = torch.randn(2, 37, 96) * 4
    grad = torch.randn(2, 37, 96)
    own_out, own_grad = norm_grad(norm, x, grad)
    calls, saved = [], []
    real_apply = cpu_kernels._RMSNorm.apply
    leaf = x.clone().requires_grad_(True)
    before = leaf.detach().clone()
    monkeypatch.setattr(cpu_kernels._RMSNorm, "apply", lambda *a: calls.append(1) or real_apply(*a))
    with kernels_on(norm, None, True), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        out = norm(leaf)
        out.backward(grad)
    assert calls == [1]
    assert torch.equal(out, own_out)
    torch.testing.assert_close(leaf.grad, own_grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(leaf.detach(), before)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == leaf.data_ptr()  # the input itself, no fp32 copy


def gemma_like_norm():
    class ShiftedRMSNorm(torch.nn.Module):  # Gemma's norm scales by (1 + weight): not the kernel's formula
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.full((32,), 0.5, dtype=torch.bfloat16), requires_grad=False)
            self.eps = 1e-6

        def forward(self, x):
            xf = x.float()
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return (xf * (1.0 + self.weight.float())).to(x.dtype)

    return ShiftedRMSNorm()


@pytest.mark.parametrize("make", [gemma_like_norm, lambda: llama_norm(dtype=torch.float16),
                                  lambda: llama_norm(trainable=True)],
                         ids=["other-formula", "fp16-weight", "trainable-weight"])
def test_rms_norm_kernel_leaves_other_norms_alone(monkeypatch, make):
    norm = make()
    monkeypatch.setattr(cpu_kernels._RMSNorm, "apply", lambda *a: pytest.fail("kernel used"))
    with kernels_on(norm, None, True):
        assert "forward" not in norm.__dict__
        norm(torch.randn(3, norm.weight.shape[0]).to(norm.weight.dtype))


def test_rms_norm_kernel_passes_fp32_inputs_and_trainable_weights_to_the_module(monkeypatch):
    norm = llama_norm()
    monkeypatch.setattr(cpu_kernels._RMSNorm, "apply", lambda *a: pytest.fail("kernel used"))
    with kernels_on(norm, None, True):
        norm(torch.randn(3, 96))  # fp32 input
        norm.weight.requires_grad_(True)  # unfrozen while the kernels are on
        norm(torch.randn(3, 96).to(torch.bfloat16)).sum().backward()
    assert norm.weight.grad is not None


def test_every_norm_of_a_bf16_lora_model_uses_the_kernel(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).requires_grad_(False)
    calls = []
    real_apply = cpu_kernels._RMSNorm.apply
    monkeypatch.setattr(cpu_kernels._RMSNorm, "apply", lambda *a: calls.append(1) or real_apply(*a))
    ids = torch.randint(0, 300, (1, 9))
    with torch.no_grad():
        own = model(input_ids=ids).logits
        with cpu_kernels.rms_norm_kernel(model, True):
            kernel = model(input_ids=ids).logits
    assert len(calls) == 2 * model.config.num_hidden_layers + 1  # two per decoder layer and the final norm
    assert torch.equal(kernel, own)


def losses(make_config, conversations, name: str, **train) -> list[float]:
    config = make_config(name, train={"max_steps": 6, "batch_size": 4, **train})
    result = tunery.train(config, train_conversations=conversations, quiet=True)
    events = map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
    return [e["loss"] for e in events if e["type"] == "train"]


def test_fp32_training_is_unchanged_by_the_kernels(make_config):
    conversations = make_conversations(24)
    assert losses(make_config, conversations, "auto") == pytest.approx(
        losses(make_config, conversations, "ref", kernels="reference"), rel=1e-5)


def test_bf16_training_stays_on_the_fp32_curve(make_config):
    """bf16 with and without the kernels follows fp32's losses (the tiny model's loss is about 6)."""
    conversations = make_conversations(24)
    fp32 = losses(make_config, conversations, "fp32")
    for kernels in ("auto", "reference"):
        bf16 = losses(make_config, conversations, f"bf16-{kernels}", precision="bf16", kernels=kernels)
        assert bf16 == pytest.approx(fp32, abs=0.02), kernels


def test_a_bf16_cpu_run_fills_its_rows_but_counts_only_real_tokens(make_config, monkeypatch):
    """Rows go to the model at a multiple of FILLER_MULTIPLE tokens; the run's token counts are the examples'.

    Only bf16 runs: oneDNN builds a bf16 GEMM per row count, while fp32 GEMMs (MKL) build nothing."""
    from tunery.training import loop

    seen = []
    real_compute = loop.compute_loss
    monkeypatch.setattr(loop, "compute_loss", lambda model, batch, **kw: seen.append(batch) or real_compute(model, batch, **kw))
    conversations = make_conversations(24)
    tunery.train(make_config("fp32", train={"max_steps": 2, "batch_size": 4}), train_conversations=conversations,
                 quiet=True)
    assert seen and not any(b.filler_tokens for b in seen)
    seen.clear()
    result = tunery.train(make_config("filled", train={"max_steps": 3, "batch_size": 4, "precision": "bf16"}),
                          train_conversations=conversations, quiet=True)
    assert seen and all(b.input_ids.shape[1] % loop.FILLER_MULTIPLE == 0 for b in seen)
    assert any(b.filler_tokens for b in seen)
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "train"]
    assert sum(e["tokens"] for e in steps) == sum(b.num_tokens for b in seen) == sum(
        b.input_ids.shape[1] - b.filler_tokens for b in seen)

