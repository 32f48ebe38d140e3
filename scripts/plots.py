from montessori.jobs import start_job
from montessori.plots import draw_report

log = start_job(snakemake)
draw_report(snakemake.input.db, snakemake.params.experiment, dict(snakemake.output.items()))
log.info("figures of experiment %s: %s", snakemake.params.experiment, ", ".join(snakemake.output))
