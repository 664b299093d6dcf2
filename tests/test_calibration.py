"""Calibration samples: from images, arrays, a factory or the validation data; generated only with a warning."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets

from inferforge.calibration import load_calibration
from inferforge.data import Dataset, generated_dataset
from inferforge.errors import DataError
from inferforge.types import ModelSpec, TensorSpec

IMAGES = Path(sklearn.datasets.__file__).parent / "images"  # china.jpg, flower.jpg: real photos
IMAGE_SPEC = ModelSpec((TensorSpec.parse("image:float32[B,3,32,32]"),))
PIPELINE = "resize=40,crop=32,color=rgb,scale=0.00392157,mean=0.485/0.456/0.406,std=0.229/0.224/0.225"


def test_a_folder_of_photos_is_preprocessed_by_the_pipeline(tmp_path: Path) -> None:
    for image in IMAGES.glob("*.jpg"):
        shutil.copy(image, tmp_path / image.name)
    calibration = load_calibration(str(tmp_path), IMAGE_SPEC, samples=8, pipeline=PIPELINE)
    images = calibration.inputs["image"]
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.float32
    assert -2.2 < images.min() < 0 < images.max() < 2.7  # normalized like ImageNet inputs, not raw pixels
    assert "images in" in calibration.origin and "2 samples" in calibration.origin


def test_photos_without_a_pipeline_say_how_to_give_one(tmp_path: Path) -> None:
    shutil.copy(IMAGES / "china.jpg", tmp_path)
    with pytest.raises(DataError, match="--calibration-pipeline"):
        load_calibration(str(tmp_path), IMAGE_SPEC)


def test_arrays_are_capped_at_the_sample_count(tmp_path: Path) -> None:
    np.save(tmp_path / "image.npy", np.random.default_rng(0).standard_normal((50, 3, 32, 32)).astype(np.float32))
    calibration = load_calibration(str(tmp_path), IMAGE_SPEC, samples=16)
    assert len(calibration) == 16 and calibration.labels is None


def test_real_validation_data_is_the_default() -> None:
    validation = Dataset({"image": np.ones((10, 3, 32, 32), np.float32)}, np.zeros(10), "folder /data")
    calibration = load_calibration(None, IMAGE_SPEC, samples=4, fallback=validation)
    assert len(calibration) == 4 and "validation data (folder /data)" in calibration.origin


def test_generated_inputs_come_with_a_loud_warning() -> None:
    with pytest.warns(UserWarning, match="not representative"):
        calibration = load_calibration(None, IMAGE_SPEC, samples=4, fallback=generated_dataset(IMAGE_SPEC, 8))
    assert calibration.generated and len(calibration) == 4
