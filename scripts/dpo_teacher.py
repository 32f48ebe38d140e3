from montessori.jobs import start_job
from montessori.launch import job_processes, run_stage

log = start_job(snakemake)
cfg = snakemake.params.dpo
summary = run_stage(
    "dpo",
    dict(
        teacher_path=snakemake.params.teacher,
        pairs=snakemake.input.pairs,
        out_dir=snakemake.output[0],
        beta=cfg["beta"],
        lr=cfg["lr"],
        batch_size=cfg["batch_size"],
        gradient_accumulation=cfg["gradient_accumulation"],
        epochs=cfg["epochs"],
        max_length=cfg["max_length"],
        schedule=cfg["schedule"],
        lora=cfg["lora"],
        seed=snakemake.params.seed,
        precision=cfg["precision"],
        chat_template=snakemake.params.chat_template,
        gradient_checkpointing=cfg["gradient_checkpointing"],
        fsdp_config=cfg["fsdp_config"],
    ),
    processes=job_processes(snakemake.resources),
    threads=snakemake.threads,
    log_path=snakemake.log[0],
)
log.info("teacher DPO: %s", summary)
