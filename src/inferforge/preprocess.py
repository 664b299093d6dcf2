"""Image preprocessing as data: decode, resize, crop, color, normalize, lay out.

One ``ImagePipeline`` serves both the server's image adapter (one request's photos into
the model's float input) and INT8 calibration (a folder of photos into a batch), so a
model is calibrated on exactly what it will be served. It knows nothing of either.

The order is fixed and is torchvision's classic one: resize on 8-bit pixels (as PIL
does), center crop, then ``(pixel * scale - mean) / std`` per channel in float.
OpenCV is imported inside the functions so that ``import inferforge`` stays light.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np

from inferforge.errors import DataError, SpecError

Color = Literal["rgb", "bgr", "gray"]
Layout = Literal["NCHW", "NHWC"]
Interpolation = Literal["auto", "area", "linear", "cubic", "nearest"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_DTYPES = ("float32", "float16", "float64")
_FIELDS = ("resize", "crop", "color", "scale", "mean", "std", "layout", "dtype", "interpolation")
_EXAMPLE = "resize=256,crop=224,color=rgb,scale=0.00392157,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW"


@dataclass(frozen=True)
class ImagePipeline:
    """What to do to one decoded image (H x W x 3 BGR uint8, as ``decode_image`` gives).

    ``resize``: an int sets the shorter side (the longer one keeps the aspect ratio, truncated
    as torchvision does); ``(H, W)`` sets both. ``crop``: a centered ``(H, W)`` window.
    ``mean``/``std``: one value per channel (or one for all), applied after ``scale``.
    ``interpolation="auto"`` takes area averaging when shrinking (no aliasing), linear otherwise.
    Raises SpecError, listing every problem, when the fields do not make sense together.
    """

    resize: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    color: Color = "rgb"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Layout = "NCHW"
    dtype: str = "float32"
    interpolation: Interpolation = "auto"

    def __post_init__(self) -> None:
        problems = []
        sizes = ([self.resize] if isinstance(self.resize, int) else list(self.resize or ())) + list(self.crop or ())
        if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
            problems.append(f"resize and crop sizes must be whole numbers of pixels >= 1 (resize={self.resize}, "
                            f"crop={self.crop})")
        for name, value, allowed in (("color", self.color, Color), ("layout", self.layout, Layout),
                                     ("interpolation", self.interpolation, Interpolation)):
            if value not in get_args(allowed):
                problems.append(f"{name} {value!r} is not one of {', '.join(get_args(allowed))}")
        if self.dtype not in _DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                problems.append(f"{name} has {len(values)} values; {self.color} images have {self.channels} "
                                f"channel(s): give 1 or {self.channels}")
        if any(s == 0 for s in self.std):
            problems.append("std must not be 0")
        if problems:
            raise SpecError("image pipeline: " + "; ".join(problems))

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(H, W) of every output image, or None when it depends on each image's aspect ratio."""
        if self.crop is not None:
            return self.crop
        return self.resize if isinstance(self.resize, tuple) else None

    def output_shape(self) -> tuple[int | None, ...]:
        """One output image's shape in ``layout`` (no batch dimension); None where it varies."""
        h, w = self.output_size or (None, None)
        return (self.channels, h, w) if self.layout == "NCHW" else (h, w, self.channels)

    # ---- running -----------------------------------------------------------------------------------------

    def apply(self, image: np.ndarray) -> np.ndarray:
        """One decoded image (H x W x 3 BGR, or H x W gray) -> one model-ready array in ``layout``.

        Raises DataError when the image is smaller than ``crop`` (add a resize).
        """
        pixels = self._to_color(image)
        pixels = self._resized(pixels)
        if self.crop is not None:
            pixels = _center_crop(pixels, self.crop)
        values: np.ndarray = pixels.astype(np.float32) * np.float32(self.scale)
        values = (values - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            values = values.transpose(2, 0, 1)
        return np.ascontiguousarray(values, dtype=self.dtype)

    def _to_color(self, image: np.ndarray) -> np.ndarray:
        """H x W x channels in the pipeline's color order (input: BGR, BGRA, or gray)."""
        import cv2

        if image.ndim == 2:
            image = image[:, :, None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise DataError(f"an image must be H x W, H x W x 1, x 3 (BGR) or x 4 (BGRA); got shape {image.shape}")
        if image.shape[2] == 4:
            image = image[:, :, :3]
        if self.color == "gray":
            return image if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
        if image.shape[2] == 1:
            image = np.repeat(image, 3, axis=2)
        return image[:, :, ::-1] if self.color == "rgb" else image

    def _resized(self, image: np.ndarray) -> np.ndarray:
        import cv2

        if self.resize is None:
            return image
        h, w = image.shape[:2]
        if isinstance(self.resize, tuple):
            new_h, new_w = self.resize
        elif h <= w:
            new_h, new_w = self.resize, int(self.resize * w / h)
        else:
            new_h, new_w = int(self.resize * h / w), self.resize
        if (new_h, new_w) == (h, w):
            return image
        method = self.interpolation
        if method == "auto":
            method = "area" if new_h <= h and new_w <= w else "linear"
        flags = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC,
                 "nearest": cv2.INTER_NEAREST}[method]
        resized = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=flags)
        return resized[:, :, None] if resized.ndim == 2 else resized  # OpenCV drops a single channel

    def load_folder(self, path: str | Path, limit: int | None = None) -> np.ndarray:
        """The images of a folder (sorted by name; .jpg .jpeg .png .bmp), preprocessed and stacked
        into one batch [N, ...]. ``limit`` takes the first N. Raises DataError naming every file
        that could not be read, or when the images do not come out the same size (add a crop)."""
        folder = Path(path)
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist or is not a folder")
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        files = files[:limit] if limit is not None else files
        images, problems = [], []
        for file in files:
            try:
                images.append(self.apply(decode_image(file.read_bytes())))
            except DataError as exc:
                problems.append(f"{file.name}: {exc}")
        if problems:
            raise DataError(f"cannot use {len(problems)} of the {len(files)} images in {folder}: "
                            + "; ".join(problems))
        return stack_images(images, what=f"the images in {folder}")

    # ---- text and JSON forms -----------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> ImagePipeline:
        """``resize=256,crop=224,color=rgb,scale=0.00392157,mean=0.485/0.456/0.406,std=...,layout=NCHW``.

        ``resize``/``crop`` take ``N`` or ``HxW``; ``mean``/``std`` separate channels with ``/``.
        Unnamed fields keep their defaults. Raises SpecError listing every bad part.
        """
        return cls.parse_items(text.split(",") if text.strip() else [])

    @classmethod
    def parse_items(cls, items: Sequence[str]) -> ImagePipeline:
        """The ``key=value`` parts of a compact pipeline string, already split on commas."""
        document: dict[str, Any] = {}
        problems = []
        for item in items:
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not value:
                problems.append(f"{item.strip()!r} is not key=value")
            elif key not in _FIELDS:
                problems.append(f"unknown key {key!r} (known: {', '.join(_FIELDS)})")
            else:
                try:
                    document[key] = _parse_value(key, value)
                except ValueError:
                    problems.append(f"{key}={value} is not {_HINTS.get(key, 'a valid value')}")
        if problems:
            raise SpecError(f"image pipeline {','.join(items)!r}: " + "; ".join(problems) + f". Example: {_EXAMPLE}")
        return cls.from_json(document)

    def to_json(self) -> dict[str, Any]:
        return {"resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
                "crop": list(self.crop) if self.crop else None, "color": self.color, "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std), "layout": self.layout, "dtype": self.dtype,
                "interpolation": self.interpolation}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImagePipeline:
        """The inverse of ``to_json``; absent keys keep their defaults. Raises SpecError."""
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise SpecError(f"image pipeline: unknown key(s) {', '.join(unknown)} (known: {', '.join(_FIELDS)})")
        fields: dict[str, Any] = {k: v for k, v in data.items() if v is not None}
        try:
            for key in ("resize", "crop"):
                if isinstance(fields.get(key), list | tuple):
                    fields[key] = _size_pair(fields[key])
            if isinstance(fields.get("crop"), int):
                fields["crop"] = (fields["crop"], fields["crop"])
            for key in ("mean", "std"):
                if key in fields:
                    value = fields[key]
                    fields[key] = tuple(float(v) for v in (value if isinstance(value, list | tuple) else [value]))
            if "scale" in fields:
                fields["scale"] = float(fields["scale"])
        except (TypeError, ValueError) as exc:
            raise SpecError(f"image pipeline {dict(data)}: {exc}") from None
        return cls(**fields)


