"""vLLM tensor parallelism: a synthesis or evaluation job given G GPUs builds one engine over all of them.

No engine starts here (there is no GPU to spread one over): vllm.LLM and lm_eval.simple_evaluate are replaced by
recorders, and each test checks the arguments the real ones would get.
"""

from unittest import mock

import pytest
import torch

from montessori.benchmarks import lm_eval_tasks
from montessori.generate import VLLMGenerator, load_configured_generator
from montessori.launch import tensor_parallel_size

GENERATION = {
    "backend": "vllm", "batch_size": 8, "dtype": "bfloat16", "vllm_kv_cache_gib": 1,
    "vllm_gpu_memory_utilization": 0.85, "seed": 0,
}  # fmt: skip


@pytest.fixture
def engine_arguments(monkeypatch):
    """The keyword arguments of every vllm.LLM built while the test runs."""
    calls = []

    def record(**kwargs):
        calls.append(kwargs)
        return mock.MagicMock()

    monkeypatch.setattr("vllm.LLM", record)
    # The generator sets these for the engine; monkeypatch puts back what the process had.
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    yield calls
    VLLMGenerator._engine_open = False


def test_the_jobs_gpus_are_the_tensor_parallel_size():
    assert tensor_parallel_size({"gpu": 4}, cuda_available=True) == 4
    assert tensor_parallel_size({}, cuda_available=True) == 1
    # vllm-cpu runs one engine process: cpu_processes (torchrun stages) leaves it alone.
    assert tensor_parallel_size({"gpu": 4, "cpu_processes": 2}, cuda_available=False) == 1


def test_synthesis_engine_spans_the_jobs_gpus(tiny_model_dir, engine_arguments, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    generator = load_configured_generator(str(tiny_model_dir), GENERATION, tensor_parallel_size=4)
    (arguments,) = engine_arguments
    assert arguments["tensor_parallel_size"] == 4
    assert arguments["gpu_memory_utilization"] == 0.85 and arguments["dtype"] == torch.bfloat16
    assert arguments["model"] == str(tiny_model_dir) and "enforce_eager" not in arguments
    generator.close()


def test_cpu_engine_and_the_default_use_one_process(tiny_model_dir, engine_arguments):
    generator = load_configured_generator(str(tiny_model_dir), {**GENERATION, "dtype": "float32"}, role="student")
    (arguments,) = engine_arguments
    assert arguments["tensor_parallel_size"] == 1 and arguments["enforce_eager"]
    generator.close()
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        VLLMGenerator(str(tiny_model_dir), tensor_parallel_size=0)


@pytest.mark.parametrize("on_gpu", [True, False])
def test_lm_eval_vllm_model_args_carry_the_tensor_parallel_size(tiny_model_dir, monkeypatch, on_gpu):
    device = torch.device("cuda" if on_gpu else "cpu")
    monkeypatch.setattr(lm_eval_tasks, "default_device", lambda: device)
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    seen = {}

    def simple_evaluate(**kwargs):
        seen.update(kwargs)
        task = kwargs["tasks"][0]
        return {"results": {task: {"acc_norm,none": 0.5}}, "n-samples": {task: {"effective": 2}}}

    monkeypatch.setattr(lm_eval_tasks.lm_eval, "simple_evaluate", simple_evaluate)
    result = lm_eval_tasks.run_benchmark(
        tiny_model_dir, "arc_challenge", 0, 2, backend="vllm", dtype="bfloat16", tensor_parallel_size=8
    )
    assert seen["model"] == "vllm" and result["score"] == 0.5
    assert seen["model_args"]["tensor_parallel_size"] == 8
    assert seen["model_args"]["dtype"] == "bfloat16" and seen["model_args"]["pretrained"] == str(tiny_model_dir)
    assert ("enforce_eager" in seen["model_args"]) is not on_gpu


def test_a_local_vllm_judge_serves_over_the_jobs_gpus(tiny_model_dir, tmp_path, monkeypatch):
    from montessori.judges import JudgeConfig, judge

    servers = []

    class Server:
        """Records what open_judge asks of VLLMServer instead of starting one."""

        def __init__(self, *args, **kwargs):
            servers.append(kwargs)
            self.base_url, self.model_name = "http://127.0.0.1:1/v1", "tiny"

        def stop(self):
            pass

    monkeypatch.setattr(judge, "VLLMServer", Server)
    config = JudgeConfig(kind="local", model=str(tiny_model_dir), local_backend="vllm")
    with judge.open_judge(config, tmp_path / "cache", tensor_parallel_size=4) as local:
        assert local.backend.server.model_name == "tiny"
    assert servers[0]["tensor_parallel_size"] == 4
    with judge.open_judge(config, tmp_path / "cache") as local:
        assert local.backend.server.model_name == "tiny"
    assert servers[1]["tensor_parallel_size"] == 1
