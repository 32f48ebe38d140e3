"""Names of the built-in models, which rule build_model builds under resources/models/NAME.

Apart from montessori.models so that building the DAG (rules/common.smk) does not import torch.
"""

# tiny-random-llama-base is the tiny Llama without a chat template, like the paper's base-model students.
BUILTIN_MODELS = ("smollm2-135m-instruct", "tiny-random-llama", "tiny-random-llama-base")
# Whether each built-in's tokenizer has a chat template, known before it is built.
HAS_CHAT_TEMPLATE = {"smollm2-135m-instruct": True, "tiny-random-llama": True, "tiny-random-llama-base": False}
