# The results as something to query and to read: every experiment under results/ in one DuckDB file
# (`montessori query`, `montessori table1`, queries/*.sql), and this experiment's figures and Table 1 for
# `snakemake --report results/report.html`.
import os

from montessori.result_files import baseline_outputs, rule_inputs

DATABASE = "results/montessori.duckdb"
REPORT = f"{RESULTS}/report"
# Add to `rule all` so `snakemake --report` finds the figures.
REPORT_TARGETS = [
    DATABASE,
    *(f"{REPORT}/{name}.png" for name in ("influence", "pairs", "scores", "costs")),
    f"{REPORT}/table1.html",
    f"{REPORT}/table1.csv",
]

# The rules that read the database; their benchmark files must not feed back into it.
REPORT_RULES = ("plots", "table1")


report: "../report/workflow.rst"


FINAL_METHODS = config["final"]["methods"]
# This experiment's tables and scores, as the DAG names them, so the database waits for them.
AGGREGATED = [
    f"{RESULTS}/config.yaml",
    f"{RESULTS}/pool/seeds.parquet",
    f"{RESULTS}/pool/reference.parquet",
    f"{RESULTS}/warmup/candidates.parquet",
    *(f"{RESULTS}/iter{i}/{name}.parquet" for i in ITERATIONS for name in ("candidates", "influence", "pairs")),
    *(f"{RESULTS}/final/{m}/train.parquet" for m in FINAL_METHODS),
    # llm2llm's set is grown, not synthesized: its new examples are in its loop's candidates.
    *(f"{RESULTS}/final/{m}/candidates.parquet" for m in FINAL_METHODS if not m.startswith("llm2llm")),
    *baseline_outputs(RESULTS, FINAL_METHODS, config["iterations"]),
    *eval_targets(),
]


rule aggregate:
    input:
        # Globbed when the DAG is built: other experiments' files too, so a change to any rebuilds the database.
        lambda wildcards: rule_inputs("results", config["experiment"], AGGREGATED, downstream_rules=REPORT_RULES),
    output:
        DATABASE,
    log:
        "results/logs/aggregate.log",
    benchmark:
        "results/benchmarks/aggregate.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        results_dir=lambda wildcards, output: os.path.dirname(output[0]),
        data_dir="data",
        ngram=8,
    script:
        "../scripts/aggregate.py"


rule plots:
    input:
        db=DATABASE,
    output:
        influence=report(f"{REPORT}/influence.png", caption="../report/influence.rst", category="Influence"),
        pairs=report(f"{REPORT}/pairs.png", caption="../report/pairs.rst", category="Influence"),
        scores=report(f"{REPORT}/scores.png", caption="../report/scores.rst", category="Evaluation"),
        costs=report(f"{REPORT}/costs.png", caption="../report/costs.rst", category="Costs"),
    log:
        f"{RESULTS}/logs/plots.log",
    benchmark:
        f"{RESULTS}/benchmarks/plots.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        experiment=config["experiment"],
    script:
        "../scripts/plots.py"


rule table1:
    input:
        db=DATABASE,
    output:
        html=report(f"{REPORT}/table1.html", caption="../report/table1.rst", category="Evaluation"),
        csv=report(f"{REPORT}/table1.csv", caption="../report/table1.rst", category="Evaluation"),
    log:
        f"{RESULTS}/logs/table1.log",
    benchmark:
        f"{RESULTS}/benchmarks/table1.tsv"
    conda:
        CONDA_ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/table1.py"
