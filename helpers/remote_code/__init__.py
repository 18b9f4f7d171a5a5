"""Remote code shipped inside every model directory that ``helpers.tiny`` writes.

These files are the book's own implementation of InternVL2 (InternViT +
pixel shuffle + MLP projector + InternLM2) with the official class names,
config keys and weight names. They depend on torch and transformers only, so
``AutoModel.from_pretrained(dir, trust_remote_code=True)`` can load them
anywhere. This ``__init__`` is not copied into model directories.
"""
