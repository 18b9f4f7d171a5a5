"""``torch.compile`` each transformer layer of the model XTuner trains (``Recipe(torch_compile="layers")``).

:func:`helpers.config.render` adds :class:`CompileLayersHook` to the XTuner
config when the recipe asks for it; on a CPU :func:`helpers.config.fit_to_hardware`
turns it off (compiling delays the first step by minutes there). Measured on
an H200 with the official InternVL2 code (``benchmarks/results/train-compile*-h200.json``):
the first optimizer step takes about 25 s longer (the compilation), every later
one is faster. Inductor can fuse the many small element-wise kernels (casts,
LoRA's scaling and additions, RMSNorm, SiLU), which the profile of one step
(``benchmarks/results/train-prof-*-h200.json``) shows taking about half its GPU time.

mmengine's own switch (``compile = True`` in the config, ``bench_train --compile step``)
compiles the whole ``train_step``, optimizer wrapper included; under torch 2.11
that fails while Dynamo traces mmengine 0.10.6's autocast (its version check
parses ``torch.__version__`` with ``packaging``, which Dynamo cannot follow:
``InternalTorchDynamoError ... 'UserDefinedExceptionObjectVariable' object has
no attribute 'call_setattr'``, seen on the H200). Compiling the transformer blocks
one by one instead is what PyTorch's own training stack torchtitan does: the
decoder layers of InternLM2 and the encoder layers of InternViT are compiled
(``nn.Module.compile``) and their call sites (gradient checkpointing
included) stay as they are.
"""

from __future__ import annotations

from mmengine.hooks import Hook

from .errors import ModelDirError

#: The repeated blocks of InternVL2's two towers, by class name (the official and the book's code agree).
LAYER_CLASSES = ("InternLM2DecoderLayer", "InternVisionEncoderLayer")


def compile_layers(model, classes: tuple[str, ...] = LAYER_CLASSES) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Call ``.compile()`` on every module whose class is named in ``classes``; count them by class.

    ``nn.Module.compile`` is lazy: nothing is compiled until the layer first runs.

    >>> import torch
    >>> class InternLM2DecoderLayer(torch.nn.Linear): ...
    >>> counts = compile_layers(torch.nn.Sequential(InternLM2DecoderLayer(2, 2), InternLM2DecoderLayer(2, 2)))
    >>> counts
    {'InternLM2DecoderLayer': 2, 'InternVisionEncoderLayer': 0}
    """
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
            raise ModelDirError(
                f"torch_compile='layers' found no layer of the classes {LAYER_CLASSES} in the model: it knows "
                "InternVL2's InternLM2 and InternViT layers only. Fix: set torch_compile='none' for this model."
            )
