"""Input adapters: photos and sentences in, the model's tensors out, exactly as computed by hand.

The real photo is scikit-learn's bundled ``china.jpg`` (scikit-image is not installed here).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import sklearn.datasets
from conftest import fast_options

import inferforge
from inferforge.adapters import (
    ImageAdapter,
    ImageAdapterSpec,
    InputLimits,
    TextAdapter,
    TextAdapterSpec,
    build_adapter,
    load_adapter,
    parse_adapter,
)
from inferforge.cli import main
from inferforge.demo import minilm
from inferforge.errors import DataError, PackageError, ProtocolError, SpecError
from inferforge.manifest import MANIFEST, read_manifest
from inferforge.preprocess import ImagePipeline, decode_image
from inferforge.types import ModelSpec, TensorSpec

PHOTO = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"  # 427 x 640, a real JPEG
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CNN_SPEC = ModelSpec((TensorSpec.parse("image:float32[B,3,16,16]"),))


def _png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def _bytes_tensor(*items: bytes) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The photo with an even height, so a 2x area resize is exactly a 2x2 block mean."""
    return decode_image(PHOTO.read_bytes())[:426]


# ---- ImagePipeline ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, half, crop, color, layout", [
    ("resize=213,crop=200x300,color=rgb,scale=0.00392157,mean=0.485/0.456/0.406,std=0.229/0.224/0.225,layout=NCHW",
     True, (200, 300), "rgb", "NCHW"),
    ("crop=100x120,color=gray,scale=1,layout=NHWC", False, (100, 120), "gray", "NHWC"),
    ("resize=213x320,crop=213x320,color=bgr,scale=0.5,mean=3,std=2", True, (213, 320), "bgr", "NCHW"),
], ids=["rgb-resize-normalize", "gray-nhwc", "bgr-exact-resize"])
def test_pipeline_matches_a_numpy_reference_on_a_real_photo(photo: np.ndarray, text: str, half: bool,
                                                            crop: tuple[int, int], color: str, layout: str) -> None:
    pipeline = ImagePipeline.parse(text)
    got = pipeline.apply(decode_image(_png(photo)))
    # the reference, by hand: color, 2x2 block mean, torchvision's centered crop, normalize, lay out
    ref = photo.astype(np.float64)
    if color == "rgb":
        ref = ref[:, :, ::-1]
    elif color == "gray":
        ref = (ref @ np.array([0.114, 0.587, 0.299]))[:, :, None]
    if half:
        h, w, c = ref.shape
        ref = ref.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))
    top, left = round((ref.shape[0] - crop[0]) / 2), round((ref.shape[1] - crop[1]) / 2)
    ref = ref[top:top + crop[0], left:left + crop[1]]
    ref = (ref * pipeline.scale - np.array(pipeline.mean)) / np.array(pipeline.std)
    if layout == "NCHW":
        ref = ref.transpose(2, 0, 1)
    assert got.dtype == np.float32 and got.shape == ref.shape == pipeline.output_shape()
    # OpenCV rounds resized and gray pixels to whole 8-bit levels: at most half a level apart
    step = pipeline.scale / min(pipeline.std)
    assert np.abs(got - ref).max() <= 0.51 * step
    assert np.abs(got - ref).mean() <= 0.3 * step


def test_shorter_side_resize_keeps_the_aspect_ratio_as_torchvision_does() -> None:
    image = decode_image(PHOTO.read_bytes())  # 427 x 640
    assert ImagePipeline(resize=256).apply(image).shape == (3, 256, int(256 * 640 / 427))
    assert ImagePipeline(resize=8, layout="NHWC", color="gray").apply(image).shape == (8, 11, 1)


