"""ARIA's chat template for post-training, and which tokens carry loss.

A conversation renders as

    <|im_start|>user\\n{text and image blocks}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n

Loss falls on the assistant's answers and their closing `<|im_end|>` (so the model learns to
stop), never on the role headers, the user's turns, the separating newlines or image tokens.

Messages are dicts {"role": "system"|"user"|"assistant", "content": str | list of parts}, a
part being {"type": "text", "text": ...} or {"type": "image", "image": <anything the caller's
image_block understands>}.
"""

from dataclasses import dataclass, field
from typing import Callable, Optional

from aria_train.data.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass
class RenderedConversation:
    tokens: list[int]
    targets: list[bool]  # targets[t]: token t is something the model is trained to produce
    images: list = field(default_factory=list)  # in the order of their blocks in `tokens`

    def labels_and_loss_mask(self) -> tuple[list[int], list[float]]:
        """Next-token labels and mask: position t predicts token t + 1."""
        labels = self.tokens[1:] + [self.tokens[-1]]
        mask = [1.0 if target else 0.0 for target in self.targets[1:]] + [0.0]
        return labels, mask


def render_conversation(
    messages: list[dict],
    tokenizer,
    image_block: Optional[Callable[[object], list[int]]] = None,
    source: str = "conversation",
) -> RenderedConversation:
    """Renders `messages`; `image_block(image)` returns the image's token ids
    (`<fim_prefix>` + `<|img|>` x n + `<fim_suffix>`)."""
    tokens: list[int] = []
    targets: list[bool] = []
    images: list = []

    def emit(ids: list[int], is_target: bool) -> None:
        tokens.extend(ids)
        targets.extend([is_target] * len(ids))

    if not messages:
        raise DataError(f"{source}: no messages")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise DataError(f"{source}: message {index} has role {role!r}, expected one of {', '.join(ROLES)}")
        answer = role == "assistant"
        emit([tokenizer.im_start] + tokenizer.encode(f"{role}\n"), False)
        for part in _parts(message.get("content"), source, index):
            if part["type"] == "text":
                emit(tokenizer.encode(part["text"]), answer)
            else:
                if image_block is None:
                    raise DataError(f"{source}: message {index} has an image but this stage takes no images")
                if answer:
                    raise DataError(f"{source}: message {index} is the assistant's and holds an image")
                emit(image_block(part["image"]), False)
                images.append(part["image"])
        emit([tokenizer.im_end], answer)
        emit(tokenizer.encode("\n"), False)
    if not any(targets):
        raise DataError(f"{source}: no assistant turn to learn from")
    return RenderedConversation(tokens, targets, images)


def _parts(content, source: str, index: int) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise DataError(f"{source}: message {index} content must be a string or a list of parts")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            continue
        if kind == "image" and "image" in part:
            continue
        raise DataError(f"{source}: message {index} has a malformed part {str(part)[:60]!r}")
    return content
