"""Tensor arithmetic against mergekit's own functions: equal bit for bit, not merely close."""

from __future__ import annotations

import random

import pytest
import torch
from mergekit.merge_methods import merge_tensors
from mergekit.merge_methods.slerp import slerp as mergekit_slerp
from mergekit.sparsify import RescaleNorm
from mergekit.sparsify import bernoulli as mergekit_bernoulli
from mergekit.sparsify import magnitude as mergekit_magnitude

from evomerge.merge import methods
from evomerge.merge.methods import (
    APPLY_CHUNK,
    MERGEKIT_SLERP_CHUNK,
    ChunkScratch,
    slerp_coefficients,
    slerp_geometry,
    weighted_pair_into,
)

DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = ["fp32", "bf16"]


def coefficients(t: float, geometry) -> tuple[float, float]:
    """(c0, c1) for one tensor; slerp_coefficients takes a sequence of t (one per stacked row)."""
    (c0,), (c1,) = slerp_coefficients([t], geometry)
    return c0, c1


def engine_slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, scratch: ChunkScratch | None = None) -> torch.Tensor:
    geometry = slerp_geometry(v0, v1)
    c0, c1 = coefficients(t, geometry)
    out = torch.empty_like(v0)
    weighted_pair_into(out, v0, v1, c0, c1, scratch or ChunkScratch())
    return out


def reference_slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """mergekit's kernel on one weight (a batch of one), cast back as mergekit writes it."""
    return mergekit_slerp(torch.tensor([t]), v0.unsqueeze(0), v1.unsqueeze(0))[0].to(v0.dtype)


def pair(shape, dtype, seed, closeness=None):
    generator = torch.Generator().manual_seed(seed)
    v0 = torch.randn(shape, generator=generator)
    v1 = torch.randn(shape, generator=generator)
    if closeness is not None:
        v1 = v0 + closeness * v1
    return v0.to(dtype), v1.to(dtype)


def assert_bitwise(got: torch.Tensor, expected: torch.Tensor, label: str = "") -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape, label
    if not torch.equal(got, expected):
        diff = (got.double() - expected.double()).abs()
        raise AssertionError(
            f"{label}: not bitwise equal to mergekit; max abs diff {diff.max().item():.3g}, {int((diff > 0).sum())}/{diff.numel()} elements differ"
        )


# ----- SLERP --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(64,), (128, 64), (3, 5, 7), (300, 300)], ids=str)
@pytest.mark.parametrize("t", [0.0, 0.13, 0.5, 0.77, 1.0])
def test_slerp_equals_mergekit(shape, dtype, t):
    for seed in range(3):
        v0, v1 = pair(shape, dtype, seed, closeness=[None, 0.5, 0.05][seed])
        expected = reference_slerp(t, v0, v1)
        assert_bitwise(engine_slerp(t, v0, v1), expected, f"seed {seed}")
        via_method = merge_tensors([v0, v1], "slerp", base_index=0, parameters={"t": t})
        assert_bitwise(engine_slerp(t, v0, v1), via_method, f"seed {seed} via merge_tensors")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_slerp_endpoints_return_the_parents(dtype):
    v0, v1 = pair((96, 80), dtype, 5)
    assert not slerp_geometry(v0, v1).linear.item()
    assert torch.equal(engine_slerp(0.0, v0, v1), v0)
    assert torch.equal(engine_slerp(1.0, v0, v1), v1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "make_v1",
    [lambda v0: 2 * v0, lambda v0: -v0, lambda v0: v0 + 1e-3 * torch.ones_like(v0), lambda v0: v0.clone()],
    ids=["scaled", "antipodal", "nearly-equal", "identical"],
)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_colinear_inputs_fall_back_to_lerp(dtype, make_v1, t):
    v0 = torch.randn(64, 48, generator=torch.Generator().manual_seed(1)).to(dtype)
    v1 = make_v1(v0.float()).to(dtype)
    geometry = slerp_geometry(v0, v1)
    assert geometry.linear.item(), "|dot| > 0.9995 must select lerp"
    assert coefficients(t, geometry) == pytest.approx((1 - t, t), abs=1e-7)
    got = engine_slerp(t, v0, v1)
    assert_bitwise(got, reference_slerp(t, v0, v1))
    lerp = ((1 - t) * v0.float() + t * v1.float()).to(dtype)
    torch.testing.assert_close(got, lerp, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-2)


