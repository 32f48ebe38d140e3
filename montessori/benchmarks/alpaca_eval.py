"""AlpacaEval 2 offline: pairwise preferences from our judge, win rate and length-controlled win rate.

Whose is what:
- the alpaca-eval package (0.6.6) does the annotation and the metrics: `PairwiseAnnotator.annotate_head2head`
  pairs the outputs, swaps their order per instruction with its seeded coin, ties identical outputs (1.5) and
  fills the prompt; `utils.prompt_to_chatml` turns the prompt into chat messages; `completion_parsers.
  logprob_parser` reads P("m") / (P("m") + P("M")); `metrics.get_winrate` and `glm_winrate.
  get_length_controlled_winrate` compute the numbers.
- vendored from the package's repository (data/alpaca_eval/, see SOURCE.txt): the AlpacaEval 2.0 annotator
  prompt, the 805 instructions and the gpt4_1106_preview reference outputs, which the wheel does not ship.
- ours: the annotator config (annotators/montessori_weighted_alpaca_eval), the completion function that sends
  the package's prompts to our cached, retried judge, the text fallback for judges without logprobs, and the
  GLM features when the hub file the length control needs (df_gamed.csv) is not on disk.

Preferences follow the package: 1 = the reference output (output_1) is better, 2 = the model's, in between a
weighted preference; None = the judge's answer could not be parsed (counted in n_invalid, left out of the rates).
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd

from montessori.benchmarks import alpaca_eval_subsets as subsets
from montessori.benchmarks.offline_data import DATA_DIR
from montessori.io import DataError, file_provenance, read_records
from montessori.judges import Judge, Judgment

ALPACA_EVAL_DIR = DATA_DIR / "alpaca_eval"
INSTRUCTIONS_FILE = ALPACA_EVAL_DIR / "alpaca_eval_instructions.json"
GPT4_REFERENCE_FILE = ALPACA_EVAL_DIR / "gpt4_1106_preview_model_outputs.json"
PROMPT_FILE = ALPACA_EVAL_DIR / "alpaca_eval_clf.txt"
# tatsu-lab/alpaca_eval's df_gamed.csv (hub dataset); not vendored yet. Where it exists, the length control is
# AlpacaEval 2's own `length_controlled_v1`.
GAMED_FILE = ALPACA_EVAL_DIR / "df_gamed.csv"
ANNOTATOR_CONFIG = Path(__file__).resolve().parent / "annotators" / "montessori_weighted_alpaca_eval" / "configs.yaml"

# The package's GLMs, by what is on disk: v1 needs df_gamed.csv, minimal needs nothing beyond the annotations.
LC_GLM_FULL = "length_controlled_v1"
LC_GLM_OFFLINE = "length_controlled_minimal"

OUTPUT_FIELDS = ("instruction", "output", "generator")


def load_instructions() -> list[dict[str, Any]]:
    """The 805 AlpacaEval instructions as {dataset, instruction}, in benchmark order."""
    return read_records(INSTRUCTIONS_FILE, required=("instruction",))


def selected_items(reference_instructions: list[str], subset: str | list[str], limit: int | None, seed: int):
    """({subset: item positions}, the items every subset needs answered) — montessori.benchmarks.
    alpaca_eval_subsets says which items each subset holds."""
    if limit is not None and limit < 1:
        raise ValueError(f"config key 'eval.limit.alpaca_eval' must be >= 1 (or null for all items), got {limit}")
    records = load_instructions()
    chosen = subsets.select([r["instruction"] for r in records], reference_instructions, subset, limit, seed)
    return chosen, subsets.items(records, subsets.union(chosen))


def load_outputs(path: str | Path) -> list[dict[str, Any]]:
    """Model outputs in AlpacaEval's format: a JSON list (or JSON lines) of {instruction, output, generator}."""
    return read_records(path, required=OUTPUT_FIELDS)


def _aligned(outputs: Sequence[Mapping[str, Any]], instructions: list[dict[str, Any]], what: str) -> list[dict]:
    """`outputs` reordered to `instructions`; every instruction needs an output, and one generator made them all."""
    by_instruction: dict[str, Mapping[str, Any]] = {}
    for index, record in enumerate(outputs):
        for key in OUTPUT_FIELDS:
            if not isinstance(record.get(key), str):
                raise DataError(f"{what}[{index}]: missing string field {key!r} (has: {', '.join(sorted(record))})")
        by_instruction[record["instruction"]] = record
    missing = [i["instruction"] for i in instructions if i["instruction"] not in by_instruction]
    if missing:
        raise DataError(
            f"{what}: no output for {len(missing)} of the {len(instructions)} AlpacaEval instructions asked for,"
            f" e.g. {missing[0][:80]!r}"
        )
    aligned = [{key: by_instruction[i["instruction"]][key] for key in OUTPUT_FIELDS} for i in instructions]
    generators = sorted({r["generator"] for r in aligned})
    if len(generators) != 1:
        raise DataError(f"{what}: the outputs come from several generators ({', '.join(generators)}); expected one")
    return aligned


