"""The fused SLERP kernel must give exactly what the torch path (and so mergekit) gives."""

import pytest
import torch

from evomerge.merge import fused, methods


def torch_path(a, b, c0, c1):
    out = torch.empty_like(a)
    methods.weighted_pair_into(out, a, b, c0, c1, methods.ChunkScratch())
    return out


@pytest.mark.skipif(fused.load_kernel() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_is_bitwise_the_torch_path(dtype):
    generator = torch.Generator().manual_seed(0)
    # Sizes straddle the kernel's threading threshold and split points between threads.
    sizes = [1, 7, 4096, 300_001, 1 << 18, 65_537]
    firsts = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
    seconds = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
    firsts[2][:4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])
    coefficients = [(0.3, 0.7), (1.0, 0.0), (0.61, 0.47), (-0.2, 1.3), (0.5, 0.5), (1e-3, 0.999)]
    outs = [torch.empty_like(a) for a in firsts]
    assert fused.weighted_pairs(outs, firsts, seconds, [c[0] for c in coefficients], [c[1] for c in coefficients])
    for out, a, b, (c0, c1) in zip(outs, firsts, seconds, coefficients):
        expected = torch_path(a, b, c0, c1)
        assert torch.equal(out.isnan(), expected.isnan())
        assert torch.equal(out.nan_to_num(), expected.nan_to_num())


def test_tensors_the_kernel_cannot_take_are_left_to_torch():
    a = torch.randn(8, 8)
    half = a.half()
    assert not fused.weighted_pairs([torch.empty_like(half)], [half], [half], [0.5], [0.5])
    strided = a.t()
    out = torch.zeros(8, 8)
    assert not fused.weighted_pairs([out], [strided], [strided], [0.5], [0.5])
    assert torch.equal(out, torch.zeros(8, 8)), "a refused call writes nothing"


@pytest.mark.skipif(fused.load_kernel() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_planned_call_is_reused_with_new_coefficients(dtype):
    """The engine builds the kernel's arguments once per parent pair; each trial passes only
    float32 coefficient vectors, and each call equals the torch path for its coefficients."""
    generator = torch.Generator().manual_seed(1)
    sizes = [5, 70_000, 300_001]
    firsts = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
    seconds = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
    outs = [torch.empty_like(a) for a in firsts]
    pairs = fused.plan_weighted_pairs(outs, firsts, seconds)
    assert pairs is not None and pairs.count == 3
    for c0, c1 in [([0.3, 0.61, -0.2], [0.7, 0.47, 1.3]), ([1.0, 0.0, 0.5], [0.0, 1.0, 0.5])]:
        pairs(torch.tensor(c0, dtype=torch.float32), torch.tensor(c1, dtype=torch.float32))
        for out, a, b, x, y in zip(outs, firsts, seconds, c0, c1):
            assert torch.equal(out, torch_path(a, b, float(torch.tensor(x)), float(torch.tensor(y))))
    with pytest.raises(ValueError, match="float32"):
        pairs(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected 3 coefficients, got 2"):
        pairs(torch.zeros(2), torch.zeros(2))


def test_a_plan_refuses_what_the_kernel_cannot_take():
    a = torch.randn(8, 8)
    assert fused.plan_weighted_pairs([a.half()], [a.half()], [a.half()]) is None
    assert fused.plan_weighted_pairs([torch.empty(8, 8)], [a.t()], [a.t()]) is None
    assert fused.plan_weighted_pairs([torch.empty(8, 8)], [a], [a.bfloat16()]) is None
