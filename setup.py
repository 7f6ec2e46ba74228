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
        # webdataset: the reference writer of shard layouts in tests; tokenizers: tests build a
        # transformers tokenizer directory offline (both read nothing at run time).
        "dev": ["pytest", "webdataset", "tokenizers"],
        # Optional GPU accelerators; the plain-torch path never needs them.
        "gpu": ["transformer-engine", "apex", "grouped_gemm"],
    },
)