def _as_openai_choice(judgment: Judgment) -> dict[str, Any]:
    """A judgment in the shape of an OpenAI chat choice, which is what the package's logprob_parser reads."""
    choice: dict[str, Any] = {"text": judgment.text}
    if judgment.top_logprobs:
        choice["logprobs"] = {
            "content": [
                {
                    "token": step[0][0],
                    "logprob": step[0][1],
                    "top_logprobs": [{"token": token, "logprob": logprob} for token, logprob in step],
                }
                for step in judgment.top_logprobs
            ]
        }
    return choice


class JudgeCompletions:
    """An alpaca-eval `fn_completions` answering the annotator's prompts with our judge. It remembers each
    prompt's judgment, because the package drops the raw answer of a judgment it cannot parse, and those are
    the answers worth reading."""

    def __init__(self, judge: Judge):
        self.judge = judge
        self.judgments: dict[str, Judgment] = {}

    def __call__(self, prompts: Sequence[str], max_tokens: int, top_logprobs: int) -> dict[str, list]:
        from alpaca_eval.utils import prompt_to_chatml

        # Stripped before conversion, as the package's own openai_completions does.
        prompts = [prompt.strip() for prompt in prompts]
        start = time.monotonic()
        judgments = self.judge.judge_many(
            [prompt_to_chatml(p) for p in prompts], max_tokens=max_tokens, top_logprobs=top_logprobs, desc="alpaca_eval"
        )
        seconds = (time.monotonic() - start) / max(len(prompts), 1)
        self.judgments.update(zip(prompts, judgments))
        return {
            "completions": [j.text for j in judgments],
            "completions_all": [_as_openai_choice(j) for j in judgments],
            # Judges have no price list; NaN is the package's own "unknown price".
            "price_per_example": [math.nan] * len(prompts),
            "time_per_example": [seconds] * len(prompts),
        }

    def find(self, template: str, instruction: str, output_1: str, output_2: str) -> tuple[Judgment, bool] | None:
        """The judgment of this pair and whether the package showed the outputs swapped; None if not judged."""
        from alpaca_eval.utils import make_prompts

        for swapped, (first, second) in ((False, (output_1, output_2)), (True, (output_2, output_1))):
            row = pd.DataFrame([{"instruction": instruction, "output_1": first, "output_2": second}])
            prompt = make_prompts(row, template)[0][0].strip()
            if prompt in self.judgments:
                return self.judgments[prompt], swapped
        return None


def read_preference(completion: Any, **parser_kwargs: Any) -> tuple[float, str]:
    """(preference, source) of one judge completion: source "logprobs" when the package's logprob_parser finds
    "m" or "M" among the first token's top logprobs, else "text" when the answer itself is one of those tokens,
    else "unparsed" with preference NaN."""
    from alpaca_eval.completion_parsers import logprob_parser

    if not isinstance(completion, Mapping):
        return math.nan, "unparsed"
    if completion.get("logprobs"):
        (preference,) = logprob_parser(completion, **parser_kwargs)
        if not np.isnan(preference):
            return float(preference), "logprobs"
    text = str(completion.get("text", "")).strip()
    if text == parser_kwargs["numerator_token"]:
        return 1.0, "text"
    if text in parser_kwargs["denominator_tokens"]:
        return 2.0, "text"
    return math.nan, "unparsed"


def parse_judge_completion(completion: Any, **parser_kwargs: Any) -> list[float]:
    """An alpaca-eval `fn_completion_parser` (one preference per completion, batch size 1)."""
    return [read_preference(completion, **parser_kwargs)[0]]


