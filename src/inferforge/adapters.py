"""Input adapters: let a client send what it has (a photo, a sentence) instead of tensors.

A package may carry an adapter in its manifest (``"serve": {"adapter": {...}}``). The
adapter declares the tensors clients send (BYTES tensors, for instance) and turns one
request's tensors into the model's inputs before batching, so the batcher and the
runners never see anything but the model's own tensors.

Manifest form (files the adapter needs live in the package's ``serve/`` folder and are
checksummed in ``manifest["serve"]["sha256"]``, as artifacts are)::

    "serve": {"path": "serve", "sha256": {"tokenizer.json": "..."},
              "adapter": {"kind": "text", "input": "text", "tokenizer": "serve/tokenizer.json",
                          "max_length": 128}}
    "serve": {"path": "serve", "sha256": {},
              "adapter": {"kind": "image", "input": "image", "target": "pixel_values",
                          "pipeline": {"resize": 256, "crop": [224, 224], ...}}}

Each adapter config may carry ``"limits"`` (``InputLimits``): what one row may cost, checked
before anything is decoded. Model inputs an adapter does not fill are passed through: clients
send them as usual.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from inferforge.errors import DataError, InferforgeError, PackageError, ProtocolError, SpecError, one_line
from inferforge.preprocess import ImagePipeline, declared_size, decode_image, stack_images
from inferforge.types import Dim, ModelSpec, TensorMeta, TensorSpec, numpy_dtype

SERVE_DIR = "serve"  # inside a package: the adapter's files
TOKENIZER_FILE = "tokenizer.json"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a text adapter fills, by name
_EXAMPLES = ("text:tokenizer=path/to/tokenizer.json,max_length=128 or "
             "image:target=pixel_values,resize=256,crop=224,color=rgb,mean=0.485/0.456/0.406,std=0.229/0.224/0.225")


T = TypeVar("T")


class InputAdapter(Protocol):
    """Client-facing inputs and the conversion of one request into model inputs."""

    @property
    def inputs(self) -> tuple[TensorMeta, ...]: ...

    @property
    def rows_in_progress(self) -> int:
        """Rows being converted now: the server counts them with its queue against ``max_queue_size``."""
        ...

    async def adapt(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's inputs; ProtocolError 413 for a row over the limits, 400 for one that cannot be used."""
        ...


@dataclass(frozen=True)
class InputLimits:
    """What one row may ask of an adapter, checked before anything is decoded: a 50 MB sentence once
    tokenized for 140 s and took 7 GB, and a 67 KB PNG decodes to 8000 x 8000 pixels (192 MB).

    ``max_text_bytes``: UTF-8 bytes per sentence; 64 KiB is about 10,000 words, far past any model's
    positions (tokens beyond ``max_length`` are truncated, so the model never sees more than it takes).
    ``max_image_pixels``: width x height read from the image's header; 40 MP decodes to 120 MB, and a
    larger photo is better resized by the client than shipped (``preprocess.MAX_IMAGE_PIXELS`` stays
    the decoder's own hard cap everywhere).
    """

    max_text_bytes: int = 64 << 10
    max_image_pixels: int = 40_000_000

    def __post_init__(self) -> None:
        wrong = [f"{f.name} is {getattr(self, f.name)!r}, it must be a whole number >= 1" for f in fields(self)
                 if not isinstance(getattr(self, f.name), int) or getattr(self, f.name) < 1]
        if wrong:
            raise SpecError("input limits: " + "; ".join(wrong))

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputLimits:
        """Absent keys keep their defaults; raises SpecError for unknown keys or bad values."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise SpecError(f"input limits: unknown key(s) {', '.join(unknown)}")
        return cls(**data)


# ---- what a package's adapter is (the config) ---------------------------------------------------------------

@dataclass(frozen=True)
class ImageAdapterSpec:
    """Clients send encoded images (JPEG, PNG, BMP) in ``input``, BYTES [-1], one per row;
    ``pipeline`` turns each into a row of the model input ``target`` (cast to its dtype)."""

    target: str
    pipeline: ImagePipeline
    input: str = "image"
    limits: InputLimits = InputLimits()

    def files(self) -> dict[str, Path]:
        """Files to copy into the package's serve/ folder: name there -> file here."""
        return {}

    def to_json(self) -> dict[str, Any]:
        return {"kind": "image", "input": self.input, "target": self.target, "pipeline": self.pipeline.to_json(),
                "limits": self.limits.to_json()}