def test_pipeline_text_and_json_forms_round_trip_and_errors_list_every_problem() -> None:
    pipeline = ImagePipeline.parse("resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225")
    assert pipeline.crop == (224, 224) and pipeline.mean == MEAN and pipeline.layout == "NCHW"
    assert ImagePipeline.from_json(json.loads(json.dumps(pipeline.to_json()))) == pipeline
    with pytest.raises(SpecError) as info:
        ImagePipeline.parse("resize=big,colour=rgb,scale")
    assert all(part in str(info.value) for part in ("resize=big", "unknown key 'colour'", "'scale' is not key=value"))
    with pytest.raises(SpecError) as info:
        ImagePipeline(color="grey", mean=(0.5, 0.5), std=(0.0,))  # type: ignore[arg-type]
    assert all(part in str(info.value) for part in ("color 'grey'", "mean has 2 values", "std must not be 0"))


def test_load_folder_stacks_sorted_images_and_names_the_bad_file(tmp_path: Path, photo: np.ndarray) -> None:
    pipeline = ImagePipeline(resize=(8, 8), color="gray")
    for i, name in enumerate(["b.png", "a.JPG", "c.bmp"]):
        cv2.imwrite(str(tmp_path / name), photo[i * 50:i * 50 + 40, :60])
    (tmp_path / "notes.txt").write_text("not an image, and not read")
    batch = pipeline.load_folder(tmp_path, limit=2)
    assert batch.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(batch[1], pipeline.apply(cv2.imread(str(tmp_path / "b.png"))))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match="broken.jpg"):
        pipeline.load_folder(tmp_path)


# ---- ImageAdapter -----------------------------------------------------------------------------------------------

def test_image_adapter_turns_encoded_photos_into_the_models_input(photo: np.ndarray) -> None:
    spec = ImageAdapterSpec("image", ImagePipeline(resize=(16, 16)))
    adapter = build_adapter(spec, CNN_SPEC)
    assert [(m.name, m.datatype, m.shape) for m in adapter.inputs] == [("image", "BYTES", (-1,))]
    rows = [_png(photo), PHOTO.read_bytes()]
    out = asyncio.run(adapter.adapt({"image": _bytes_tensor(*rows)}))
    assert list(out) == ["image"] and out["image"].shape == (2, 3, 16, 16) and out["image"].dtype == np.float32
    np.testing.assert_array_equal(out["image"][1], spec.pipeline.apply(decode_image(rows[1])))


def test_a_bad_jpeg_is_a_400_naming_the_row() -> None:
    adapter = build_adapter(ImageAdapterSpec("image", ImagePipeline(resize=(16, 16))), CNN_SPEC)
    rows = _bytes_tensor(PHOTO.read_bytes(), PHOTO.read_bytes()[:300], PHOTO.read_bytes())
    with pytest.raises(ProtocolError) as info:
        asyncio.run(adapter.adapt({"image": rows}))
    assert info.value.status == 400
    assert "row 1:" in str(info.value) and "row 0" not in str(info.value) and "'image'" in str(info.value)


def test_an_image_adapter_that_does_not_fit_the_model_says_every_reason() -> None:
    with pytest.raises(SpecError, match="target 'pixels' is not a model input .*takes image"):
        build_adapter(ImageAdapterSpec("pixels", ImagePipeline(crop=(16, 16))), CNN_SPEC)
    with pytest.raises(SpecError) as info:
        build_adapter(ImageAdapterSpec("image", ImagePipeline(crop=(224, 224), color="gray")), CNN_SPEC)
    assert "[1, 224, 224]" in str(info.value) and "image:float32[B,3,16,16]" in str(info.value)
    with pytest.raises(SpecError, match="add crop=HxW or resize=HxW"):
        build_adapter(ImageAdapterSpec("image", ImagePipeline(resize=16)), CNN_SPEC)


# ---- TextAdapter ------------------------------------------------------------------------------------------------

MINILM_SPEC = ModelSpec((TensorSpec.parse("input_ids:int64[B,128]:0..30521"),
                         TensorSpec.parse("attention_mask:int64[B,128]:0..1")))


def test_text_adapter_tokenizes_exactly_as_the_minilm_demo() -> None:
    adapter = build_adapter(minilm.make_adapter(), MINILM_SPEC)
    sentences = [*minilm.SENTENCES[:3], "Crème brûlée in Zürich — 東京 too.", "word " * 300, ""]
    out = asyncio.run(adapter.adapt({"text": _bytes_tensor(*(s.encode() for s in sentences))}))
    want = minilm.tokenize(sentences)
    assert set(out) == set(want)
    for name in want:
        assert out[name].dtype == np.int64 and out[name].shape == (len(sentences), 128)
        np.testing.assert_array_equal(out[name], want[name])


