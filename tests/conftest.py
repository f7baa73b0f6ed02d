"""Shared fixtures. Tests never touch the network (HF_HUB_OFFLINE=1); tiny models are built here.

Tests that need the research-only photos in ``../shared/data`` skip when it is absent.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (research-only face photos)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    import skimage.data

    return skimage.data.astronaut()  # public domain, 512x512 RGB, one face


@pytest.fixture(scope="session")
def analyzer():
    from facemakeup.faces import FaceAnalyzer

    return FaceAnalyzer(threads=1)