def _features_without_gamed_file(
    df_annotations: pd.DataFrame, formula: str, regularize_to_baseline_lambda: float | None
) -> tuple[pd.DataFrame, pd.DataFrame, None]:
    """Stand-in for the package's `_get_featurized_data`, which downloads df_gamed.csv for its instruction
    difficulty and its length-gamed baselines. The minimal GLM uses neither, so the same length feature and
    target as the package's, computed the same way, are all it needs."""
    from alpaca_eval.metrics import glm_winrate

    df = df_annotations.reset_index(drop=True)
    delta_length = df["output_1"].str.len() - df["output_2"].str.len()
    train = pd.DataFrame(
        {
            "preference": df["preference"].astype(float).replace({0.0: 1.5}) - 1,
            "std_delta_len": delta_length / delta_length.std(),
            "not_gamed_baseline": True,
        }
    )
    test = pd.DataFrame({"not_gamed_baseline": True, "std_delta_len": 0.0}, index=train.index)
    df_xy_train, df_x_test = glm_winrate.make_dmatrix_for_model(train, test, formula=formula)
    return df_xy_train, df_x_test, None


@contextmanager
def _gamed_file_from_disk(gamed_file: Path) -> Iterator[None]:
    """The package's hub download of df_gamed.csv answered by `gamed_file`; any other download is an error."""
    from alpaca_eval.metrics import glm_winrate

    def download(*, filename: str, **_: Any) -> str:
        if filename != "df_gamed.csv":
            raise RuntimeError(f"alpaca-eval asked the hub for {filename!r}; this harness runs offline")
        return str(gamed_file)

    with mock.patch.object(glm_winrate, "hf_hub_download", download):
        yield