def test_text_with_a_dynamic_length_pads_to_the_longest_and_fills_token_type_ids() -> None:
    spec = ModelSpec((TensorSpec.parse("input_ids:int32[B,S=16]:0..30521"), TensorSpec.parse("token_type_ids:int32[B,S=16]"),
                      TensorSpec.parse("attention_mask:int32[B,S=16]:0..1"), TensorSpec.parse("scale:float32[B,1]")))
    tokenizer = minilm.make_adapter().tokenizer
    with pytest.raises(SpecError, match="give max_length=N"):
        build_adapter(TextAdapterSpec(tokenizer), spec)
    adapter = build_adapter(TextAdapterSpec(tokenizer, max_length=8, input="sentence"), spec)
    assert [m.name for m in adapter.inputs] == ["sentence", "scale"]  # scale is passed through
    scale = np.ones((2, 1), np.float32)
    out = asyncio.run(adapter.adapt({"sentence": _bytes_tensor(b"a cat", b"two dogs ran"), "scale": scale}))
    assert out["input_ids"].dtype == np.int32 and out["input_ids"].shape == (2, 5)  # [CLS] two dogs ran [SEP]
    assert out["attention_mask"][0].tolist() == [1, 1, 1, 1, 0] and not out["token_type_ids"].any()
    assert out["scale"] is scale
    long = asyncio.run(adapter.adapt({"sentence": _bytes_tensor(b"word " * 50), "scale": scale[:1]}))
    assert long["input_ids"].shape == (1, 8)
    with pytest.raises(ProtocolError, match="row 1 is not UTF-8") as info:
        asyncio.run(adapter.adapt({"sentence": _bytes_tensor(b"fine", b"\xff\xfe"), "scale": scale}))
    assert info.value.status == 400


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused() -> None:
    spec = ModelSpec((TensorSpec.parse("input_ids:int64[B,7]:0..49"), TensorSpec.parse("attention_mask:int64[B,7]")))
    with pytest.raises(SpecError) as info:
        build_adapter(TextAdapterSpec(minilm.make_adapter().tokenizer, max_length=128), spec)
    assert "30522 tokens" in str(info.value) and "max_length 128 is above the model's sequence length 7" in str(info.value)


# ---- packages and the CLI ---------------------------------------------------------------------------------------

def _tiny_tokenizer(path: Path) -> Path:
    """A 12-word WordLevel tokenizer, so ids fit TwoInputsDictOutput's 50-row embedding."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *["the", "a", "cat", "dog", "sat", "ran", "on", "mat"]]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                             special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image package of TinyCNN, text package of TwoInputsDictOutput), onnxruntime only."""
    folder = tmp_path_factory.mktemp("adapters")
    image = inferforge.optimize("models:make_cnn", out=folder / "cnn", options=fast_options(backends=("onnxruntime",)),
                                adapter=parse_adapter("image:target=image,resize=16x16,color=rgb")).package
    text = inferforge.optimize("models:make_two_inputs", out=folder / "two",
                               inputs=["input_ids:int64[B,7]:0..49", "attention_mask:int64[B,7]:0..1"],
                               options=fast_options(backends=("onnxruntime",)),
                               adapter=TextAdapterSpec(_tiny_tokenizer(folder / "tok.json"), input="sentence")).package
    assert image is not None and text is not None
    return image, text


