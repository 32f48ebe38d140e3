"""One record shape for every benchmark result: results/{experiment}/eval/{method}/{benchmark}.json."""

from __future__ import annotations

from typing import Any

from montessori.generate import Generator, Sampling

# The judged benchmarks' metrics, headline first (the paper leads with AlpacaEval's length-controlled win rate).
JUDGED_METRICS = {
    "alpaca_eval": ("lc_win_rate", "win_rate", "standard_error", "lc_standard_error"),
    "mt_bench": ("score", "score_turn1", "score_turn2"),
}


def eval_record(method: str, result: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """The common fields (benchmark, method, headline score, named scores, items, judge, model, source, limit)
    first, then everything the benchmark reported under `details`."""
    benchmark = result["benchmark"]
    if benchmark in JUDGED_METRICS:
        metrics = JUDGED_METRICS[benchmark]
        scores = {m: result.get(m) for m in metrics}
        score = scores[metrics[0]]
        # AlpacaEval scores one or more subsets (heldout, all); the headline is the first one's.
        for subset, numbers in result.get("subsets", {}).items():
            scores.update({f"{subset}_{m}": numbers.get(m) for m in metrics})
    else:
        metric = result["metric"].split(",")[0]
        score = result["score"]
        scores = {metric: score, f"{metric}_stderr": result.get("stderr")}
    return {
        "benchmark": benchmark,
        "method": method,
        "score": score,
        "scores": scores,
        "n_items": result["n_items"],
        "n_invalid": result.get("n_invalid", 0),
        "judge": result.get("judge"),
        "model": result["model"],
        "source": result.get("source", "offline"),
        "subset": result.get("subset"),
        "limit": limit,
        "details": {k: v for k, v in result.items() if k not in ("benchmark", "model", "judge", "n_items")},
    }


def answer_alpaca_eval(
    generator: Generator, method: str, instructions: list[dict[str, Any]], max_tokens: int
) -> list[dict[str, Any]]:
    """The model's greedy answers to AlpacaEval items ({item_id, dataset, instruction}; `selected_items` says which),
    in alpaca-eval's model_outputs format plus each item's id."""
    answers = generator.generate(
        [[{"role": "user", "content": item["instruction"]}] for item in instructions],
        Sampling(temperature=0.0, max_tokens=max_tokens),
        desc="AlpacaEval answers",
    )
    return [
        {
            "item_id": item["item_id"],
            "dataset": item.get("dataset"),
            "instruction": item["instruction"],
            "output": sample.text,
            "generator": method,
        }
        for item, (sample,) in zip(instructions, answers)
    ]
