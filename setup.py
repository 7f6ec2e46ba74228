from setuptools import find_packages, setup

setup(
    name="aria-train",
    version="0.1.0",
    description="PyTorch-native, Megatron-style pretraining of ARIA-class multimodal MoE models",
    packages=find_packages(include=["aria_train", "aria_train.*"]),
    package_data={"aria_train": ["data/assets/*"]},
    python_requires=">=3.10",
    install_requires=[
        # Install torch first (CPU: `pip install torch==2.13.0`), or pip pulls a CUDA build.
        "torch>=2.4",
        "megatron-core==0.16.1",
        "numpy",
        "sentencepiece",
        "pyyaml",
        "wandb",
        "transformers>=5.0",
        "safetensors",
        "pillow",
        "matplotlib",  # tools/expert_heatmap.py
    ],
    extras_require={
        # import-linter: tests/test_architecture.py; webdataset: the reference writer of shard
        # layouts in tests; tokenizers: tests build a transformers tokenizer directory offline.
        "dev": ["pytest", "import-linter>=2.12", "webdataset", "tokenizers"],
        # Corpus curation (tools/curate.py, tools/cluster_pack.py). datatrove's MinHash and exact
        # dedup hash str with xxhash < 4 (its own `processing` extra pins it); its JSONL reader
        # needs orjson; spacy provides the offline (blank, rule-based) English word tokenizer that
        # datatrove uses for shingles and the Gopher/C4/FineWeb filters: no model download.
        "curate": ["datatrove==0.10.1", "xxhash<4", "orjson", "spacy>=3.8", "faiss-cpu", "scipy"],
        # Optional GPU accelerators; the plain-torch path never needs them.
        "gpu": ["transformer-engine", "apex", "grouped_gemm"],
    },
)