@dataclass(frozen=True)
class TextAdapterSpec:
    """Clients send UTF-8 sentences in ``input``, BYTES [-1]; the ``tokenizers`` file ``tokenizer``
    turns them into input_ids, attention_mask (and token_type_ids when the model takes it).

    ``max_length`` truncates (in tokens, special ones included); None takes the model's static
    sequence length, and is refused when that dimension is dynamic (padding is then to the
    longest sentence of each request).
    """

    tokenizer: Path
    max_length: int | None = None
    input: str = "text"
    limits: InputLimits = InputLimits()

    def files(self) -> dict[str, Path]:
        return {TOKENIZER_FILE: self.tokenizer}

    def to_json(self) -> dict[str, Any]:
        return {"kind": "text", "input": self.input, "tokenizer": f"{SERVE_DIR}/{TOKENIZER_FILE}",
                "max_length": self.max_length, "limits": self.limits.to_json()}


AdapterSpec = ImageAdapterSpec | TextAdapterSpec


def parse_adapter(text: str) -> AdapterSpec:
    """The CLI form: ``text:tokenizer=PATH[,max_length=N][,input=NAME][,max_bytes=N]`` or
    ``image:target=INPUT[,input=NAME][,max_pixels=N],<pipeline keys>`` (see ``ImagePipeline.parse``);
    ``max_bytes`` and ``max_pixels`` set the package's ``InputLimits``.

    Raises SpecError saying what is wrong and showing both forms.
    """
    kind, _, rest = text.partition(":")
    items = [item for item in rest.split(",") if item.strip()]
    values = {k.strip(): v.strip() for k, _, v in (item.partition("=") for item in items)}
    limits = _parse_limits(text, values)
    if kind == "text":
        unknown = sorted(set(values) - {"tokenizer", "max_length", "input", "max_bytes"})
        if unknown or "tokenizer" not in values:
            raise SpecError(f"adapter {text!r}: a text adapter takes tokenizer=PATH[,max_length=N][,input=NAME]"
                            "[,max_bytes=N]"
                            + (f"; unknown key(s) {', '.join(unknown)}" if unknown else "; tokenizer= is missing"))
        length = values.get("max_length")
        if length is not None and not (length.isdigit() and int(length) >= 1):
            raise SpecError(f"adapter {text!r}: max_length={length} is not a whole number >= 1")
        tokenizer = Path(values["tokenizer"]).expanduser()
        if not tokenizer.is_file():
            raise SpecError(f"adapter {text!r}: tokenizer file {tokenizer} does not exist (give the path of a "
                            "Hugging Face tokenizers 'tokenizer.json')")
        return TextAdapterSpec(tokenizer, int(length) if length else None, values.get("input") or "text", limits)
    if kind == "image":
        if not values.get("target"):
            raise SpecError(f"adapter {text!r}: an image adapter needs target=INPUT, the model input it fills")
        pipeline_items = [i for i in items if i.partition("=")[0].strip() not in ("target", "input", "max_pixels")]
        return ImageAdapterSpec(values["target"], ImagePipeline.parse_items(pipeline_items),
                                values.get("input") or "image", limits)
    raise SpecError(f"adapter {text!r}: it must start with 'text:' or 'image:', e.g. {_EXAMPLES}")


_LIMIT_KEYS = {"max_bytes": "max_text_bytes", "max_pixels": "max_image_pixels"}  # CLI key -> InputLimits field


