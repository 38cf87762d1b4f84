from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _data_files(*roots: str) -> list[tuple[str, list[str]]]:
    """configs/ and the bundled demo and smoke models, installed under <prefix>/share/videosys for non-editable
    installs."""
    out: dict[str, list[str]] = {}
    for root in roots:
        base = HERE / root
        for path in sorted(base.rglob("*") if base.is_dir() else [base]):
            if path.is_file() and "__pycache__" not in path.parts:
                rel = path.relative_to(HERE)
                out.setdefault(str(Path("share/videosys") / rel.parent), []).append(str(rel))
    return sorted(out.items())


setup(
    name="videosys",
    version="0.1.0",
    description="A unified inference system for text-to-video diffusion transformers with Pyramid Attention Broadcast",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["videosys", "videosys.*"]),
    include_package_data=True,
    data_files=_data_files("configs", "models/README.md", "models/latte-demo", "models/latte-smoke", "models/opensora-smoke",
                           "models/opensora-plan-smoke"),
    install_requires=[
        "torch>=2.3",
        "transformers>=4.40",
        "diffusers>=0.30",
        "einops>=0.7",
        "omegaconf>=2.3",
        "imageio>=2.31",
        "imageio-ffmpeg>=0.4.9",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "tqdm>=4.60",
        "sentencepiece>=0.1.99",
        "protobuf>=3.20",  # transformers needs it to read a T5 folder holding only spiece.model
        "pillow>=9",
        "packaging",
        "pyyaml>=6",
        "ray>=2.20",  # the multi-GPU worker pool (also the CPU/gloo pool the tests start)
        "psutil>=5.9",
    ],
    extras_require={
        "flash": ["flash-attn>=2.5"],
        # triton: its CPU interpreter runs the fused kernels' tests (tests/test_kernels.py; skipped without it)
        "test": ["pytest>=7", "pytest-timeout>=2",
                 "triton>=3.2; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    },
    entry_points={"console_scripts": ["videosys=videosys.cli:main"]},
)
