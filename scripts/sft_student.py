from montessori.jobs import start_job
from montessori.launch import job_processes, run_stage

log = start_job(snakemake)
cfg = snakemake.params.sft
summary = run_stage(
    "sft",
    dict(
        student_path=snakemake.params.student,
        train=snakemake.input.train,
        out_dir=snakemake.output[0],
        lr=cfg["lr"],
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        micro_batch_size=cfg["micro_batch_size"],
        max_length=cfg["max_length"],
        schedule=cfg["schedule"],
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
log.info("student SFT: %s", summary)
