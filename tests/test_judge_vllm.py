"""The local vLLM judge: the server's command line, its chat format and stop tokens, and real vLLM servers."""

import re
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

from montessori.judges import JudgeConfig, JudgeError, VLLMServer, open_judge
from montessori.judges.judge import local_chat_format
from montessori.judges.vllm_server import server_command
from tests.test_judges import ENDOFTEXT_TEMPLATE, OTHER_QUESTION, QUESTION


def test_a_vllm_judge_stops_at_the_end_of_turn_only_where_the_model_would_not(tiny_model_dir, tmp_path):
    custom = tmp_path / "endoftext.jinja"
    custom.write_text(ENDOFTEXT_TEMPLATE)
    fmt, stop_ids = local_chat_format(tiny_model_dir, str(custom))
    assert (fmt.end_of_turn, stop_ids) == ("<|endoftext|>", [0])
    for spec in ("auto", "plain"):  # <|im_end|>, the tokenizer's EOS
        assert local_chat_format(tiny_model_dir, spec)[1] == []


def test_the_vllm_server_command_line(tmp_path):
    args = server_command(
        "/models/judge", "judge", 8123, "bfloat16", cpu=False, chat_template_file=tmp_path / "t.jinja",
        tensor_parallel_size=4, extra_args=["--max-model-len", "4096"],
    )  # fmt: skip
    assert args[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    options = dict(zip(args[3:-2:2], args[4:-2:2]))
    assert options == {
        "--model": "/models/judge", "--served-model-name": "judge", "--host": "127.0.0.1", "--port": "8123",
        "--dtype": "bfloat16", "--seed": "0", "--tensor-parallel-size": "4",
        "--chat-template": str(tmp_path / "t.jinja"),
    }  # fmt: skip
    assert args[-2:] == ["--max-model-len", "4096"]
    cpu = server_command("/models/judge", "judge", 8123, "float32", cpu=True)
    assert cpu[-2:] == ["--enforce-eager", "--no-enable-chunked-prefill"] and "--chat-template" not in cpu
    assert cpu[cpu.index("--tensor-parallel-size") + 1] == "1"
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        server_command("/models/judge", "judge", 8123, "float32", cpu=True, tensor_parallel_size=0)


def test_vllm_server_serves_its_chat_template_from_a_file_it_removes(tiny_model_dir, monkeypatch):
    """VLLMServer's own wiring, with a stand-in process that exits at once instead of vLLM."""
    from montessori.judges import vllm_server

    seen = {}

    def command(*args, **kwargs):
        real = server_command(*args, **kwargs)
        template = Path(real[real.index("--chat-template") + 1])
        seen.update(args=real, template=template, text=template.read_text())
        return [sys.executable, "-c", "raise SystemExit(3)"]

    monkeypatch.setattr(vllm_server, "server_command", command)
    with pytest.raises(JudgeError, match="exited with code 3 before it was ready") as raised:
        VLLMServer(tiny_model_dir, chat_template=ENDOFTEXT_TEMPLATE, tensor_parallel_size=2)
    assert seen["text"] == ENDOFTEXT_TEMPLATE and not seen["template"].exists()
    assert seen["args"][seen["args"].index("--tensor-parallel-size") + 1] == "2"
    Path(re.search(r"end of (\S+):", str(raised.value)).group(1)).unlink()


@pytest.fixture(scope="module")
def vllm_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with head_dim 32: vLLM's CPU attention has no kernel for the tiny model's head_dim 16."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.head_dim = 32
    path = tmp_path_factory.mktemp("tiny-llama-head32")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.mark.vllm
def test_vllm_server_judge_and_openai_client_agree_with_hf(vllm_model_dir, tmp_path):
    conversations = [QUESTION, OTHER_QUESTION]
    # float32: the logprobs of both engines are compared to 1e-3, which bf16 kernels of either do not reach.
    local = JudgeConfig(kind="local", model=str(vllm_model_dir), max_tokens=5, concurrency=2, dtype="float32")
    with open_judge(local, tmp_path / "vllm_cache") as judge:
        served = judge.judge_many(conversations, top_logprobs=3)
        server = judge.backend.server
        assert judge.judge_id == f"local-vllm:{vllm_model_dir.name}"
        # The same server through the plain `openai` kind: the code path for any remote endpoint.
        remote = JudgeConfig(kind="openai", model=server.model_name, base_url=server.base_url, max_tokens=5)
        with open_judge(remote, tmp_path / "remote_cache") as client:
            through_client = client.judge_many(conversations, top_logprobs=3)
            assert client.n_requests == 2
        process = server.process
    assert server.process is None and process.poll() is not None and not server.log_path.exists()
    hf = JudgeConfig(kind="local", model=str(vllm_model_dir), local_backend="hf", max_tokens=5, dtype="float32")
    with open_judge(hf, tmp_path / "hf_cache") as judge:
        in_process = judge.judge_many(conversations, top_logprobs=3)
    assert [j.text for j in served] == [j.text for j in through_client] == [j.text for j in in_process]
    for judgment, reference in zip(served, in_process):
        assert judgment.top_logprobs and all(len(step) == 3 for step in judgment.top_logprobs)
        # Both report the model's raw distribution: the same tokens with the same logprobs.
        vllm_tokens, vllm_logprobs = zip(*judgment.top_logprobs[0])
        hf_tokens, hf_logprobs = zip(*reference.top_logprobs[0])
        assert vllm_tokens == hf_tokens
        assert vllm_logprobs == pytest.approx(hf_logprobs, abs=1e-3)


@pytest.mark.vllm
def test_vllm_server_renders_and_stops_in_the_judges_chat_format(vllm_model_dir, tmp_path):
    """A format whose end of turn is not the model's EOS: the server renders prompts as the in-process judge does
    (same tokens, same logprobs) and is asked to stop at that token."""
    custom = tmp_path / "endoftext.jinja"
    custom.write_text(ENDOFTEXT_TEMPLATE)
    conversations = [QUESTION, OTHER_QUESTION]
    options = dict(model=str(vllm_model_dir), max_tokens=5, dtype="float32", chat_template=str(custom))
    with open_judge(JudgeConfig(kind="local", concurrency=2, **options), tmp_path / "judge_cache") as judge:
        served = judge.judge_many(conversations, top_logprobs=3)
        server = judge.backend.server
        assert judge.backend.client.extra_body == {"stop_token_ids": [0]}
        assert server.chat_template_file.read_text() == ENDOFTEXT_TEMPLATE
    assert not server.chat_template_file.exists()
    with open_judge(JudgeConfig(kind="local", local_backend="hf", **options), tmp_path / "judge_cache") as judge:
        in_process = judge.judge_many(conversations, top_logprobs=3)
    assert [j.text for j in served] == [j.text for j in in_process]
    for judgment, reference in zip(served, in_process):
        vllm_tokens, vllm_logprobs = zip(*judgment.top_logprobs[0])
        hf_tokens, hf_logprobs = zip(*reference.top_logprobs[0])
        assert vllm_tokens == hf_tokens and vllm_logprobs == pytest.approx(hf_logprobs, abs=1e-3)
    # In the tokenizer's own format the same model answers otherwise: the template did reach the server.
    tokenizers_own = JudgeConfig(kind="local", local_backend="hf", **{**options, "chat_template": "auto"})
    with open_judge(tokenizers_own, tmp_path / "judge_cache") as judge:
        auto = judge.judge_many(conversations, top_logprobs=3)
    assert [j.top_logprobs[0] for j in auto] != [j.top_logprobs[0] for j in in_process]


@pytest.mark.vllm
def test_vllm_server_that_cannot_start_is_reported_with_its_log(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "not-a-model"
    model_dir.mkdir()
    # A tokenizer, so the judge's chat format resolves and vLLM itself is what fails.
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    (model_dir / "config.json").write_text('{"model_type": "no-such-architecture"}')
    config = JudgeConfig(kind="local", model=str(model_dir), vllm_start_timeout_seconds=300)
    with open_judge(config, tmp_path / "judge_cache") as judge:
        with pytest.raises(JudgeError, match=r"(?s)exited with code \d+ before it was ready; end of \S+") as raised:
            judge.judge(QUESTION)
    log_path = Path(re.search(r"end of (\S+):", str(raised.value)).group(1))
    assert log_path.name.startswith("vllm-judge-not-a-model-") and "no-such-architecture" in log_path.read_text()
    log_path.unlink()
