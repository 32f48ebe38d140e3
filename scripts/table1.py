from montessori.jobs import start_job
from montessori.plots import write_table1

log = start_job(snakemake)
table1 = write_table1(snakemake.input.db, snakemake.output.html, snakemake.output.csv)
log.info("table1: %d rows (experiment x method x teacher iteration)", len(table1))
