import yaml

from montessori.io import atomic_path
from montessori.jobs import start_job

log = start_job(snakemake)
with atomic_path(snakemake.output[0]) as tmp:
    tmp.write_text(yaml.safe_dump(dict(snakemake.params.config), sort_keys=True))
