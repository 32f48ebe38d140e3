"""Progress files (montessori.progress): what a killed job saved, and when a rerun may use it."""

import math
import os

from montessori.progress import ProgressFile, job_digest


def test_saved_steps_come_back_in_order_with_exact_floats(tmp_path):
    path = tmp_path / "progress" / "job.jsonl"
    progress = ProgressFile(path, "abc")
    assert progress.steps == [] and not path.exists()
    progress.append({"c0": 0.1 + 0.2, "c1": -1e-300})
    progress.append([{"rouge_l": math.nan, "seed_ids": ["s1", "s2"]}])
    again = ProgressFile(path, "abc")
    assert again.steps[0] == {"c0": 0.1 + 0.2, "c1": -1e-300}
    assert math.isnan(again.steps[1][0]["rouge_l"]) and again.steps[1][0]["seed_ids"] == ["s1", "s2"]
    again.remove()
    assert not path.exists()


def test_progress_of_another_job_is_discarded(tmp_path):
    path = tmp_path / "job.jsonl"
    ProgressFile(path, "old-params").append({"c0": 1.0})
    fresh = ProgressFile(path, "new-params")
    assert fresh.steps == [] and not path.exists()
    fresh.append({"c1": 2.0})
    assert ProgressFile(path, "new-params").steps == [{"c1": 2.0}]


def test_a_step_cut_off_by_a_kill_is_dropped_and_the_next_one_starts_a_line(tmp_path):
    path = tmp_path / "job.jsonl"
    ProgressFile(path, "d").append({"c0": 1.0})
    with open(path, "ab") as f:
        f.write(b'{"c1": 2.')  # killed in the middle of the second step
    resumed = ProgressFile(path, "d")
    assert resumed.steps == [{"c0": 1.0}]
    resumed.append({"c1": 2.5})
    assert ProgressFile(path, "d").steps == [{"c0": 1.0}, {"c1": 2.5}]


def test_the_digest_follows_params_and_input_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"1234")
    data = tmp_path / "candidates.parquet"
    data.write_bytes(b"x")
    digest = job_digest({"lr": 1e-6}, [model, data])
    assert digest == job_digest({"lr": 1e-6}, [model, data])
    assert digest != job_digest({"lr": 2e-6}, [model, data])
    # A retrained model (rewritten file) is another input, even at the same size.
    stat = (model / "weights.bin").stat()
    os.utime(model / "weights.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert digest != job_digest({"lr": 1e-6}, [model, data])
