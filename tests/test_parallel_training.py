"""montessori.parallel_training and the batch split: what DPO and SFT jobs of G processes train with."""

import pytest
from accelerate.utils import FullyShardedDataParallelPlugin
from transformers import TrainingArguments

from montessori.parallel_training import DEFAULT_FSDP_CONFIG, parallelism, uses_gradient_checkpointing
from montessori.schedule import dpo_accumulation, optimizer_steps, sft_accumulation
from tests.conftest import ROOT

OFFLOAD = ROOT / "configs" / "fsdp" / "full_shard_offload.json"


def test_gradient_checkpointing_auto_is_on_for_multi_process_jobs():
    assert not uses_gradient_checkpointing("auto", 1) and uses_gradient_checkpointing("auto", 2)
    assert uses_gradient_checkpointing(True, 1) and not uses_gradient_checkpointing(False, 8)
    with pytest.raises(ValueError, match="gradient_checkpointing 'on'"):
        uses_gradient_checkpointing("on", 2)


def test_one_process_and_cpu_jobs_use_no_fsdp():
    single = parallelism("auto", DEFAULT_FSDP_CONFIG, "sft.fsdp_config", processes=1, cuda_available=True)
    assert single.training_arguments() == {"gradient_checkpointing": False, "ddp_find_unused_parameters": False}
    # accelerate runs FSDP on GPUs only: on CPU the ranks are DDP replicas.
    ddp = parallelism("auto", DEFAULT_FSDP_CONFIG, "sft.fsdp_config", processes=2, cuda_available=False)
    assert ddp.summary() == {"processes": 2, "fsdp": False, "gradient_checkpointing": True}
    assert ddp.training_arguments()["gradient_checkpointing"] is True


@pytest.mark.parametrize(("config", "offload"), [(DEFAULT_FSDP_CONFIG, False), (OFFLOAD, True)])
def test_shipped_fsdp_configs_build_accelerates_fsdp2_plugin(config, offload, tmp_path):
    """On GPUs with G > 1 the file goes to TrainingArguments, which builds accelerate's plugin from it."""
    gpu = parallelism("auto", config, "dpo.fsdp_config", processes=4, cuda_available=True)
    arguments = gpu.training_arguments()
    # FSDP recomputes activations itself; transformers' checkpointing would gather each layer twice.
    assert arguments["gradient_checkpointing"] is False and arguments["fsdp_config"]["activation_checkpointing"]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **arguments)
    plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing and plugin.reshard_after_forward
    # A full state dict, so rank 0 can save a plain HF model folder.
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert (type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy") is offload


def test_a_missing_or_broken_fsdp_config_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="'sft.fsdp_config'.*not found"):
        parallelism("auto", tmp_path / "none.json", "sft.fsdp_config", processes=2, cuda_available=True)
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 2,\n')
    with pytest.raises(ValueError, match=r"broken.json:2: invalid JSON.*'dpo.fsdp_config'"):
        parallelism("auto", broken, "dpo.fsdp_config", processes=2, cuda_available=True)


def test_the_effective_batch_is_split_over_the_processes():
    # sft.batch_size is global: 32 = micro-batch 2 x accumulation 4 x 4 GPUs (configs/paper.yaml).
    assert sft_accumulation(32, 2, 1) == 16 and sft_accumulation(32, 2, 4) == 4
    # DPO's effective batch is batch_size x gradient_accumulation; G ranks take gradient_accumulation / G each.
    assert dpo_accumulation(1, 2, 1) == 2 and dpo_accumulation(1, 2, 2) == 1
    with pytest.raises(ValueError, match=r"sft.batch_size = 32\) does not split over 3 process.*multiple of 6"):
        sft_accumulation(32, 2, 3)
    with pytest.raises(ValueError, match=r"dpo.batch_size x dpo.gradient_accumulation = 2.*dpo.gradient_accumulation"):
        dpo_accumulation(2, 1, 2)


@pytest.mark.parametrize(
    ("n", "batch", "accumulation", "processes", "expected"),
    # 10 micro-batches over 2 ranks: 5 each; 5 over 2: 3 each (even_batches repeats one); 5 over 4: 2 each.
    [(20, 2, 1, 2, 5), (10, 2, 1, 2, 3), (10, 2, 2, 2, 2), (10, 2, 1, 4, 2), (8, 2, 2, 1, 2), (8, 2, 1, 2, 2)],
)
def test_optimizer_steps_at_g_processes(n, batch, accumulation, processes, expected):
    assert optimizer_steps(n, batch, accumulation, 1, processes) == expected
