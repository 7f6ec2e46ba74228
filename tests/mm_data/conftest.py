import pytest

from aria_train.model.vision_config import vision_preset
from aria_train.data.multimodal import ImageConfig, SampleRenderer, write_synthetic_shards
from aria_train.data.tokenizer import load_tokenizer


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer("")


@pytest.fixture(scope="session")
def tiny_projector():
    return vision_preset("tiny")[1]


@pytest.fixture(scope="session")
def image_cfg(tiny_projector):
    return ImageConfig.from_projector(tiny_projector)  # medium: 70 px crops, 4 queries


@pytest.fixture(scope="session")
def renderer(tok, image_cfg):
    return SampleRenderer(tok, image_cfg)


@pytest.fixture(scope="session")
def syn_dir(tmp_path_factory):
    """48 mixed synthetic samples in 4 shards of 12 (read-only: tests must not modify it)."""
    out = tmp_path_factory.mktemp("syn")
    write_synthetic_shards(out, 48, seed=7, samples_per_shard=12)
    return out
