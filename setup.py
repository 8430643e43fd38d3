"""Package metadata and console scripts for tfface."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "tfface" / "__init__.py").read_text()).group(1)

setup(
    name="tfface",
    version=VERSION,
    description="Train deep face-recognition models in TensorFlow 2 / Keras 3 and ship them to production.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tfface", "tfface.*"]),
    install_requires=[
        "tensorflow>=2.16",  # Keras 3
        "tensorboard",  # tf.summary needs it; TensorFlow 2.21 no longer installs it
        "numpy",
        "absl-py",
        "opencv-python-headless",
        "mtcnn",  # face detection + 5 landmarks for tfface-align; ships its weights in the wheel (offline)
    ],
    extras_require={
        # matplotlib: its wheel ships a real face photo (sample_data/grace_hopper.jpg) the detector tests use,
        # Pillow writes the CMYK JPEGs of the bad-input tests.
        # faiss-cpu: the Gallery's FAISS backend is tested in CI, not skipped.
        # tf2onnx + onnxruntime: the ONNX export is tested in CI too.
        "dev": ["pytest", "pytest-xdist", "scikit-learn", "ruff", "matplotlib>=3.6", "pillow", "faiss-cpu",
                "tf2onnx>=1.17", "onnxruntime"],
        "faiss": ["faiss-cpu"],
        # tfface-eval --plots_dir and tfface.eval.plots (ROC, score histogram, CMC, distractor curve).
        "plots": ["matplotlib>=3.6"],
        "onnx": ["tf2onnx>=1.17", "onnxruntime"],  # 1.17.0 works with TF 2.21, numpy 2.4, protobuf 7
        # tfface-convert: reads arcface_torch / InsightFace ONNX weights (no onnx-tf, no onnxruntime).
        "convert": ["onnx"],
        # Tests of tfface-convert build the PyTorch reference networks and export them to ONNX. 2.13.0 is the
        # CPU build available offline here; any torch with the TorchScript ONNX exporter (dynamo=False) works.
        "torch-test": ["torch==2.13.0", "onnx"],
    },
    entry_points={
        "console_scripts": [
            "tfface-train=tfface.cli.train:run",
            "tfface-eval=tfface.cli.evaluate:run",
            "tfface-export=tfface.cli.export:run",
            "tfface-synth=tfface.cli.synth:run",
            "tfface-convert=tfface.cli.convert:run",
            "tfface-align=tfface.cli.align:run",
            "tfface-prepare=tfface.cli.prepare:run",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
