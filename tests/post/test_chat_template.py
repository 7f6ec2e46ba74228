import pytest

from aria_train.data.chat import render_conversation
from aria_train.data.errors import DataError
from aria_train.data.tokenizer import load_tokenizer

TOK = load_tokenizer("")
IMAGE_TOKENS = 4  # a tiny stand-in for 128/256 queries


def image_block(image):
    return [TOK.fim_prefix] + [TOK.img] * IMAGE_TOKENS + [TOK.fim_suffix]


def test_two_turns_with_an_image_carry_loss_exactly_on_the_answers():
    messages = [
        {"role": "user", "content": [{"type": "image", "image": "cat.png"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "What colour?"},
        {"role": "assistant", "content": "Black."},
    ]
    rendered = render_conversation(messages, TOK, image_block)

    user = TOK.encode("user\n")
    assistant = TOK.encode("assistant\n")
    newline = TOK.encode("\n")
    answer1, answer2 = TOK.encode("A cat."), TOK.encode("Black.")
    expected = (
        [TOK.im_start] + user + image_block(None) + TOK.encode("What is it?") + [TOK.im_end] + newline
        + [TOK.im_start] + assistant + answer1 + [TOK.im_end] + newline
        + [TOK.im_start] + user + TOK.encode("What colour?") + [TOK.im_end] + newline
        + [TOK.im_start] + assistant + answer2 + [TOK.im_end] + newline
    )
    assert rendered.tokens == expected
    assert rendered.images == ["cat.png"]

    # The exact positions that are targets: each answer and its <|im_end|>.
    first_turn = 1 + len(user) + IMAGE_TOKENS + 2 + len(TOK.encode("What is it?")) + 1 + len(newline)
    start1 = first_turn + 1 + len(assistant)
    second_user = 1 + len(user) + len(TOK.encode("What colour?")) + 1 + len(newline)
    start2 = start1 + len(answer1) + 1 + len(newline) + second_user + 1 + len(assistant)
    expected_targets = set(range(start1, start1 + len(answer1) + 1)) | set(range(start2, start2 + len(answer2) + 1))
    assert {i for i, t in enumerate(rendered.targets) if t} == expected_targets
    assert rendered.tokens[start1 + len(answer1)] == TOK.im_end
    assert rendered.tokens[start2 + len(answer2)] == TOK.im_end
    assert not any(rendered.targets[i] for i, tok in enumerate(rendered.tokens) if tok == TOK.img)

    # Labels shift by one: position t is trained iff token t + 1 is a target.
    labels, mask = rendered.labels_and_loss_mask()
    assert labels[:-1] == rendered.tokens[1:]
    trained = {i + 1 for i, m in enumerate(mask) if m}
    assert trained == expected_targets


@pytest.mark.parametrize(
    "messages, message",
    [
        ([], "no messages"),
        ([{"role": "robot", "content": "hi"}], "role 'robot'"),
        ([{"role": "user", "content": "hi"}], "no assistant turn"),
        ([{"role": "user", "content": [{"type": "video"}]}, {"role": "assistant", "content": "x"}], "malformed part"),
    ],
)
def test_bad_conversations_fail_with_one_line(messages, message):
    with pytest.raises(DataError, match=message):
        render_conversation(messages, TOK, image_block, source="chat.jsonl:3")


def test_chat_shards_render_through_the_multimodal_pipeline(tmp_path):
    from aria_train.model.vision_config import vision_preset
    from aria_train.data.multimodal import ImageConfig, SampleRenderer, read_shard, write_synthetic_shards

    write_synthetic_shards(tmp_path, 3, seed=1, kind="chat")
    renderer = SampleRenderer(TOK, ImageConfig.from_projector(vision_preset("tiny")[1]))
    (shard,) = sorted(tmp_path.glob("*.tar"))
    for _, raw in read_shard(str(shard)):
        plan = renderer.plan(raw)
        tokens, targets = plan.tokens.tolist(), plan.target.tolist()
        # The same conversation through the standalone renderer, with the image block the plan used.
        image = plan.images[0]
        block = tokens[image.start:image.end]
        expected = render_conversation(raw.meta["messages"], TOK, lambda _: block)
        assert tokens[:-1] == expected.tokens and tokens[-1] == TOK.eod
        assert targets[:-1] == expected.targets and targets[-1]
        answers = [m["content"] for m in raw.meta["messages"] if m["role"] == "assistant"]
        trained_text = TOK.decode([t for t, g in zip(tokens, targets) if g and t not in (TOK.im_end, TOK.eod)])
        assert trained_text == "".join(answers)