_HINTS = {"resize": "N (shorter side) or HxW", "crop": "N or HxW", "scale": "a number",
          "mean": "numbers separated by /", "std": "numbers separated by /"}


def _parse_value(key: str, value: str) -> Any:
    """One compact value to its JSON form; raises ValueError."""
    if key in ("resize", "crop"):
        h, sep, w = value.lower().partition("x")
        return [int(h), int(w)] if sep else int(value)
    if key == "scale":
        return float(value)
    if key in ("mean", "std"):
        return [float(v) for v in value.split("/")]
    return value


def _size_pair(value: Sequence[Any]) -> tuple[int, int]:
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise ValueError(f"a size must be [H, W] in whole pixels, got {list(value)}")
    return cast(tuple[int, int], tuple(value))


def _center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = image.shape[:2]
    crop_h, crop_w = size
    if crop_h > h or crop_w > w:
        raise DataError(f"the image is {h}x{w} after resizing, smaller than the {crop_h}x{crop_w} crop: "
                        "resize it first (resize=N) or crop less")
    top, left = int(round((h - crop_h) / 2)), int(round((w - crop_w) / 2))  # torchvision's rounding
    return image[top:top + crop_h, left:left + crop_w]


# A few-kB PNG can declare a gigapixel image; OpenCV's own cap is about 1e9 pixels (3 GB decoded).
# Read when cv2 is first imported, so it is set with this module, before any cv2 import here.
MAX_IMAGE_PIXELS = 1 << 26  # 64 megapixels, e.g. 8192 x 8192
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))