def test_packaged_adapters_load_and_feed_the_model(packages: tuple[Path, Path], photo: np.ndarray) -> None:
    image_pkg, text_pkg = packages
    manifest = read_manifest(image_pkg)
    assert manifest["serve"]["adapter"]["kind"] == "image" and manifest["serve"]["sha256"] == {}
    adapter = load_adapter(image_pkg, manifest, ModelSpec.from_json(manifest["spec"]))
    assert adapter is not None
    outputs = inferforge.load(image_pkg)(asyncio.run(adapter.adapt({"image": _bytes_tensor(_png(photo))})))
    assert outputs["output"].shape == (1, 4)

    manifest = read_manifest(text_pkg)
    assert manifest["serve"]["adapter"] == {"kind": "text", "input": "sentence", "tokenizer": "serve/tokenizer.json",
                                            "max_length": None, "limits": InputLimits().to_json()}
    assert len(manifest["serve"]["sha256"]["tokenizer.json"]) == 64 and (text_pkg / "serve/tokenizer.json").is_file()
    adapter = load_adapter(text_pkg, manifest, ModelSpec.from_json(manifest["spec"]))
    assert adapter is not None
    tokens = asyncio.run(adapter.adapt({"sentence": _bytes_tensor(b"the cat sat on the mat", b"a dog")}))
    assert tokens["input_ids"].tolist() == [[2, 4, 6, 8, 10, 4, 3], [2, 5, 7, 3, 0, 0, 0]]  # truncated, padded
    assert inferforge.load(text_pkg)(tokens)["pooled"].shape == (2, 8)
    overridden = load_adapter(text_pkg, manifest, ModelSpec.from_json(manifest["spec"]), {"max_text_bytes": 5})
    assert overridden is not None and overridden.limits == InputLimits(max_text_bytes=5)  # the server's flag wins
    with pytest.raises(ProtocolError, match="413|bytes"):
        asyncio.run(overridden.adapt({"sentence": _bytes_tensor(b"the cat sat on the mat")}))


