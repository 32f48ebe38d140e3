import pytest
import torch

from montessori import precision
from montessori.benchmarks.lm_eval_tasks import _model_args
from montessori.precision import dtype_name, resolve_dtype, trains_in_bf16

CPU = torch.device("cpu")


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-bf16"])
def native(request, monkeypatch):
    monkeypatch.setattr(precision, "has_native_bf16", lambda device: request.param)
    return request.param


def test_auto_dtype_follows_the_hardware(native):
    assert resolve_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)
    assert dtype_name("auto", CPU) == ("bfloat16" if native else "float32")


def test_named_dtypes_are_kept_whatever_the_hardware(native):
    assert resolve_dtype("float32", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype("float64", CPU)


def test_training_precision(native):
    assert trains_in_bf16("auto", CPU) is native
    assert trains_in_bf16("bf16", CPU) is True
    assert trains_in_bf16("fp32", CPU) is False
    with pytest.raises(ValueError, match="fp16"):
        trains_in_bf16("fp16", CPU)


def test_lm_eval_gets_a_concrete_dtype(native):
    # lm-eval's own "auto" would keep a float32 checkpoint in float32; ours must reach it resolved.
    args = _model_args("some/model", "hf", "auto", vllm_kv_cache_gib=1)
    assert args["dtype"] == ("bfloat16" if native else "float32")
    assert _model_args("some/model", "hf", "float32", vllm_kv_cache_gib=1)["dtype"] == "float32"


def test_this_machine_is_probed_without_error():
    assert isinstance(precision.has_native_bf16(CPU), bool)
