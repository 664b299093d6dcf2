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

Model inputs an adapter does not fill are passed through: clients send them as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inferforge.errors import DataError, InferforgeError, PackageError, ProtocolError, SpecError, one_line
from inferforge.preprocess import ImagePipeline, decode_image, stack_images
from inferforge.types import Dim, ModelSpec, TensorMeta, TensorSpec, numpy_dtype

SERVE_DIR = "serve"  # inside a package: the adapter's files
TOKENIZER_FILE = "tokenizer.json"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a text adapter fills, by name
_EXAMPLES = ("text:tokenizer=path/to/tokenizer.json,max_length=128 or "
             "image:target=pixel_values,resize=256,crop=224,color=rgb,mean=0.485/0.456/0.406,std=0.229/0.224/0.225")


class InputAdapter(Protocol):
    """Client-facing inputs and the conversion of one request into model inputs."""

    @property
    def inputs(self) -> tuple[TensorMeta, ...]: ...

    async def adapt(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


# ---- what a package's adapter is (the config) ---------------------------------------------------------------

@dataclass(frozen=True)
class ImageAdapterSpec:
    """Clients send encoded images (JPEG, PNG, BMP) in ``input``, BYTES [-1], one per row;
    ``pipeline`` turns each into a row of the model input ``target`` (cast to its dtype)."""

    target: str
    pipeline: ImagePipeline
    input: str = "image"

    def files(self) -> dict[str, Path]:
        """Files to copy into the package's serve/ folder: name there -> file here."""
        return {}

    def to_json(self) -> dict[str, Any]:
        return {"kind": "image", "input": self.input, "target": self.target, "pipeline": self.pipeline.to_json()}


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

    def files(self) -> dict[str, Path]:
        return {TOKENIZER_FILE: self.tokenizer}

    def to_json(self) -> dict[str, Any]:
        return {"kind": "text", "input": self.input, "tokenizer": f"{SERVE_DIR}/{TOKENIZER_FILE}",
                "max_length": self.max_length}


AdapterSpec = ImageAdapterSpec | TextAdapterSpec


def parse_adapter(text: str) -> AdapterSpec:
    """The CLI form: ``text:tokenizer=PATH[,max_length=N][,input=NAME]`` or
    ``image:target=INPUT[,input=NAME],<pipeline keys>`` (see ``ImagePipeline.parse``).

    Raises SpecError saying what is wrong and showing both forms.
    """
    kind, _, rest = text.partition(":")
    items = [item for item in rest.split(",") if item.strip()]
    values = {k.strip(): v.strip() for k, _, v in (item.partition("=") for item in items)}
    if kind == "text":
        unknown = sorted(set(values) - {"tokenizer", "max_length", "input"})
        if unknown or "tokenizer" not in values:
            raise SpecError(f"adapter {text!r}: a text adapter takes tokenizer=PATH[,max_length=N][,input=NAME]"
                            + (f"; unknown key(s) {', '.join(unknown)}" if unknown else "; tokenizer= is missing"))
        length = values.get("max_length")
        if length is not None and not (length.isdigit() and int(length) >= 1):
            raise SpecError(f"adapter {text!r}: max_length={length} is not a whole number >= 1")
        tokenizer = Path(values["tokenizer"]).expanduser()
        if not tokenizer.is_file():
            raise SpecError(f"adapter {text!r}: tokenizer file {tokenizer} does not exist (give the path of a "
                            "Hugging Face tokenizers 'tokenizer.json')")
        return TextAdapterSpec(tokenizer, int(length) if length else None, values.get("input") or "text")
    if kind == "image":
        if not values.get("target"):
            raise SpecError(f"adapter {text!r}: an image adapter needs target=INPUT, the model input it fills")
        pipeline_items = [i for i in items if i.partition("=")[0].strip() not in ("target", "input")]
        return ImageAdapterSpec(values["target"], ImagePipeline.parse_items(pipeline_items),
                                values.get("input") or "image")
    raise SpecError(f"adapter {text!r}: it must start with 'text:' or 'image:', e.g. {_EXAMPLES}")


def adapter_spec_from_json(config: Mapping[str, Any], package: Path) -> AdapterSpec:
    """A manifest's ``serve.adapter`` back to its spec; file paths are relative to ``package``."""
    kind = config.get("kind")
    needed = {"image": ("target",), "text": ("tokenizer",)}.get(str(kind))
    if needed is None:
        raise SpecError(f"adapter kind {kind!r} is neither 'image' nor 'text'")
    missing = [key for key in needed if not config.get(key)]
    if missing:
        raise SpecError(f"the {kind} adapter's config has no {', '.join(missing)}")
    if kind == "image":
        return ImageAdapterSpec(str(config["target"]), ImagePipeline.from_json(config.get("pipeline") or {}),
                                str(config.get("input") or "image"))
    max_length = config.get("max_length")
    return TextAdapterSpec(package / str(config["tokenizer"]), int(max_length) if max_length else None,
                           str(config.get("input") or "text"))


# ---- the adapters ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageAdapter:
    """Decodes and preprocesses each row's image in a worker thread (OpenCV releases the GIL)."""

    inputs: tuple[TensorMeta, ...]
    target: TensorSpec
    pipeline: ImagePipeline

    async def adapt(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        client = self.inputs[0].name
        images = await asyncio.to_thread(self._preprocess, client, inputs[client])
        return {**_passed_through(self.inputs, inputs), self.target.name: images}

    def _preprocess(self, name: str, encoded: np.ndarray) -> np.ndarray:
        images, problems = [], []
        for row, element in enumerate(encoded.reshape(-1)):
            try:
                images.append(self.pipeline.apply(decode_image(_element_bytes(element))))
            except DataError as exc:
                problems.append(f"row {row}: {exc}")
        if problems:
            raise ProtocolError(f"input {name!r}: {len(problems)} of {encoded.size} image(s) cannot be used: "
                                + "; ".join(problems))
        return stack_images(images, what=f"the images of input {name!r}").astype(numpy_dtype(self.target.dtype))


@dataclass(frozen=True)
class TextAdapter:
    """Tokenizes each request's sentences in a worker thread; the tokenizer is configured once
    (truncation, padding) when the adapter is built and only read afterwards."""

    inputs: tuple[TensorMeta, ...]
    tokenizer: Any  # tokenizers.Tokenizer
    outputs: tuple[TensorSpec, ...]  # the model's token inputs this adapter fills

    async def adapt(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        client = self.inputs[0].name
        tokens = await asyncio.to_thread(self.tokenize, client, inputs[client])
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
        return element.encode()
    raise DataError(f"expected bytes, got {type(element).__name__}")


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
    return ImageAdapter(inputs, target, pipeline)


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
    return TextAdapter(inputs, tokenizer, outputs)


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

def load_adapter(package: Path, manifest: Mapping[str, Any], spec: ModelSpec) -> InputAdapter | None:
    """The package's adapter, or None when it declares none.

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
        return build_adapter(adapter_spec, spec)
    except PackageError:
        raise
    except InferforgeError as exc:
        raise PackageError(f"package {package}: its input adapter does not fit the model: {exc}. Rebuild the "
                           "package with a matching --adapter") from None
