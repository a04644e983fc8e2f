"""Trials per second of `--population K` against one at a time (K = 1), on one pair of parents.

The same search is run once per K, in one process, with one `TrialRunner` (the parents loaded
and scored alone once, outside the timing): random sampler (the same recipes in the same order
for every K), no pruning, every trial scored on the search items. The timing covers
`optimise` (ask, merge, score, tell, storage writes). The per-item results of every recipe are
compared with K = 1's (`same_scores`). The last line is one JSON object.

    python perf/population.py [--parents A,B] [--benchmark PATH] [--trials 16] [--populations 1,4,8]
        [--protocol paper|loglik] [--device cpu]

Defaults: the toy's xs pair (results/toy/xs/instruct, instruct-CPT-SFT) and its domain benchmark.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (first: it sets the offline environment)
import optuna
from optuna.trial import TrialState

from evomerge.search.objective import TrialRunner
from evomerge.search.run import optimise, prepare
from evomerge.search.study import SearchSettings, trial_attr

TOY = Path("results/toy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parents", default=f"{TOY}/xs/instruct,{TOY}/xs/instruct-CPT-SFT")
    parser.add_argument("--benchmark", default=f"{TOY}/world/domain_benchmark.jsonl")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--populations", default="1,4,8")
    parser.add_argument("--protocol", default="paper")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--forward-probe", action="store_true", help="only time K models' forward pass: a loop against torch.func.vmap")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parents = args.parents.split(",")
    if args.forward_probe:
        print(json.dumps(forward_probe(parents[0], [int(k) for k in args.populations.split(",")], args.batch_size)))
        return
    populations = [int(k) for k in args.populations.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        runner, parent_scores, results, reference = None, None, {}, None
        for k in populations:
            settings = SearchSettings(
                parents=parents,
                benchmarks=[args.benchmark],
                base=parents[0],
                sampler="random",
                pruner="none",
                fidelities=[1.0],
                holdout=0.2,
                protocol=args.protocol,
                batch_size=args.batch_size,
                device=args.device,
                trials=args.trials,
                seed=0,
                study=f"population-{k}",
                storage=f"sqlite:///{tmp}/population-{k}.db",
                population=k,
            )
            prepared = prepare(settings)
            if runner is None:  # the parents loaded and scored alone once, for every K
                runner = TrialRunner.load(settings, prepared.infos, prepared.space)
                parent_scores = runner.compute_parent_scores()
            runner.settings = settings
            start = time.perf_counter()
            study, _ = optimise(prepared, runner=runner, parent_scores=lambda scores=parent_scores: scores)
            seconds = time.perf_counter() - start
            complete = study.get_trials(states=(TrialState.COMPLETE,))
            per_item = {t.user_attrs["recipe_key"]: trial_attr(t, "correct") for t in complete}
            if reference is None:
                reference = per_item
            results[k] = {
                "trials": len(complete),
                "seconds": round(seconds, 2),
                "trials_per_s": round(len(complete) / seconds, 3),
                "same_scores": per_item == reference,  # the same recipes, with the same per-item results
            }
            print(f"K={k}: {len(complete)} trials in {seconds:.1f} s, {len(complete) / seconds:.3f} trials/s", flush=True)
    base = results[populations[0]]["trials_per_s"]
    for k in populations:
        results[k]["speedup"] = round(results[k]["trials_per_s"] / base, 2)
    print(json.dumps({"parents": parents, "benchmark": args.benchmark, "protocol": args.protocol, "device": args.device, "population": results}))


def forward_probe(parent: str, populations: list[int], batch_size: int, length: int = 120, repeats: int = 5) -> dict:
    """One batch of `batch_size` rows of `length` random tokens through K perturbed copies of
    `parent` (no cache, last position's logits, as a loglik batch): the K models one after the other
    against one `torch.func.vmap` over their stacked weights; the largest logit difference between them."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(parent).eval()
    ids = torch.randint(3, min(500, base.config.vocab_size), (batch_size, length))
    out = {}
    for k in populations:
        out[k] = probe_one(base, k, ids, repeats)
        print(f"K={k}: {out[k]}", flush=True)
    return {"forward_probe": out, "batch": [batch_size, length]}


def probe_one(base, k: int, ids, repeats: int) -> dict:
    """`forward_probe` for one K."""
    import copy

    import torch
    from torch.func import functional_call, stack_module_state, vmap

    models = [copy.deepcopy(base) for _ in range(k)]
    with torch.no_grad():
        for index, model in enumerate(models):
            for parameter in model.parameters():
                parameter.add_(0.01 * index * torch.randn_like(parameter))
    params, buffers = stack_module_state(models)
    batched = vmap(lambda p, b, x: functional_call(base, (p, b), (x,), {"logits_to_keep": 1}).logits, in_dims=(0, 0, None))

    def loop():
        return torch.stack([model(input_ids=ids, logits_to_keep=1).logits for model in models])

    def stacked():
        return batched(params, buffers, ids)

    with torch.inference_mode():
        difference = (loop() - stacked()).abs().max().item()
        times = {}
        for name, run in (("loop_s", loop), ("vmap_s", stacked)):
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            times[name] = round((time.perf_counter() - start) / repeats, 4)
    return {**times, "vmap_speedup": round(times["loop_s"] / times["vmap_s"], 2), "max_logit_difference": difference}


if __name__ == "__main__":
    main()
