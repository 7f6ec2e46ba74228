"""ARIA's chat template for post-training, and which tokens carry loss.

A conversation renders as

    <|im_start|>user\\n{text and image blocks}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n

Loss falls on the assistant's answers and their closing `<|im_end|>` (so the model learns to
stop), never on the role headers, the user's turns, the separating newlines or image tokens.

Messages are dicts {"role": "system"|"user"|"assistant", "content": str | list of parts}, a
part being {"type": "text", "text": ...} or {"type": "image", "image": <a reference the caller
resolves: a path, or an index into a shard sample's images>}.
"""

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from aria_train.data.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass
class ChatPiece:
    kind: str  # "tokens" (ids in `value`), "text" (a string to encode) or "image" (a reference)
    value: object
    is_target: bool


def conversation_pieces(messages: list, tokenizer, source: str = "conversation") -> Iterator[ChatPiece]:
    """The template as a stream of pieces; renderers turn texts and images into tokens their way."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{source}: no messages")
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    for index, role in enumerate(roles):
        if role not in ROLES:
            raise DataError(f"{source}: message {index} has role {role!r}, expected one of {', '.join(ROLES)}")
    if "assistant" not in roles:
        raise DataError(f"{source}: no assistant turn to learn from")
    for index, (message, role) in enumerate(zip(messages, roles)):
        answer = role == "assistant"
        yield ChatPiece("tokens", [tokenizer.im_start], False)
        yield ChatPiece("text", f"{role}\n", False)
        for part in _parts(message.get("content"), source, index):
            if part["type"] == "text":
                yield ChatPiece("text", part["text"], answer)
            elif answer:
                raise DataError(f"{source}: message {index} is the assistant's and holds an image")
            else:
                yield ChatPiece("image", part["image"], False)
        yield ChatPiece("tokens", [tokenizer.im_end], answer)
        yield ChatPiece("text", "\n", False)


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
    messages: list,
    tokenizer,
    image_block: Optional[Callable[[object], list[int]]] = None,
    source: str = "conversation",
) -> RenderedConversation:
    """Renders `messages`; `image_block(image)` returns the image's token ids
    (`<fim_prefix>` + `<|img|>` x n + `<fim_suffix>`)."""
    rendered = RenderedConversation([], [])
    for piece in conversation_pieces(messages, tokenizer, source):
        if piece.kind == "image":
            if image_block is None:
                raise DataError(f"{source}: the conversation has an image but this stage takes no images")
            ids = image_block(piece.value)
            rendered.images.append(piece.value)
        else:
            ids = tokenizer.encode(piece.value) if piece.kind == "text" else piece.value
        rendered.tokens.extend(ids)
        rendered.targets.extend([piece.is_target] * len(ids))
    return rendered


def _parts(content, source: str, index: int) -> list:
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
