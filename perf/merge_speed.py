"""How fast is one in-memory SLERP-gradient trial? Kernel, torch path, mergekit and a copy, in one run.

Builds two Llama-shaped parents (random init, written to a temporary folder), then times the same
SLERP-gradient recipe (the paper's schedule) merged
  (a) by `Merger.apply` with the fused C kernel (parents resident, angles precomputed, in place),
  (b) by `Merger.apply` on its torch path (what runs where the kernel cannot: no compiler, not
      Linux, a GPU), the same Merger settings with the kernel switched off,
  (c) by mergekit's in-memory `merge_state_dicts` on the same resident state dicts,
  (d) by a bare torch pass that reads both parents and writes one model (`torch.add(a, b, out=o)`),
and prints the median of `--repeats` runs of each (the same number for all four); the last line is
one JSON object with the figures and ratios. (a) and (b) must write the same bits.

    python perf/merge_speed.py [--shape llama-100m|llama-8b] [--device cpu|cuda] [--dtype float32|bfloat16] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from evomerge.merge import fused
from evomerge.merge.merger import Merger, resolve_device
from evomerge.recipe import paper_recipe
from evomerge.toy.tiny import make_checkpoint, tiny_config

SHAPES = {
    # ~110M parameters: 16k vocabulary, 12 layers of width 768.
    "llama-100m": dict(vocab_size=16000, hidden_size=768, intermediate_size=2048, num_layers=12, num_heads=12, num_kv_heads=4),
    # Llama 3.1 8B's shapes; needs a GPU with ~60 GB (parents and the resident model in bf16).
    "llama-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8),
}


def timed(fn, repeats: int, sync) -> list[float]:
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-100m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each of the three (medians are reported)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.set_grad_enabled(False)

    with tempfile.TemporaryDirectory() as tmp:
        config = tiny_config("llama", tie_word_embeddings=False, **SHAPES[args.shape])
        instruct, child = Path(tmp) / "instruct", Path(tmp) / "child"
        state = make_checkpoint(instruct, config, seed=0, dtype=dtype)
        make_checkpoint(child, config, seed=1, dtype=dtype, from_state=state, noise=0.05)
        del state
        recipe = paper_recipe(str(instruct), str(child), args.dtype)
        merger = Merger.load([instruct, child], device=device, dtype=dtype)
        n_params = merger.infos[0].parameter_count
        print(f"parents: 2 x {n_params / 1e6:.1f}M parameters, {args.dtype}, on {device}; medians of {args.repeats} runs")

        kernel_used = device.type == "cpu" and fused.load_kernel() is not None
        (first_s,) = timed(lambda: merger.apply(recipe), 1, sync)  # the first call also computes the angles
        evomerge_times = timed(lambda: merger.apply(recipe), args.repeats, sync)
        with_kernel = {name: tensor.clone() for name, tensor in merger.merged_state_dict().items()}

        # (b) The torch path: a second Merger that is never offered the kernel.
        plan_weighted_pairs = fused.plan_weighted_pairs
        fused.plan_weighted_pairs = lambda *tensors: None
        try:
            torch_merger = Merger([instruct, child], device=device, dtype=dtype)
            torch_merger.apply(recipe)
            torch_times = timed(lambda: torch_merger.apply(recipe), args.repeats, sync)
        finally:
            fused.plan_weighted_pairs = plan_weighted_pairs
        torch_state = torch_merger.merged_state_dict()
        paths_equal = all(torch.equal(with_kernel[name], torch_state[name]) for name in with_kernel)
        torch_merger = torch_state = with_kernel = None  # frees their memory before mergekit runs

        from mergekit.merge_methods import PerGroupValues, merge_state_dicts

        a_sd = merger.parents[str(instruct)].tensors
        b_sd = merger.parents[str(child)].tensors
        t_by_name = {plan.name: plan.shared["t"] for plan in merger.plan(recipe)}
        t_values = PerGroupValues([t_by_name[name] for name in a_sd])  # in the state dict's order
        mergekit_result = {}

        def run_mergekit() -> None:
            mergekit_result.update(merge_state_dicts({"a": a_sd, "b": b_sd}, "slerp", base="a", parameters={"t": t_values}))

        mergekit_times = timed(run_mergekit, args.repeats, sync)
        merged = merger.merged_state_dict()
        max_diff = max((merged[k].float() - mergekit_result[k].float()).abs().max().item() for k in merged)

        targets = merger.merged_state_dict()

        def run_copy() -> None:
            for name, target in targets.items():
                torch.add(a_sd[name], b_sd[name], out=target)

        copy_times = timed(run_copy, args.repeats, sync)

    evomerge_s = statistics.median(evomerge_times)
    torch_path_s = statistics.median(torch_times)
    mergekit_s = statistics.median(mergekit_times)
    copy_s = statistics.median(copy_times)
    kernel_note = "fused C kernel" if kernel_used else "no kernel here: the torch path twice"
    print(f"evomerge Merger.apply      median {evomerge_s:.3f} s  ({kernel_note}; first call, with angles: {first_s:.3f} s)")
    print(f"evomerge torch path        median {torch_path_s:.3f} s  (kernel {torch_path_s / evomerge_s:.2f}x faster; same bits: {paths_equal})")
    print(f"mergekit merge_state_dicts median {mergekit_s:.3f} s")
    print(f"bare torch read-2-write-1  median {copy_s:.3f} s")
    print(f"max |evomerge - mergekit| = {max_diff:.3g}")
    print(
        json.dumps(
            {
                "shape": args.shape,
                "device": str(device),
                "dtype": args.dtype,
                "params_per_parent": n_params,
                "repeats": args.repeats,
                "kernel_used": kernel_used,
                "evomerge_s": round(evomerge_s, 4),
                "torch_path_s": round(torch_path_s, 4),
                "kernel_speedup_vs_torch_path": round(torch_path_s / evomerge_s, 2),
                "kernel_and_torch_path_equal": paths_equal,
                "evomerge_first_call_s": round(first_s, 4),
                "mergekit_s": round(mergekit_s, 4),
                "copy_s": round(copy_s, 4),
                "speedup_vs_mergekit": round(mergekit_s / evomerge_s, 2),
                "torch_path_speedup_vs_mergekit": round(mergekit_s / torch_path_s, 2),
                "ratio_vs_copy": round(evomerge_s / copy_s, 3),
                "max_abs_diff_vs_mergekit": max_diff,
            }
        )
    )


if __name__ == "__main__":
    main()
