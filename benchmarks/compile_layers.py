"""``torch.compile`` each transformer layer of the model XTuner trains (``bench_train.py --compile layers``).

mmengine's own switch (``compile = True`` in the config, ``--compile step``)
compiles the whole ``train_step``, optimizer wrapper included; under torch 2.11
that fails while Dynamo traces mmengine 0.10.6's autocast (its version check
parses ``torch.__version__`` with ``packaging``, which Dynamo cannot follow:
``InternalTorchDynamoError ... 'UserDefinedExceptionObjectVariable' object has
no attribute 'call_setattr'``, seen on the H200). Compiling the layers instead
is what most training stacks do: the decoder layers of InternLM2 and the
encoder layers of InternViT are compiled one by one (``nn.Module.compile``),
their call sites (gradient checkpointing included) stay as they are, and the
many identical layers share one compiled graph.
"""

from __future__ import annotations

from mmengine.hooks import Hook

#: The repeated blocks of InternVL2's two towers, by class name (the official and the book's code agree).
LAYER_CLASSES = ("InternLM2DecoderLayer", "InternVisionEncoderLayer")


def compile_layers(model, classes: tuple[str, ...] = LAYER_CLASSES) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Call ``.compile()`` on every module whose class is named in ``classes``; count them by class."""
    counts = dict.fromkeys(classes, 0)
    for module in model.modules():
        name = type(module).__name__
        if name in counts:
            module.compile()
            counts[name] += 1
    return counts


class CompileLayersHook(Hook):
    """Compile the layers once the model is built and wrapped, before the first iteration."""

    priority = "VERY_LOW"

    def before_train(self, runner) -> None:  # type: ignore[no-untyped-def]
        counts = compile_layers(runner.model)
        runner.logger.info(f"compile_layers: torch.compile on {counts}")
        if not any(counts.values()):
            raise RuntimeError(f"compile_layers: no layer of the classes {LAYER_CLASSES} in the model")