def winrates(annotations: pd.DataFrame, gamed_file: Path | None = GAMED_FILE) -> dict[str, Any]:
    """The package's win rate and length-controlled win rate of `annotations` (the annotator's rows, indexed by
    their AlpacaEval positions, which the full GLM uses as instruction ids).

    With `gamed_file` on disk the length control is AlpacaEval 2's `length_controlled_v1`. Without it, the package's
    `length_controlled_minimal` GLM (length term + intercept, fit on these annotations alone): comparable between
    our own runs, not with leaderboard LC numbers. `lc_glm` records which one; it is None with a reason when the
    GLM cannot be fit (fewer valid preferences than its 5 cross-validation folds, or outputs of equal length).
    Outputs identical to the reference throughout are a tie by definition: both win rates are 50.
    """
    from alpaca_eval.metrics import get_winrate, glm_winrate

    glm = LC_GLM_FULL if gamed_file is not None and Path(gamed_file).exists() else LC_GLM_OFFLINE
    n_folds = glm_winrate.GLM_INFO[glm]["kwargs"]["n_splits"]
    valid = annotations["preference"].notna()
    delta_length = annotations["output_1"].str.len() - annotations["output_2"].str.len()
    if (annotations["output_1"] == annotations["output_2"]).all():
        # A model against itself (the Self-Instruct row of the paper's table, its own reference): every pair is a
        # tie, so the length-controlled win rate is 50 by definition; a GLM would have no length term to fit.
        tie = {"length_controlled_winrate": 50.0, "lc_standard_error": 0.0, "lc_glm": None}
        return {**get_winrate(annotations), **tie, "lc_note": "outputs identical to the reference: a tie by definition"}
    reason = None
    if glm == LC_GLM_OFFLINE and valid.sum() < n_folds:
        reason = f"{valid.sum()} valid preferences, the GLM needs at least {n_folds}"
    elif glm == LC_GLM_OFFLINE and not delta_length.std() > 0:
        reason = "all length differences are equal, so the GLM has no length feature"
    if reason is not None:
        no_lc = {"length_controlled_winrate": None, "lc_standard_error": None, "lc_glm": None, "lc_note": reason}
        return {**get_winrate(annotations), **no_lc}
    patch = (
        _gamed_file_from_disk(Path(gamed_file))
        if glm == LC_GLM_FULL
        else mock.patch.object(glm_winrate, "_get_featurized_data", _features_without_gamed_file)
    )
    with patch:
        metrics = glm_winrate.get_length_controlled_winrate(annotations.copy(), glm_name=glm, save_weights_dir=None)
    return {**metrics, "lc_glm": glm, "lc_note": None}


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers and NaN as None, so results serialise as strict JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def run_alpaca_eval(
    model_outputs: Sequence[Mapping[str, Any]],
    reference_outputs: Sequence[Mapping[str, Any]],
    judge: Judge,
    selected: dict[str, list[int]],
    gamed_file: Path | None = GAMED_FILE,
) -> dict[str, Any]:
    """AlpacaEval 2 of `model_outputs` against `reference_outputs` on the items of each subset in `selected`
    ({subset: item positions}, from `selected_items`); the first subset's metrics are the headline.

    Both are lists of {instruction, output, generator} covering those instructions (extra ones are ignored), each
    from one generator, and the two generator names must differ: the package takes equal names for a model
    compared with itself. Every item is judged once, whichever subsets hold it. Returns the metrics of the
    first subset, every subset's under "subsets", and, under "annotations", one record per item.
    """
    from alpaca_eval.annotators import PairwiseAnnotator

    instructions = subsets.items(load_instructions(), subsets.union(selected))
    model = _aligned(model_outputs, instructions, "model_outputs")
    reference = _aligned(reference_outputs, instructions, "reference_outputs")
    model_name, reference_name = model[0]["generator"], reference[0]["generator"]
    if model_name == reference_name:
        raise ValueError(
            f"model and reference outputs are both named {model_name!r}; give them distinct 'generator' names"
        )
    completions = JudgeCompletions(judge)
    annotator = PairwiseAnnotator(
        annotators_config=str(ANNOTATOR_CONFIG),
        # The judge's own cache already makes reruns free; the package's JSON cache would live in its config dir.
        caching_path=None,
        prompt_template=str(PROMPT_FILE),
        fn_completions=completions,
        fn_completion_parser=parse_judge_completion,
    )
    (single,) = annotator.annotators.values()
    parser_kwargs = single.fn_completion_parser.keywords
    annotations = pd.DataFrame(annotator.annotate_head2head(outputs_1=reference, outputs_2=model, is_ordered=True))
    annotations["preference"] = annotations["preference"].astype(float)
    position = {item["item_id"]: row for row, item in enumerate(instructions)}
    by_subset = {}
    for name, indices in selected.items():
        rows = [position[subsets.item_id(i)] for i in indices]
        # Indexed by AlpacaEval position: the full length-controlled GLM reads the index as instruction ids.
        scored = annotations.iloc[rows].set_axis(indices, axis=0)
        by_subset[name] = {"item_ids": [subsets.item_id(i) for i in indices], **_metrics(scored, gamed_file)}
    primary = next(iter(by_subset))

    records = []
    for item, row in zip(instructions, annotations.to_dict(orient="records")):
        found = completions.find(single.prompt_template, row["instruction"], row["output_1"], row["output_2"])
        if found is None:
            # The package ties identical outputs without asking the judge.
            source, judge_output, swapped = "identical outputs", None, None
        else:
            judgment, swapped = found
            source = read_preference(_as_openai_choice(judgment), **parser_kwargs)[1]
            judge_output = judgment.text
        records.append(
            {
                "item_id": item["item_id"],
                "instruction": row["instruction"],
                "reference": row["generator_1"],
                "model": row["generator_2"],
                "reference_output": row["output_1"],
                "model_output": row["output_2"],
                "preference": _plain(row["preference"]),
                "preference_source": source,
                "output_order_swapped": swapped,
                "judge_output": judge_output,
            }
        )
    return {
        "benchmark": "alpaca_eval",
        "model": model_name,
        "reference": reference_name,
        "judge": judge.judge_id,
        "judge_settings": judge.settings(),
        "alpaca_eval_version": importlib.metadata.version("alpaca-eval"),
        "annotator": ANNOTATOR_CONFIG.parent.name,
        # The annotator is its config and its prompt: both by path and by the sha256 of their content.
        "annotator_config": file_provenance(ANNOTATOR_CONFIG),
        "annotator_prompt": file_provenance(PROMPT_FILE),
        "subset": primary,
        **by_subset[primary],
        "preference_sources": dict(Counter(r["preference_source"] for r in records)),
        "avg_length": float(np.mean([len(r["output"]) for r in model])),
        "subsets": by_subset,
        "annotations": records,
    }


def _metrics(annotations: pd.DataFrame, gamed_file: Path | None) -> dict[str, Any]:
    """The package's win rates of some annotations (one subset's), as plain JSON values."""
    metrics = winrates(annotations, gamed_file)
    return {
        "n_items": len(annotations),
        "n_invalid": int(annotations["preference"].isna().sum()),
        "win_rate": _plain(metrics["win_rate"]),
        "standard_error": _plain(metrics["standard_error"]),
        "discrete_win_rate": _plain(metrics["discrete_win_rate"]),
        "lc_win_rate": _plain(metrics["length_controlled_winrate"]),
        "lc_standard_error": _plain(metrics["lc_standard_error"]),
        "lc_glm": metrics["lc_glm"],
        "lc_note": metrics["lc_note"],
        "n_wins": _plain(metrics["n_wins"]),
        "n_wins_base": _plain(metrics["n_wins_base"]),
        "n_draws": _plain(metrics["n_draws"]),
    }
