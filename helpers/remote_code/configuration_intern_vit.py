# Configuration of the InternViT vision encoder, written for this book.
# Field names and defaults follow InternVL2-2B's ``vision_config`` (InternViT-300M-448px).
# Depends on transformers only, so it can ship inside a model directory as remote code.
from transformers.configuration_utils import PretrainedConfig


class InternVisionConfig(PretrainedConfig):
    """InternViT: a ViT with layer scale, used by InternVL2 as ``vision_model``."""

    model_type = "intern_vit_6b"

    def __init__(
        self,
        num_channels=3,
        patch_size=14,
        image_size=448,
        qkv_bias=True,
        hidden_size=1024,
        num_attention_heads=16,
        intermediate_size=4096,
        qk_normalization=False,
        num_hidden_layers=24,
        use_flash_attn=True,
        hidden_act="gelu",
        norm_type="layer_norm",
        layer_norm_eps=1e-6,
        dropout=0.0,
        drop_path_rate=0.0,
        attention_dropout=0.0,
        initializer_range=0.02,
        initializer_factor=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.image_size = image_size
        self.qkv_bias = qkv_bias
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.qk_normalization = qk_normalization
        self.num_hidden_layers = num_hidden_layers
        self.use_flash_attn = use_flash_attn
        self.hidden_act = hidden_act
        self.norm_type = norm_type
        self.layer_norm_eps = layer_norm_eps
        self.dropout = dropout
        self.drop_path_rate = drop_path_rate
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.initializer_factor = initializer_factor
