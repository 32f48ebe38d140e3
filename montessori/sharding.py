"""The warm-up and the exact influence engine in G processes: torch FSDP2 (`fully_shard`) without a trainer.

The process group is gloo on CPU (tests, CI; `cpu_processes`) and NCCL on GPUs (`gpu`); torchrun
(montessori.launch) has set RANK, WORLD_SIZE and the rendezvous. Each decoder layer is one FSDP unit, then the
root model (embeddings, final norm, head); the AdamW built over the sharded parameters holds only its rank's
shard of the moments.

Save format: the warm-up of G ranks gathers the FULL model and AdamW state to rank 0 and writes the same
`model/` folder and `optimizer.pt` (integer-keyed state in named_parameters order, montessori.student) as the
one-process warm-up, not a sharded (torch.distributed.checkpoint) checkpoint. A sharded checkpoint would tie the
files to the G that wrote them, while influence jobs run at any G (1 on a small GPU, several for a large
student), the one-process engines and the tests load them unchanged, and the file is the unit Snakemake tracks.
The price is one full gather to rank 0's CPU memory at the end of the warm-up, which the warm-up's own AdamW
state already needs on a single device.

Loading: only rank 0 reads the model's weights into memory (load_sharded_weights); the other ranks build the model
on the meta device and receive their shards from it (broadcast_from_rank0), so a node of G ranks holds one full
float32 copy, not G (8B: 32 GB, not 256). optimizer.pt is memory-mapped by every rank: the pages are the one
file's, shared, and each rank keeps only its shard of the moments.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

STATE_OPTIONS = {"full_state_dict": True, "cpu_offload": True}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def rank_device() -> torch.device:
    """This rank's device: its GPU (LOCAL_RANK) where there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@contextmanager
def process_group():
    """Join torchrun's process group for the duration (gloo on CPU, NCCL on CUDA), yielding this rank's device.

    A group that is already up (a caller's) is used and left up."""
    device = rank_device()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    try:
        yield device
    finally:
        if owned:
            dist.destroy_process_group()


def shard(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`fully_shard` each decoder layer, then the root model; the parameters become this rank's DTensor shards.

    The root reshards after its forward too (FSDP2 keeps a root unsharded by default): the influence engine
    copies the warm weights back into the shards between forwards, and a root left unsharded would run the next
    forward on its stale gathered copy."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    layers = model.get_decoder().layers
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def load_sharded_weights(model_dir: str | Path, device: torch.device) -> torch.nn.Module:
    """The float32 model of `model_dir`, sharded over the process group (`shard`), in eval mode. Collective.

    Rank 0 loads the weights; the others build the model on the meta device, allocate their empty shards and
    receive them from rank 0, and then its buffers too (the rotary tables, which no state dict carries)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    from montessori.student import load_weights

    if dist.get_rank() == 0:
        model = load_weights(model_dir, torch.device("cpu"))
        full = model.state_dict()  # the full tensors outlive sharding until this function returns
    else:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
        full = {}
    shard(model, device)
    if dist.get_rank() != 0:
        model.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=options)
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
    return model.eval()


def parameter_names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def gather_full_state(model, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The full model state dict and AdamW state dict on rank 0's CPU (empty on other ranks). Collective.

    The optimizer's state comes back as montessori.student saves it: keyed by the parameter's index in
    named_parameters order, one param group listing every index."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(**STATE_OPTIONS)
    model_state = get_model_state_dict(model, options=options)
    by_name = get_optimizer_state_dict(model, optimizer, options=options)
    if dist.get_rank() != 0:
        return {}, {}
    names = parameter_names(model)
    # A tied parameter (the head of tie_word_embeddings) is one tensor, saved once, as a one-process save does.
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(names)
    model_state = {key: value for key, value in model_state.items() if key not in tied}
    (group,) = by_name["param_groups"]
    state = {index: by_name["state"][name] for index, name in enumerate(names) if name in by_name["state"]}
    return model_state, {"state": state, "param_groups": [{**group, "params": list(range(len(names)))}]}


def load_sharded_optimizer(model, optimizer_path: str | Path) -> torch.optim.AdamW:
    """The AdamW of a one-process optimizer.pt (montessori.student.save_optimizer) over the sharded `model`:
    every rank memory-maps the file and keeps its own shards of the moments. The model's weights are loaded before
    `shard` (load_sharded_weights), so only the AdamW state comes in here."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    from montessori.student import read_optimizer

    saved = read_optimizer(model, optimizer_path, mmap=True)
    names = parameter_names(model)
    state, (group,) = saved["state_dict"]["state"], saved["state_dict"]["param_groups"]
    if len(state) != len(names):
        raise ValueError(
            f"{optimizer_path}: AdamW state for {len(state)} of {len(names)} parameters; influence needs the state "
            "of a student that has taken at least one warm-up step"
        )
    optimizer = torch.optim.AdamW(model.parameters(), **saved["hyperparameters"])
    by_name = {
        "state": {names[index]: value for index, value in state.items()},
        "param_groups": [{**group, "params": names}],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
    return optimizer
