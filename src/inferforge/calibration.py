"""Calibration data: the one set of samples every INT8 and FP8 path reads.

Static INT8 picks each tensor's scale from the values it sees here, so these samples must
look like production inputs. They come from the user (a folder of images preprocessed by an
``ImagePipeline``, a folder of ``.npy``/``.npz``, or a dataset factory), or else from the
validation data; inputs generated from the spec are the last resort and come with a loud
warning, because random noise calibrates ranges no real input has.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from inferforge.data import Dataset, check_finite, generated_dataset, load_dataset
from inferforge.errors import DataError
from inferforge.types import ModelSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
WHAT = "calibration data"  # how every message names these samples, never "validation data"
NOT_REPRESENTATIVE = ("calibrating INT8/FP8 on inputs generated from the spec: they are not representative, so "
                      "INT8 accuracy may be poor or misjudged. Pass --calibration (images, .npy/.npz or a "
                      "dataset factory) or --data with real samples.")


def load_calibration(ref: str | None, spec: ModelSpec, samples: int = 128, *, fallback: Dataset | None = None,
                     pipeline: str | None = None) -> Dataset:
    """Up to ``samples`` calibration samples.

    ``ref``: a folder of images (needs ``pipeline``, an ``ImagePipeline`` text such as
    ``resize=256,crop=224,color=rgb,scale=0.00392157,mean=...,std=...``), a folder of
    .npy/.npz, an .npz file, or ``file.py:function``. Without ``ref``, ``fallback`` (the
    validation data) is used when it is real; otherwise inputs are generated from the spec
    with a warning. Raises DataError when the data is missing, does not fit the spec, or holds NaN or Inf.
    """
    if samples < 1:
        raise DataError(f"calibration needs at least 1 sample, not {samples}")
    if ref is not None:
        dataset = _image_folder(Path(ref), spec, samples, pipeline) if _is_image_folder(ref) else \
            load_dataset(ref, spec, WHAT)
        return _first(dataset, samples, f"calibration {dataset.origin}")
    if fallback is not None and not fallback.generated:
        return _first(fallback, samples, f"calibration from the validation data ({fallback.origin})")
    warnings.warn(f"inferforge: {NOT_REPRESENTATIVE}", stacklevel=2)
    return generated_dataset(spec, samples, seed=7)


def _is_image_folder(ref: str) -> bool:
    path = Path(ref)
    return path.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())


def _image_folder(path: Path, spec: ModelSpec, samples: int, pipeline: str | None) -> Dataset:
    from inferforge.preprocess import ImagePipeline

    floats = [s for s in spec.inputs if s.is_float]
    if pipeline is None:
        raise DataError(f"{path} holds images: say how to preprocess them with --calibration-pipeline, e.g. "
                        "resize=256,crop=224,color=rgb,scale=0.00392157,mean=0.485/0.456/0.406,"
                        "std=0.229/0.224/0.225,layout=NCHW")
    if len(spec.inputs) != 1 or not floats:
        raise DataError(f"a folder of images calibrates a model with one float image input; this model takes "
                        f"{', '.join(str(s) for s in spec.inputs)}: give .npy/.npz or a dataset factory instead")
    images = ImagePipeline.parse(pipeline).load_folder(path, limit=samples)
    inputs = {floats[0].name: images.astype(np.float32, copy=False)}
    origin = f"images in {path} ({pipeline})"
    check_finite(inputs, origin, WHAT)  # e.g. a pipeline whose std has a 0
    return Dataset(inputs, None, origin)


def _first(dataset: Dataset, samples: int, origin: str) -> Dataset:
    count = min(samples, len(dataset))
    return Dataset(dataset.take(count), None, f"{origin}, {count} samples")