def test_a_tampered_tokenizer_or_a_wrong_target_is_a_package_error(packages: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    image_pkg, text_pkg = packages
    copy = Path(shutil.copytree(text_pkg, tmp_path / "two"))
    tokenizer = copy / "serve" / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"cat"', '"cow"'))
    manifest = read_manifest(copy)
    with pytest.raises(PackageError, match="serve/tokenizer.json does not match its checksum"):
        load_adapter(copy, manifest, ModelSpec.from_json(manifest["spec"]))

    manifest = read_manifest(image_pkg)
    manifest["serve"]["adapter"]["target"] = "pixels"
    with pytest.raises(PackageError, match="input adapter does not fit the model: .*target 'pixels'"):
        load_adapter(image_pkg, manifest, ModelSpec.from_json(manifest["spec"]))
    assert load_adapter(image_pkg, {**manifest, "serve": {}}, ModelSpec.from_json(manifest["spec"])) is None


def test_cli_adapter_option_parses_both_forms_and_refuses_bad_ones(capsys: pytest.CaptureFixture) -> None:
    from inferforge.cli import build_parser

    tokenizer = str(minilm.make_adapter().tokenizer)
    args = build_parser().parse_args(["optimize", "m.py:f", "--adapter", f"text:tokenizer={tokenizer},max_length=64"])
    assert args.adapter == TextAdapterSpec(Path(tokenizer), 64)
    args = build_parser().parse_args(["optimize", "m.py:f", "--adapter", "image:target=x,crop=8,color=gray,input=photo"])
    assert args.adapter == ImageAdapterSpec("x", ImagePipeline(crop=(8, 8), color="gray"), "photo")
    for bad, fragment in [("image:crop=8", "needs target=INPUT"), ("text:max_length=2", "tokenizer= is missing"),
                          ("audio:x=1", "must start with 'text:' or 'image:'"),
                          ("image:target=x,layout=CHW", "layout 'CHW' is not one of NCHW, NHWC")]:
        with pytest.raises(SystemExit) as info:
            main(["optimize", "models.py:make_cnn", "--adapter", bad])
        assert info.value.code == 2
        assert fragment in capsys.readouterr().err


def test_optimize_checks_the_adapter_before_searching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    def no_search(*args: object) -> None:
        raise AssertionError("the search ran before the adapter was checked")

    monkeypatch.chdir(Path(__file__).parent)
    monkeypatch.setattr("inferforge.api.run_search", no_search)
    assert main(["optimize", "models.py:make_cnn", "--out", str(tmp_path / "p"), "--adapter",
                 "image:target=pixels,resize=16x16"]) == 2
    assert "target 'pixels' is not a model input" in capsys.readouterr().err
    assert not (tmp_path / "p" / MANIFEST).exists()


def test_a_tiny_png_declaring_a_huge_image_is_refused_before_decoding() -> None:
    import cv2

    from inferforge.errors import DataError
    from inferforge.preprocess import decode_image

    ok, png = cv2.imencode(".png", np.zeros((9000, 8000), np.uint8))  # 72 MP in 78 kB
    assert ok and len(png) < 200_000
    with pytest.raises(DataError, match="pixels are refused"):
        decode_image(png.tobytes())


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_declared_size_reads_headers(ext: str) -> None:
    from inferforge.preprocess import declared_size

    ok, data = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
    assert ok and declared_size(data.tobytes()) == (53, 37)


def test_a_client_sends_a_photo_and_a_sentence_through_tritonclient(packages: tuple[Path, Path],
                                                                     photo: np.ndarray) -> None:
    """BYTES tensors over HTTP (binary extension) and gRPC reach the model through its adapter."""
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http
    from serve_helpers import serving

    image_pkg, text_pkg = packages
    png = _png(photo)
    manifest = read_manifest(image_pkg)
    adapter = load_adapter(image_pkg, manifest, ModelSpec.from_json(manifest["spec"]))
    assert adapter is not None
    want = inferforge.load(image_pkg)(asyncio.run(adapter.adapt({"image": _bytes_tensor(png, png)})))["output"]
    with serving(image_pkg, grpc_port=0) as server:
        meta = triton_http.InferenceServerClient(server.http_url).get_model_metadata("cnn")
        assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        for module, url in ((triton_http, server.http_url), (triton_grpc, server.grpc_url)):
            tensor = module.InferInput("image", [2], "BYTES")
            tensor.set_data_from_numpy(np.array([png, png], dtype=object))
            got = module.InferenceServerClient(url).infer("cnn", [tensor]).as_numpy("output")
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with serving(text_pkg) as server:
        tensor = triton_http.InferInput("sentence", [2], "BYTES")
        tensor.set_data_from_numpy(np.array([b"the cat sat", b"a dog"], dtype=object), binary_data=False)
        result = triton_http.InferenceServerClient(server.http_url).infer("two_inputs", [tensor])
        assert result.as_numpy("pooled").shape == (2, 8)


# ---- limits: checked before decoding, counted in the queue, abandoned at the deadline ---------------------------

def _huge_png(width: int = 8000, height: int = 8000) -> bytes:
    ok, png = cv2.imencode(".png", np.zeros((height, width), np.uint8))  # 64 MP in ~60 kB
    assert ok
    return png.tobytes()


def test_limits_are_refused_before_any_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object) -> None:
        raise AssertionError("decoded or tokenized a row over the limits")

    image = build_adapter(ImageAdapterSpec("image", ImagePipeline(resize=(16, 16))), CNN_SPEC)
    monkeypatch.setattr(ImageAdapter, "_preprocess", never)
    with pytest.raises(ProtocolError, match=r"row 1 has 64,000,000 pixels, above 40,000,000") as info:
        asyncio.run(image.adapt({"image": _bytes_tensor(PHOTO.read_bytes(), _huge_png())}))
    assert info.value.status == 413

    text = build_adapter(TextAdapterSpec(minilm.make_adapter().tokenizer, limits=InputLimits(max_text_bytes=1000)),
                         MINILM_SPEC)
    monkeypatch.setattr(TextAdapter, "tokenize", never)
    with pytest.raises(ProtocolError, match=r"row 0 has 100,000 bytes, above 1,000") as info:
        asyncio.run(text.adapt({"text": _bytes_tensor(b"word " * 20_000)}))
    assert info.value.status == 413


