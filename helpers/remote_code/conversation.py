# The chat template of InternVL2 models built on InternLM2 ("internlm2-chat"),
# written for this book. It renders exactly what the official template renders:
#   <|im_start|>system\n{system}<|im_end|><|im_start|>user\n{q}<|im_end|><|im_start|>assistant\n
import dataclasses
from typing import List, Optional, Tuple

INTERNVL_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)


@dataclasses.dataclass
class Conversation:
    """A conversation rendered in the MPT separator style (role + message + sep)."""

    name: str
    system_template: str = "{system_message}"
    system_message: str = ""
    roles: Tuple[str, str] = ("USER", "ASSISTANT")
    messages: List[List[Optional[str]]] = dataclasses.field(default_factory=list)
    sep: str = "\n"

    def set_system_message(self, system_message: str) -> None:
        self.system_message = system_message

    def append_message(self, role: str, message: Optional[str]) -> None:
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        ret = self.system_template.format(system_message=self.system_message) + self.sep
        for role, message in self.messages:
            ret += role + message + self.sep if message else role
        return ret

    def copy(self) -> "Conversation":
        return dataclasses.replace(self, messages=[list(m) for m in self.messages])


conv_templates = {}


def register_conv_template(template: Conversation) -> None:
    conv_templates[template.name] = template


def get_conv_template(name: str) -> Conversation:
    if name not in conv_templates:
        raise KeyError(f"unknown chat template {name!r}; known: {sorted(conv_templates)}")
    return conv_templates[name].copy()


register_conv_template(
    Conversation(
        name="internlm2-chat",
        system_template="<|im_start|>system\n{system_message}",
        system_message=INTERNVL_SYSTEM_MESSAGE,
        roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
        sep="<|im_end|>",
    )
)
