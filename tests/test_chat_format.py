"""Chat formats per role: resolution, the end-of-turn token, and a base student through every stage in each
built-in format."""

import json

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from montessori import chat_format
from montessori.benchmarks.alpaca_eval import selected_items
from montessori.chat_format import ChatFormatError
from montessori.evaluate import answer_alpaca_eval
from montessori.generate import HFGenerator
from montessori.influence import InfluenceEngine
from montessori.sft import train_student
from montessori.student import IGNORE_INDEX, encode_example
from montessori.warm_up import warm_up
from tests.conftest import TOY_EXAMPLES

EXCHANGE = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}]
LLAMA3_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def base_with_llama3_tokens(tiny_base_model_dir, tmp_path_factory):
    """A base model (no chat template) whose vocabulary has Llama 3's special tokens, as Meta-Llama-3-8B's has."""
    out = tmp_path_factory.mktemp("llama3-base")
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": LLAMA3_TOKENS})
    model = LlamaForCausalLM.from_pretrained(tiny_base_model_dir, dtype=torch.float32)
    torch.manual_seed(0)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template is None
    return out


def test_auto_takes_the_tokenizers_own_template(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    fmt = chat_format.resolve(tokenizer, "auto", "teacher")
    assert fmt.template == tokenizer.chat_template and fmt.end_of_turn == "<|im_end|>"


def test_auto_on_a_base_model_names_the_key_to_set(tiny_base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    with pytest.raises(ChatFormatError, match=r"'models.chat_template.student' is 'auto'.*no chat template.*plain"):
        chat_format.resolve(tokenizer, "auto", "student")


@pytest.mark.parametrize(
    ("spec", "text", "end_of_turn"),
    [
        ("chatml", "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nRed.<|im_end|>\n", "<|im_end|>"),
        ("plain", "<|im_start|>### Instruction:\nName a colour.\n\n### Response:\nRed.<|im_end|>\n\n", "<|im_end|>"),
        (
            "llama3",
            "<|im_start|><|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nRed.<|eot_id|>",
            "<|eot_id|>",
        ),
    ],
)
def test_builtin_formats_render_and_end_their_turns(base_with_llama3_tokens, spec, text, end_of_turn):
    tokenizer = AutoTokenizer.from_pretrained(base_with_llama3_tokens)
    fmt = chat_format.resolve(tokenizer, spec, "student")
    assert fmt.end_of_turn == end_of_turn
    chat_format.apply(tokenizer, fmt)
    assert tokenizer.apply_chat_template(EXCHANGE, tokenize=False) == text
    # The plain format's end of turn is the tokenizer's EOS (this tokenizer's EOS is <|im_end|>).
    assert chat_format.resolve(tokenizer, "plain", "student").end_of_turn == tokenizer.eos_token


def test_a_format_whose_end_of_turn_is_not_in_the_vocabulary_is_refused(tiny_base_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    with pytest.raises(ChatFormatError, match=r"'models.chat_template.student' \(llama3\).*<\|eot_id\|>.*use 'plain'"):
        chat_format.resolve(tokenizer, "llama3", "student")


def test_a_jinja_file_is_a_format(tiny_base_model_dir, tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}")
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    fmt = chat_format.resolve(tokenizer, str(path), "judge")
    assert fmt.end_of_turn == tokenizer.eos_token and fmt.template == path.read_text()
    with pytest.raises(ChatFormatError, match=r"'models.chat_template.judge' is '.*missing.jinja'"):
        chat_format.resolve(tokenizer, str(tmp_path / "missing.jinja"), "judge")


def test_a_trained_model_keeps_its_format(tiny_base_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model_dir)
    fmt = chat_format.resolve(tokenizer, "plain", "student")
    chat_format.save(tokenizer, fmt, tmp_path)
    assert json.loads((tmp_path / chat_format.FORMAT_FILE).read_text())["spec"] == "plain"
    tokenizer, kept = chat_format.load_tokenizer(tmp_path, "auto", "student")
    assert kept == fmt and tokenizer.chat_template == fmt.template
    with pytest.raises(ChatFormatError, match=r"trained with chat format 'plain'.*'models.chat_template.student'"):
        chat_format.load_tokenizer(tmp_path, "chatml", "student")


@pytest.mark.parametrize("spec", chat_format.BUILTIN_FORMATS)
def test_a_base_student_runs_every_stage_in_each_builtin_format(base_with_llama3_tokens, tmp_path, spec):
    """Warm-up, influence, SFT and evaluation answers of a base model, in the format `spec`."""
    warm = tmp_path / "warm"
    warm_up(base_with_llama3_tokens, TOY_EXAMPLES, warm, lr=1e-3, batch_size=4, max_length=64, chat_template=spec)
    assert chat_format.saved_format(warm / "model")["spec"] == spec
    end = chat_format.resolve(AutoTokenizer.from_pretrained(base_with_llama3_tokens), spec, "student").end_of_turn

    references = pd.DataFrame({"reference_id": ["r0"], "instruction": ["Name a fruit."], "response": ["A pear."]})
    engine = InfluenceEngine(warm / "model", warm / "optimizer.pt", references, max_length=64, reference_batch_size=1)
    example = encode_example(engine.tokenizer, "Say hi.", "Hi.", 64)
    answer = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert engine.tokenizer.convert_ids_to_tokens(answer[-1]) == end
    candidates = TOY_EXAMPLES.head(2).assign(candidate_id=["c0", "c1"], prompt_id="p0", verdict="ok")
    scores = engine.score(candidates, baseline="before_step")
    assert scores["influence"].notna().all()

    student = tmp_path / "student"
    flat = {"warmup": 0.0, "stable": 1.0, "decay": 0.0, "min_lr_ratio": 1.0}
    train_student(
        base_with_llama3_tokens, TOY_EXAMPLES, student, lr=1e-3, epochs=1, batch_size=4, micro_batch_size=2,
        max_length=64, schedule=flat, seed=0, chat_template=spec,
    )  # fmt: skip
    generator = HFGenerator(str(student), batch_size=2, dtype="float32", role="student")
    assert generator.chat_format.spec == spec
    assert generator.tokenizer.convert_tokens_to_ids(end) in generator.eos_ids
    _, items = selected_items([], "all", limit=2, seed=0)
    answers = answer_alpaca_eval(generator, "montessori", items, max_tokens=8)
    assert len(answers) == 2 and all(isinstance(a["output"], str) for a in answers)