def _parse_limits(text: str, values: Mapping[str, str]) -> InputLimits:
    bad = [f"{key}={values[key]}" for key in _LIMIT_KEYS if key in values and not values[key].isdigit()]
    if bad:
        raise SpecError(f"adapter {text!r}: {', '.join(bad)} is not a whole number >= 1")
    return InputLimits(**{name: int(values[key]) for key, name in _LIMIT_KEYS.items() if key in values})


def adapter_spec_from_json(config: Mapping[str, Any], package: Path) -> AdapterSpec:
    """A manifest's ``serve.adapter`` back to its spec; file paths are relative to ``package``."""
    kind = config.get("kind")
    needed = {"image": ("target",), "text": ("tokenizer",)}.get(str(kind))
    if needed is None:
        raise SpecError(f"adapter kind {kind!r} is neither 'image' nor 'text'")
    missing = [key for key in needed if not config.get(key)]
    if missing:
        raise SpecError(f"the {kind} adapter's config has no {', '.join(missing)}")
    limits = InputLimits.from_json(config.get("limits") or {})  # packages written before limits: the defaults
    if kind == "image":
        return ImageAdapterSpec(str(config["target"]), ImagePipeline.from_json(config.get("pipeline") or {}),
                                str(config.get("input") or "image"), limits)
    max_length = config.get("max_length")
    return TextAdapterSpec(package / str(config["tokenizer"]), int(max_length) if max_length else None,
                           str(config.get("input") or "text"), limits)


# ---- the adapters ---------------------------------------------------------------------------------------------