def test_limits_travel_in_the_package_and_the_cli_form() -> None:
    spec = parse_adapter("image:target=x,crop=8,max_pixels=1000000")
    assert spec == ImageAdapterSpec("x", ImagePipeline(crop=(8, 8)), limits=InputLimits(max_image_pixels=1_000_000))
    assert spec.to_json()["limits"] == {"max_text_bytes": 65536, "max_image_pixels": 1_000_000}
    with pytest.raises(SpecError, match="max_pixels=lots is not a whole number"):
        parse_adapter("image:target=x,crop=8,max_pixels=lots")
    with pytest.raises(SpecError, match="max_text_bytes is 0"):
        InputLimits(max_text_bytes=0)


def test_a_50_mb_sentence_is_refused_quickly_with_bounded_memory(packages: tuple[Path, Path]) -> None:
    """Issue 17: one 50 MB sentence tokenized for 140 s and took the server from 337 MB to 7.5 GB."""
    from serve_helpers import request, serving

    def rss_mb() -> float:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    with serving(packages[1]) as server:
        body = json.dumps({"inputs": [{"name": "sentence", "shape": [1], "datatype": "BYTES",
                                       "data": ["the cat " * (50 << 17)]}]}).encode()
        before = rss_mb()
        started = time.monotonic()
        status, _, payload = request(server, "POST", "/v2/models/two_inputs/infer", body)
        elapsed = time.monotonic() - started
        del body
        assert status == 413 and "above 65,536" in json.loads(payload)["error"], payload[:300]
        assert elapsed < 15 and rss_mb() - before < 500


def _held_preprocess(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[threading.Event]]:
    """Image conversions wait for the returned gate; each records its ``abandoned`` event."""
    gate, seen = threading.Event(), []
    original = ImageAdapter._preprocess

    def held(self: ImageAdapter, name: str, encoded: list[bytes], abandoned: threading.Event) -> np.ndarray:
        seen.append(abandoned)
        gate.wait(30)
        return original(self, name, encoded, abandoned)

    monkeypatch.setattr(ImageAdapter, "_preprocess", held)
    return gate, seen


def _binary_image_request(server: object, png: bytes) -> int:
    """One image in the binary tensor extension, as tritonclient sends it; the status."""
    import struct

    from serve_helpers import request

    head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(png) + 4}}]}).encode()
    body = head + struct.pack("<I", len(png)) + png
    return request(server, "POST", "/v2/models/cnn/infer", body,  # type: ignore[arg-type]
                   {"Inference-Header-Content-Length": str(len(head))})[0]


def test_images_being_converted_count_in_the_queue_limit(packages: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: forty concurrent 4000 x 4000 PNGs with max-queue-size 8 got no 503."""
    from serve_helpers import serving, wait_until

    gate, _ = _held_preprocess(monkeypatch)
    png = _huge_png(4000, 4000)
    with serving(packages[0], batching={"max_queue_size": 8, "max_batch_size": 8}) as server, \
            ThreadPoolExecutor(40) as pool:
        try:
            futures = [pool.submit(_binary_image_request, server, png) for _ in range(40)]
            wait_until(lambda: sum(f.done() for f in futures) >= 32, timeout=30, what="32 refusals")
        finally:
            gate.set()
        statuses = sorted(f.result() for f in futures)
    assert statuses == [200] * 8 + [503] * 32


def test_the_deadline_covers_the_adapter_and_abandons_its_work(packages: tuple[Path, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: --request-timeout 3 still answered 200 after 7.2 s of tokenizing."""
    import tritonclient.http as triton_http
    from serve_helpers import serving
    from tritonclient.utils import InferenceServerException

    gate, seen = _held_preprocess(monkeypatch)
    with serving(packages[0]) as server:
        tensor = triton_http.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([PHOTO.read_bytes()], dtype=object))
        client = triton_http.InferenceServerClient(server.http_url, network_timeout=60)
        started = time.monotonic()
        try:
            with pytest.raises(InferenceServerException, match="timed out after 0.3 s"):
                client.infer("cnn", [tensor], timeout=300_000)  # microseconds
        finally:
            elapsed = time.monotonic() - started
            gate.set()
        assert elapsed < 2 and seen and seen[0].is_set()
        assert client.infer("cnn", [tensor]).as_numpy("output").shape == (1, 4)
