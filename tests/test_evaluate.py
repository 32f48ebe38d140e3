from montessori.evaluate import eval_record


def test_lm_eval_result_keeps_its_metric_name_and_stderr():
    result = {"benchmark": "arc_challenge", "score": 0.25, "metric": "acc_norm,none", "stderr": 0.1, "n_items": 4,
              "model": "m", "source": "offline", "task": "montessori_arc_challenge"}  # fmt: skip
    record = eval_record("self_instruct", result, limit=4)
    assert record["scores"] == {"acc_norm": 0.25, "acc_norm_stderr": 0.1}
    assert (record["score"], record["limit"], record["judge"], record["source"]) == (0.25, 4, None, "offline")
    assert record["details"]["task"] == "montessori_arc_challenge"


def test_alpaca_eval_headline_is_the_length_controlled_win_rate():
    result = {"benchmark": "alpaca_eval", "win_rate": 40.0, "lc_win_rate": 45.0, "standard_error": 2.0,
              "lc_standard_error": 2.5, "n_items": 805, "n_invalid": 3, "judge": "j",
              "model": "montessori"}  # fmt: skip
    record = eval_record("montessori", result, limit=None)
    assert record["score"] == 45.0 and record["scores"]["win_rate"] == 40.0
    assert (record["n_invalid"], record["judge"]) == (3, "j")


def test_mt_bench_without_valid_ratings_has_no_score():
    result = {"benchmark": "mt_bench", "score": None, "score_turn1": None, "score_turn2": None, "n_items": 2,
              "n_invalid": 4, "judge": "j", "model": "m"}  # fmt: skip
    record = eval_record("no_finetune", result, limit=2)
    assert record["score"] is None and record["n_invalid"] == 4