def test_lerp_threshold_is_mergekits():
    v0 = torch.tensor([1.0, 0.0])
    just_above = torch.tensor([1.0, 0.0316])  # cos = 0.99950...
    just_below = torch.tensor([1.0, 0.0317])
    assert slerp_geometry(v0, just_above).linear.item()
    assert not slerp_geometry(v0, just_below).linear.item()
    for v1 in (just_above, just_below):
        assert_bitwise(engine_slerp(0.4, v0, v1), reference_slerp(0.4, v0, v1))


def test_slerp_angle_is_the_angle_between_the_flattened_tensors():
    v0, v1 = pair((40, 30), torch.float32, 2)
    geometry = slerp_geometry(v0, v1)
    cosine = torch.nn.functional.cosine_similarity(v0.reshape(1, -1), v1.reshape(1, -1)).item()
    assert geometry.theta.item() == pytest.approx(torch.acos(torch.tensor(cosine)).item(), abs=1e-5)
    assert geometry.theta.shape == (1, 1) and geometry.theta.dtype == torch.float32
    assert geometry.linear.dtype == torch.bool


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("t", [0.3, 0.85])
def test_slerp_on_tensors_larger_than_both_chunks(dtype, t):
    numel = 1_100_000
    assert numel > MERGEKIT_SLERP_CHUNK > APPLY_CHUNK
    v0, v1 = pair((1100, 1000), dtype, 9, closeness=0.7)
    assert_bitwise(engine_slerp(t, v0, v1), reference_slerp(t, v0, v1), "1.1M elements")
    odd = numel + 4097  # a last chunk of a different length in both chunkings
    a, b = pair((odd,), dtype, 10)
    assert_bitwise(engine_slerp(t, a, b), reference_slerp(t, a, b), "odd length")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_slerp_degenerate_tensors(dtype):
    zero = torch.zeros(32, 16, dtype=dtype)
    other = torch.randn(32, 16, generator=torch.Generator().manual_seed(4)).to(dtype)
    for v0, v1 in [(zero, other), (other, zero), (zero, zero)]:
        assert_bitwise(engine_slerp(0.25, v0, v1), reference_slerp(0.25, v0, v1), "zero norm")
    empty = torch.zeros(0, 16, dtype=dtype)
    assert engine_slerp(0.25, empty, empty).shape == (0, 16)
    scalar_like = torch.tensor([3.0], dtype=dtype)
    assert_bitwise(engine_slerp(0.6, scalar_like, -scalar_like), reference_slerp(0.6, scalar_like, -scalar_like), "one element")


def test_stacked_geometry_gives_each_tensors_own_coefficients():
    """A trial computes all tensors' coefficients at once from the stacked per-tensor geometry."""
    pairs = [pair((30, 20), torch.float32, seed, closeness=c) for seed, c in enumerate([None, 0.5, 1e-4])]
    geometries = [slerp_geometry(v0, v1) for v0, v1 in pairs]
    ts = [0.1, 0.5, 0.9]
    c0s, c1s = slerp_coefficients(ts, methods.stack_geometries(geometries))
    assert len(c0s) == len(c1s) == 3
    for (v0, v1), t, geometry, c0, c1 in zip(pairs, ts, geometries, c0s, c1s):
        assert (c0, c1) == coefficients(t, geometry)
        out = torch.empty_like(v0)
        weighted_pair_into(out, v0, v1, c0, c1, ChunkScratch())
        assert_bitwise(out, reference_slerp(t, v0, v1))
    columns = methods.slerp_coefficient_columns(ts, methods.stack_geometries(geometries))
    for column, listed in zip(columns, (c0s, c1s)):
        assert column.dtype == torch.float32 and column.shape == (3,) and column.is_contiguous()
        assert column.tolist() == listed


def test_weighted_pair_into_writes_in_place_through_a_view():
    """The engine writes straight into the resident model's parameters: `out` may be any view."""
    v0, v1 = pair((APPLY_CHUNK + 123,), torch.bfloat16, 3)
    storage = torch.full((APPLY_CHUNK + 200,), 7.0, dtype=torch.bfloat16)
    out = storage[50 : 50 + APPLY_CHUNK + 123]
    weighted_pair_into(out, v0, v1, 0.25, 0.75, ChunkScratch())
    expected = (0.25 * v0.float() + 0.75 * v1.float()).to(torch.bfloat16)
    assert torch.equal(out, expected)
    assert torch.all(storage[:50] == 7) and torch.all(storage[50 + APPLY_CHUNK + 123 :] == 7)