def decode_image(data: bytes) -> np.ndarray:
    """Encoded bytes (JPEG, PNG, BMP, WebP, TIFF...) -> H x W x 3 BGR uint8, EXIF rotation applied.

    Raises DataError when OpenCV cannot decode them (empty, truncated, or not an image).
    """
    import cv2

    if not data:
        raise DataError("the image is empty (0 bytes)")
    declared = declared_size(data)
    if declared is not None and declared[0] * declared[1] > MAX_IMAGE_PIXELS:
        raise DataError(f"the image declares {declared[0]} x {declared[1]} pixels; images above "
                        f"{MAX_IMAGE_PIXELS:,} pixels are refused (resize it before sending)")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # OpenCV raises (rather than returning None) for an image above the pixel cap
        image = None
    if image is None:
        raise DataError(f"{len(data)} bytes starting {data[:8]!r} are not an image OpenCV can decode "
                        "(send JPEG, PNG or BMP bytes, not base64 text or a file name; images above "
                        f"{int(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS']):,} pixels are refused)")
    return image


def declared_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG, JPEG or BMP header, read before any pixel is decoded.

    The environment cap above only applies when this module imports cv2 first; this check
    does not depend on import order. None for formats it does not parse (OpenCV's cap remains).
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:2] == b"\xff\xd8":
        offset = 2
        while offset + 9 <= len(data) and data[offset] == 0xFF:
            marker, length = data[offset + 1], struct.unpack(">H", data[offset + 2:offset + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                height, width = struct.unpack(">HH", data[offset + 5:offset + 9])
                return width, height
            offset += 2 + length
    return None


def stack_images(images: Sequence[np.ndarray], what: str) -> np.ndarray:
    """Preprocessed images into one batch; raises DataError naming the sizes when they differ."""
    shapes = sorted({image.shape for image in images})
    if len(shapes) > 1:
        raise DataError(f"{what} come out in {len(shapes)} different shapes {shapes}: set crop=HxW (or "
                        "resize=HxW) so that every image has the same size")
    return np.stack(images)
