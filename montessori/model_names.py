"""Names of the built-in models, which rule build_model builds under resources/models/NAME.

Apart from montessori.models so that building the DAG (rules/common.smk) does not import torch.
"""

BUILTIN_MODELS = ("smollm2-135m-instruct", "tiny-random-llama")