def test_one_scratch_serves_many_tensors_and_dtypes():
    scratch = ChunkScratch()
    for seed, (shape, dtype) in enumerate([((70000,), torch.float32), ((10, 10), torch.bfloat16), ((5,), torch.float32)]):
        v0, v1 = pair(shape, dtype, seed, closeness=0.4)
        assert_bitwise(engine_slerp(0.42, v0, v1, scratch), reference_slerp(0.42, v0, v1), str(shape))


def test_scratch_stays_one_chunk_however_large_the_tensor():
    """The scratch buffers never grow past one chunk: a large tensor is written chunk by chunk."""
    assert methods.apply_chunk(torch.device("cpu")) == APPLY_CHUNK
    assert methods.apply_chunk(torch.device("cuda")) == methods.GPU_APPLY_CHUNK
    scratch = ChunkScratch()
    v0, v1 = pair((3 * APPLY_CHUNK + 5,), torch.bfloat16, 11, closeness=0.4)
    assert_bitwise(engine_slerp(0.3, v0, v1, scratch), reference_slerp(0.3, v0, v1), "three chunks and a bit")
    ((first, second),) = scratch._buffers.values()
    assert first.numel() == second.numel() == APPLY_CHUNK


# ----- linear -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.3, 1.2], [1.0, -0.25, 0.6], [0.2, 0.9, 0.123456]], ids=lambda w: f"{len(w)}-{w[1]}")
def test_linear_equals_mergekit(dtype, normalize, weights):
    generator = torch.Generator().manual_seed(len(weights))
    for shape in [(64, 48), (48,), (2, 3, 4)]:
        tensors = [torch.randn(shape, generator=generator).to(dtype) for _ in weights]
        expected = merge_tensors(tensors, "linear", parameters={"weight": weights, "normalize": normalize})
        assert_bitwise(methods.linear(tensors, weights, normalize=normalize), expected, str(shape))


