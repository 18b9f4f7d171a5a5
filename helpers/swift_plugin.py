"""An ms-swift plugin: the ``internvl2`` template for any InternVL2 patch size (``--custom_register_path``).

ms-swift 3.2's InternVL templates put a fixed ``num_image_token = 256`` image
tokens per tile, which is InternVL2's count at 448 px with 14 px patches and a
0.5 pixel shuffle. The book's tiny model uses 28 px patches (64 tokens per
tile), so with the stock template every image gets 4x too many
``<IMG_CONTEXT>`` slots and the first forward pass fails with
``shape mismatch: value tensor of shape [1664, 128] cannot be broadcast to
indexing result of shape [6656, 128]``.

ms-swift's supported way to change a template without touching its source is
to register a new one from a file passed as ``--custom_register_path``. This
module registers ``internvl2_book``: ms-swift's own ``Internvl2Template`` and
InternVL2 system prompt, with the token count computed from the model's
``config.json`` the way InternVL's ``InternVLChatModel`` computes it. On
InternVL2-2B it gives 256, so the template is identical to ``internvl2`` there.

It only does something inside ms-swift's environment; imported elsewhere (the
book's own environment, the doctests) it registers nothing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

TEMPLATE = "internvl2_book"


def image_tokens_per_tile(config: Any) -> int:
    """InternVL's ``num_image_token``: (image size / patch size)^2 x downsample ratio^2.

    >>> from types import SimpleNamespace as NS
    >>> image_tokens_per_tile(NS(force_image_size=448, downsample_ratio=0.5, vision_config=NS(patch_size=14)))
    256
    >>> image_tokens_per_tile(NS(force_image_size=448, downsample_ratio=0.5, vision_config=NS(patch_size=28)))
    64
    """
    size = config.force_image_size or config.vision_config.image_size
    return int((size // config.vision_config.patch_size) ** 2 * config.downsample_ratio**2)


def _register() -> None:
    from swift.llm import register_template
    from swift.llm.template.template.internvl import Internvl2Template, _internvl2_system
    from swift.llm.template.template.utils import ChatmlTemplateMeta

    class BookInternvl2Template(Internvl2Template):
        """ms-swift's InternVL2 template with the image-token count read from the model's config."""

        @property
        def num_image_token(self) -> int:  # type: ignore[override]
            return image_tokens_per_tile(self.config)

    register_template(
        ChatmlTemplateMeta(TEMPLATE, default_system=_internvl2_system, template_cls=BookInternvl2Template),
        exist_ok=True,
    )


if importlib.util.find_spec("swift") is not None:  # pragma: no cover - only in ms-swift's environment
    _register()
