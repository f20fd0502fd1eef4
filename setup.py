"""eva-maskdepth: Colab-first notebooks + the `eva_helpers` package for mask and depth prediction."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "eva_helpers" / "__init__.py").read_text()).group(1)
# Loose lower bounds only: installing on Colab must never replace its torch/torchvision/numpy.
REQUIREMENTS = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="eva-maskdepth",
    version=VERSION,
    description="Mask and depth prediction from (background, background+object) pairs: dataset build, training, evaluation.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["eva_helpers", "eva_helpers.*"]),
    include_package_data=True,
    # The embedded sample (raw assets + the prebuilt 64 px dataset) and data_manifest.json ship inside the package,
    # so Colab installs can use them. Real files only: pip unpacks a symlink in a GitHub zip as a text file.
    package_data={"eva_helpers": ["sample_assets/*", "sample_assets/*/*", "sample_data/*/*", "sample_data/*/shards/*",
                                  "data_manifest.json"]},
    python_requires=">=3.11,<3.14",
    install_requires=REQUIREMENTS,
    extras_require={
        # The Colab default depth teacher (Depth Anything V2 Small); the offline path imports none of it.
        "teacher": ["transformers>=4.45", "safetensors>=0.4"],
        # HEIC/HEIF photos (the iPhone default) for eva predict and notebook 05; without it they are refused in one line.
        "heic": ["pillow-heif>=0.16"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # `make test-fast` on every core: the fast tests in half the time on 2
            "hypothesis>=6.100",
            "papermill>=2.6",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "scikit-image>=0.24",
            "transformers>=4.45",
            "safetensors>=0.4",
            "pillow-heif>=0.16",
            "tensorboard>=2.14",  # the tests that read back the TensorBoard logs a run writes (they skip without it)
            "ruff>=0.6",
        ],
    },
    entry_points={"console_scripts": ["eva=eva_helpers.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
    ],
)