def test_linear_with_one_weight_returns_that_model():
    tensors = [torch.randn(8, 8), torch.randn(8, 8)]
    assert torch.equal(methods.linear(tensors, [0.0, 2.0], normalize=True), tensors[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_written_into_out_is_bitwise_the_returned_tensor(dtype, normalize):
    """The engine writes straight into the resident model; `out` must not change a bit."""
    generator = torch.Generator().manual_seed(21)
    tensors = [torch.randn(40, 24, generator=generator).to(dtype) for _ in range(3)]
    weights = [0.3, 1.2, -0.25]
    out = torch.full((40, 24), 7.0, dtype=dtype)
    assert methods.linear(tensors, weights, normalize=normalize, out=out) is out
    assert_bitwise(out, methods.linear(tensors, weights, normalize=normalize))


# ----- task arithmetic, TIES, DARE ---------------------------------------------------------


FAST_TASK_ARITHMETIC = ("task_arithmetic", "ties", "dare_ties", "dare_linear")


def test_fast_task_arithmetic_methods_are_read_from_mergekits_registry():
    fast = methods.fast_task_arithmetic_methods()
    assert sorted(fast) == sorted(FAST_TASK_ARITHMETIC)
    assert fast["ties"].sparsification_method == "magnitude" and fast["ties"].consensus_method == "sum"
    assert fast["dare_linear"].sparsification_method == "random" and fast["dare_linear"].consensus_method is None
    assert fast["task_arithmetic"].sparsification_method is None
    from evomerge.merge.fast import FAST_METHODS

    assert set(fast) <= set(FAST_METHODS), "a task arithmetic method the engine computes has no fast path entry"


def task_arithmetic_cases():
    rng = random.Random(1234)
    cases = []
    for method in FAST_TASK_ARITHMETIC:
        for dtype, dtype_id in zip(DTYPES, DTYPE_IDS):
            for variant in range(3):
                children = 2 if variant < 2 else 3
                parameters = {
                    "weight": [round(rng.uniform(-0.3, 1.2), 3) for _ in range(children)],
                    "density": [rng.choice([1.0, round(rng.uniform(0.05, 0.95), 3)]) for _ in range(children)],
                    "normalize": rng.random() < 0.5,
                    "rescale": rng.random() < 0.5,
                    "lambda": rng.choice([1.0, round(rng.uniform(0.5, 1.5), 3)]),
                    "int8_mask": rng.random() < 0.5,
                }
                cases.append(pytest.param(method, dtype, parameters, id=f"{method}-{dtype_id}-{variant}"))
    return cases


def run_task_arithmetic(method, base, children, parameters, orders=None, out=None):
    return methods.merge_task_arithmetic(method, base, [child - base for child in children], parameters, orders=orders, out=out)


@pytest.mark.parametrize("method, dtype, parameters", task_arithmetic_cases())
def test_task_arithmetic_family_equals_mergekit(method, dtype, parameters):
    generator = torch.Generator().manual_seed(77)
    for shape in [(96, 64), (64,), (3, 20, 7)]:
        base = torch.randn(shape, generator=generator).to(dtype)
        children = [(base.float() + 0.3 * torch.randn(shape, generator=generator)).to(dtype) for _ in parameters["weight"]]
        torch.manual_seed(2024)
        expected = merge_tensors([base, *children], method, base_index=0, parameters=parameters)
        torch.manual_seed(2024)
        got = run_task_arithmetic(method, base, children, parameters)
        assert_bitwise(got, expected, f"{method} {shape}")
        torch.manual_seed(2024)
        out = torch.full_like(base, 7.0)
        assert run_task_arithmetic(method, base, children, parameters, out=out) is out
        assert_bitwise(out, expected, f"{method} {shape} written into out")
        if method == "ties":
            orders = [methods.magnitude_order(child - base) for child in children]
            assert_bitwise(run_task_arithmetic(method, base, children, parameters, orders), expected, f"{method} {shape} cached order")


def test_dare_draws_from_the_global_generator():
    base = torch.randn(64, 64)
    children = [base + torch.randn(64, 64), base + torch.randn(64, 64)]
    parameters = dict(weight=[0.5, 0.5], density=[0.3, 0.3], normalize=False, rescale=True, int8_mask=False)
    parameters["lambda"] = 1.0
    torch.manual_seed(1)
    first = run_task_arithmetic("dare_ties", base, children, parameters)
    torch.manual_seed(1)
    again = run_task_arithmetic("dare_ties", base, children, parameters)
    torch.manual_seed(2)
    other = run_task_arithmetic("dare_ties", base, children, parameters)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("density", [0.0, 1e-4, 0.1, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("rescale", [False, True])
def test_magnitude_sparsification_equals_mergekit(dtype, density, rescale):
    generator = torch.Generator().manual_seed(3)
    norm = RescaleNorm.l1 if rescale else None
    for delta in [
        torch.randn(80, 50, generator=generator).to(dtype),
        torch.randint(-3, 4, (80, 50), generator=generator).to(dtype),  # many equal magnitudes
    ]:
        expected = mergekit_magnitude(delta, density, norm)
        assert_bitwise(methods.sparsify_magnitude(delta, density, rescale), expected, "no order")
        order = methods.magnitude_order(delta)
        assert_bitwise(methods.sparsify_magnitude(delta, density, rescale, order), expected, "cached order")
    kept_by_density = {0.0: 0, 1e-4: 1, 0.1: 400, 0.5: 2000, 0.999: 3996, 1.0: 4000}  # of 80 × 50
    kept = int((methods.sparsify_magnitude(delta.float() + 10, density, False) != 0).sum())
    assert kept == kept_by_density[density]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("density", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("rescale", [False, True])
def test_random_sparsification_equals_mergekit(dtype, density, rescale):
    delta = torch.randn(70, 40, generator=torch.Generator().manual_seed(8)).to(dtype)
    torch.manual_seed(99)
    expected = mergekit_bernoulli(delta, density, RescaleNorm.l1 if rescale else None)
    torch.manual_seed(99)
    assert_bitwise(methods.sparsify_random(delta, density, rescale), expected)


def test_magnitude_order_is_by_decreasing_magnitude():
    delta = torch.tensor([[0.1, -3.0], [2.0, -0.5]])
    order = methods.magnitude_order(delta)
    assert order.tolist() == [1, 2, 3, 0]
    assert order.dtype == torch.int32