@functools.cache
def _threads() -> ThreadPoolExecutor:
    """Adapter work's own threads, one per core: decoding and tokenizing are CPU-bound, and each thread holds
    one decoded image at a time, so this also bounds the memory that concurrent large images can take."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="inferforge-adapter")


@dataclass
class _Work:
    """Runs one adapter's conversions on the adapter threads, counting the rows in progress.

    When the awaiting request is cancelled (its timeout passed, its client hung up), work not yet
    started is dropped and a running conversion stops at its next row (``abandoned`` is set).
    """

    rows: int = 0

    async def run(self, rows: int, convert: Callable[[threading.Event], T]) -> T:
        abandoned = threading.Event()
        self.rows += rows
        try:
            return await asyncio.wrap_future(_threads().submit(convert, abandoned))
        finally:
            abandoned.set()
            self.rows -= rows


class _Abandoned(ProtocolError):
    def __init__(self) -> None:
        super().__init__("the request was abandoned (timed out or its client left) while its inputs were "
                         "being converted", 503)


def _over_limits(name: str, problems: list[str], count: int, what: str) -> None:
    if problems:
        raise ProtocolError(f"input {name!r}: {len(problems)} of {count} {what} over this model's limits, "
                            "refused before decoding: " + "; ".join(problems), 413)


@dataclass(frozen=True)
class ImageAdapter:
    """Decodes and preprocesses each row's image on the adapter threads (OpenCV releases the GIL), once
    every row's header has shown it within ``limits.max_image_pixels``."""

    inputs: tuple[TensorMeta, ...]
    target: TensorSpec
    pipeline: ImagePipeline
    limits: InputLimits = InputLimits()
    work: _Work = field(default_factory=_Work, compare=False)

    @property
    def rows_in_progress(self) -> int:
        return self.work.rows

    async def adapt(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        client = self.inputs[0].name
        encoded = _rows_as_bytes(client, inputs[client])
        limit = self.limits.max_image_pixels
        problems = []
        for row, data in enumerate(encoded):
            pixels = image_pixels(data)
            if pixels is not None and pixels > limit:
                problems.append(f"row {row} has {pixels:,} pixels, above {limit:,} (resize it before sending)")
        _over_limits(client, problems, len(encoded), "image(s) are")
        images = await self.work.run(len(encoded), lambda abandoned: self._preprocess(client, encoded, abandoned))
        return {**_passed_through(self.inputs, inputs), self.target.name: images}

    def _preprocess(self, name: str, encoded: Sequence[bytes], abandoned: threading.Event) -> np.ndarray:
        images, problems = [], []
        for row, data in enumerate(encoded):
            if abandoned.is_set():
                raise _Abandoned()
            try:
                images.append(self.pipeline.apply(decode_image(data)))
            except DataError as exc:
                problems.append(f"row {row}: {exc}")
        if problems:
            raise ProtocolError(f"input {name!r}: {len(problems)} of {len(encoded)} image(s) cannot be used: "
                                + "; ".join(problems))
        return stack_images(images, what=f"the images of input {name!r}").astype(numpy_dtype(self.target.dtype))


def image_pixels(data: bytes) -> int | None:
    """Width x height from an encoded image's header, before any pixel is decoded (PIL's lazy open reads
    the header only). None when neither PIL nor ``preprocess.declared_size`` can read it: the decoder
    then says why, under its own cap (``preprocess.MAX_IMAGE_PIXELS``)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.size[0]) * int(image.size[1])
    except Image.DecompressionBombError:  # over twice PIL's own cap: more than any limit here allows
        return 2 * int(Image.MAX_IMAGE_PIXELS or 0) + 1
    except Exception:  # PIL raises many types for bytes it cannot identify; the header parser may still know
        size = declared_size(data)
        return None if size is None else size[0] * size[1]


@dataclass(frozen=True)
class TextAdapter:
    """Tokenizes each request's sentences on the adapter threads, once every sentence is within
    ``limits.max_text_bytes``; the tokenizer is configured once (truncation, padding) when the adapter
    is built and only read afterwards."""

    inputs: tuple[TensorMeta, ...]
    tokenizer: Any  # tokenizers.Tokenizer
    outputs: tuple[TensorSpec, ...]  # the model's token inputs this adapter fills
    limits: InputLimits = InputLimits()
    work: _Work = field(default_factory=_Work, compare=False)

    @property
    def rows_in_progress(self) -> int:
        return self.work.rows

    async def adapt(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        client = self.inputs[0].name
        texts = inputs[client]
        limit = self.limits.max_text_bytes
        _over_limits(client, [f"row {row} has {len(data):,} bytes, above {limit:,} (split the text)"
                              for row, data in enumerate(_rows_as_bytes(client, texts)) if len(data) > limit],
                     texts.size, "sentence(s) are")
        tokens = await self.work.run(texts.size, lambda abandoned: self.tokenize(client, texts))
        return {**_passed_through(self.inputs, inputs), **tokens}

    def tokenize(self, name: str, texts: np.ndarray) -> dict[str, np.ndarray]:
        """BYTES rows -> the model's token inputs [rows, length]; ProtocolError 400 names rows that
        are not UTF-8, 500 when the tokenizer produced values outside the model's declared range."""
        sentences, problems = [], []
        for row, element in enumerate(texts.reshape(-1)):
            try:
                sentences.append(_element_bytes(element).decode("utf-8"))
            except UnicodeDecodeError as exc:
                problems.append(f"row {row} is not UTF-8 text ({exc.reason} at byte {exc.start})")
            except DataError as exc:
                problems.append(f"row {row}: {exc}")
        if problems:
            raise ProtocolError(f"input {name!r}: " + "; ".join(problems))
        encoded = self.tokenizer.encode_batch(sentences)
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        tokens = {s.name: np.array([getattr(e, fields[s.name]) for e in encoded], dtype=numpy_dtype(s.dtype))
                  for s in self.outputs}
        for spec in self.outputs:
            values = tokens[spec.name]
            if spec.value_range is not None and (values.min() < spec.value_range[0] or values.max() > spec.value_range[1]):
                raise ProtocolError(f"the package's tokenizer made {spec.name} values {values.min()}..{values.max()}, "
                                    f"outside the model's range {spec.value_range[0]:g}..{spec.value_range[1]:g}: "
                                    "the package is inconsistent; rebuild it", 500)
        return tokens


def _element_bytes(element: Any) -> bytes:
    if isinstance(element, bytes | bytearray | memoryview):
        return bytes(element)
    if isinstance(element, str):
        try:
            return element.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate has no UTF-8 form
            raise DataError(f"not valid Unicode ({exc.reason} at character {exc.start})") from None
    raise DataError(f"expected bytes, got {type(element).__name__}")


def _rows_as_bytes(name: str, tensor: np.ndarray) -> list[bytes]:
    """A BYTES tensor's rows as bytes; ProtocolError 400 naming every row that is not bytes or text."""
    rows, problems = [], []
    for row, element in enumerate(tensor.reshape(-1)):
        try:
            rows.append(_element_bytes(element))
        except DataError as exc:
            problems.append(f"row {row}: {exc}")
    if problems:
        raise ProtocolError(f"input {name!r}: " + "; ".join(problems))
    return rows


def _passed_through(client_inputs: Sequence[TensorMeta], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model inputs clients send as they are: every client input after the adapter's own."""
    return {meta.name: inputs[meta.name] for meta in client_inputs[1:]}


def _client_inputs(name: str, spec: ModelSpec, filled: Sequence[str], problems: list[str]) -> tuple[TensorMeta, ...]:
    """The adapter's BYTES input first, then the model inputs it leaves to the client."""
    passed = [s for s in spec.inputs if s.name not in filled]
    if any(s.name == name for s in passed):
        problems.append(f"the adapter's input name {name!r} is also a model input it does not fill: choose "
                        "another with input=NAME")
    return (TensorMeta(name, "BYTES", (-1,)), *(TensorMeta.from_spec(s) for s in passed))


def _batched(spec: TensorSpec, rank: int, problems: list[str]) -> bool:
    if spec.batch_axis != 0 or len(spec.shape) != rank:
        problems.append(f"model input {spec} must have {rank} dimensions with the batch (B) first")
        return False
    return True


def build_adapter(config: AdapterSpec, spec: ModelSpec) -> ImageAdapter | TextAdapter:
    """Check the config against the model and build the adapter (a text one loads its tokenizer).

    Raises SpecError listing every way the config does not fit the model.
    """
    if isinstance(config, ImageAdapterSpec):
        return _build_image(config, spec)
    return _build_text(config, spec)


def _build_image(config: ImageAdapterSpec, spec: ModelSpec) -> ImageAdapter:
    target = next((s for s in spec.inputs if s.name == config.target), None)
    if target is None:
        raise SpecError(f"image adapter: target {config.target!r} is not a model input (the model takes "
                        f"{', '.join(spec.input_names)})")
    problems: list[str] = []
    if not target.is_float:
        problems.append(f"target {target} is not a float input, so it cannot take preprocessed images")
    pipeline = config.pipeline
    if pipeline.output_size is None:
        problems.append("the pipeline leaves each image's size to its aspect ratio: add crop=HxW or resize=HxW so "
                        "that every row has the same shape")
    elif _batched(target, 4, problems):
        made = pipeline.output_shape()
        wanted = target.shape[1:]
        if any(isinstance(w, int) and w != m for w, m in zip(wanted, made, strict=True)):
            problems.append(f"the pipeline makes {pipeline.layout[1:]} images of shape {list(made)} but the model "
                            f"input is {target}: change crop/resize, color or layout")
    inputs = _client_inputs(config.input, spec, [target.name], problems)
    if problems:
        raise SpecError("image adapter: " + "; ".join(problems))
    return ImageAdapter(inputs, target, pipeline, config.limits)


def _build_text(config: TextAdapterSpec, spec: ModelSpec) -> TextAdapter:
    by_name = {s.name: s for s in spec.inputs}
    if "input_ids" not in by_name:
        raise SpecError(f"text adapter: the model has no input named input_ids (it takes "
                        f"{', '.join(spec.input_names)}); a text adapter fills {', '.join(TOKEN_INPUTS)}")
    outputs = tuple(by_name[n] for n in TOKEN_INPUTS if n in by_name)
    problems: list[str] = []
    lengths = {s.shape[1] for s in outputs if _batched(s, 2, problems)}
    problems += [f"model input {s} is not an integer tensor" for s in outputs if s.is_float or s.dtype == "bool"]
    if len(lengths) > 1:
        problems.append(f"the token inputs disagree on the sequence length: {sorted(map(str, lengths))}")
    length = lengths.pop() if len(lengths) == 1 else None
    static = length if isinstance(length, int) else None
    max_length = config.max_length or static
    if max_length is None and isinstance(length, Dim):
        problems.append(f"the sequence length ({length.name}) is dynamic: give max_length=N (the model's longest)")
    elif static is not None and max_length is not None and max_length > static:
        problems.append(f"max_length {max_length} is above the model's sequence length {static}")
    tokenizer = _load_tokenizer(config.tokenizer, problems)
    if tokenizer is not None:
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        expected = {"input_ids": (0, vocab - 1), "attention_mask": (0, 1), "token_type_ids": (0, 0)}
        for s in outputs:
            lo, hi = expected[s.name]
            if s.value_range is not None and (lo < s.value_range[0] or hi > s.value_range[1]):
                problems.append(f"the tokenizer ({vocab} tokens) makes {s.name} values up to {hi}, outside the "
                                f"model's range {s.value_range[0]:g}..{s.value_range[1]:g}")
    inputs = _client_inputs(config.input, spec, [s.name for s in outputs], problems)
    if problems:
        raise SpecError("text adapter: " + "; ".join(problems))
    padding = tokenizer.padding or {}
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=static, pad_id=padding.get("pad_id", 0), pad_type_id=padding.get("pad_type_id", 0),
                             pad_token=padding.get("pad_token", "[PAD]"),
                             direction=str(padding.get("direction", "right")).lower())
    return TextAdapter(inputs, tokenizer, outputs, config.limits)


def _load_tokenizer(path: Path, problems: list[str]) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        problems.append("the tokenizers library is not installed: pip install 'inferforge[serve]'")
        return None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for missing and malformed files
        problems.append(f"cannot load tokenizer {path}: {one_line(exc)}")
        return None


# ---- from a package -------------------------------------------------------------------------------------------

def load_adapter(package: Path, manifest: Mapping[str, Any], spec: ModelSpec,
                 limit_overrides: Mapping[str, int] | None = None) -> InputAdapter | None:
    """The package's adapter, or None when it declares none; ``limit_overrides`` (InputLimits field -> value:
    what the server's operator set, e.g. ``inferforge serve --max-text-bytes``) replace those limits of the
    package's own.

    Raises PackageError when an adapter file is missing, unlisted or changed (checksums), or
    when the config does not fit the model.
    """
    serve = manifest.get("serve") or {}
    config = serve.get("adapter")
    if not config:
        return None
    from inferforge.manifest import verify_checksums  # the one checksum check, shared with artifacts

    try:
        adapter_spec = adapter_spec_from_json(config, package)
        folder = str(serve.get("path") or SERVE_DIR)
        listed = serve.get("sha256") or {}
        referenced = [str(config["tokenizer"])] if isinstance(adapter_spec, TextAdapterSpec) else []
        unlisted = [rel for rel in referenced if rel.removeprefix(f"{folder}/") not in listed]
        if unlisted:
            raise PackageError(f"package {package}: adapter file(s) {', '.join(unlisted)} have no checksum in the "
                               f"manifest's serve.sha256: rebuild the package")
        verify_checksums(package, {"path": folder, "sha256": listed})
        if limit_overrides:
            adapter_spec = replace(adapter_spec, limits=replace(adapter_spec.limits, **limit_overrides))
        return build_adapter(adapter_spec, spec)
    except PackageError:
        raise
    except InferforgeError as exc:
        raise PackageError(f"package {package}: its input adapter does not fit the model: {exc}. Rebuild the "
                           "package with a matching --adapter") from None
