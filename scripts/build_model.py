from pathlib import Path

from montessori.jobs import start_job
from montessori.models import build_builtin, sanity_generation

log = start_job(snakemake)
out_dir = Path(snakemake.output[0])
build_builtin(snakemake.wildcards.model, out_dir)
log.info("sanity generation: %r", sanity_generation(out_dir))
