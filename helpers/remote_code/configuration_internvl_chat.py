# Configuration of the InternVL2 chat model, written for this book.
# The keys are InternVL2-2B's ``config.json`` keys, so tools that read them
# (XTuner's InternVL dataset, LMDeploy) see the same structure.
import copy

from transformers.configuration_utils import PretrainedConfig

from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import InternLM2Config


class InternVLChatConfig(PretrainedConfig):
    """InternViT + pixel shuffle + MLP projector (``mlp1``) + InternLM2."""

    model_type = "internvl_chat"
    is_composition = True

    def __init__(
        self,
        vision_config=None,
        llm_config=None,
        use_backbone_lora=0,
        use_llm_lora=0,
        select_layer=-1,
        force_image_size=None,
        downsample_ratio=0.5,
        template=None,
        dynamic_image_size=False,
        use_thumbnail=False,
        ps_version="v1",
        min_dynamic_patch=1,
        max_dynamic_patch=6,
        **kwargs,
    ):
        super().__init__(**kwargs)
        vision_config = vision_config or {}
        llm_config = llm_config or {"architectures": ["InternLM2ForCausalLM"]}
        if isinstance(vision_config, InternVisionConfig):
            vision_config = vision_config.to_dict()
        if isinstance(llm_config, InternLM2Config):
            llm_config = llm_config.to_dict()
        arch = (llm_config.get("architectures") or ["InternLM2ForCausalLM"])[0]
        if arch != "InternLM2ForCausalLM":
            raise ValueError(f"this implementation supports InternLM2ForCausalLM only, not {arch}")
        self.vision_config = InternVisionConfig(**vision_config)
        self.llm_config = InternLM2Config(**llm_config)
        self.use_backbone_lora = use_backbone_lora
        self.use_llm_lora = use_llm_lora
        self.select_layer = select_layer
        self.force_image_size = force_image_size
        self.downsample_ratio = downsample_ratio
        self.template = template
        self.dynamic_image_size = dynamic_image_size
        self.use_thumbnail = use_thumbnail
        self.ps_version = ps_version
        self.min_dynamic_patch = min_dynamic_patch
        self.max_dynamic_patch = max_dynamic_patch
        self.tie_word_embeddings = self.llm_config.tie_word_embeddings

    def to_dict(self):
        output = copy.deepcopy(self.__dict__)
        output["vision_config"] = self.vision_config.to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        output["model_type"] = self.__class__.model_type
        return output
