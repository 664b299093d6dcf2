"""Validation and calibration data: refused before the search when missing, misfit or not finite, naming which."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferforge.calibration import load_calibration
from inferforge.data import check_data_ref, load_dataset
from inferforge.errors import DataError
from inferforge.types import ModelSpec, TensorSpec

SPEC = ModelSpec((TensorSpec.parse("x:float32[B,4]"), TensorSpec.parse("ids:int64[B,3]")),
                 (TensorSpec.parse("y:float32[B,2]"),))


def _folder(tmp_path: Path, x: np.ndarray, samples: int = 10) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "x.npy", x)
    np.save(folder / "ids.npy", np.zeros((samples, 3), np.int64))
    return folder


def _with_nonfinite(samples: int, bad: dict[int, float]) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((samples, 4)).astype(np.float32)
    for index, value in bad.items():
        x[index, index % 4] = value
    return x


def test_samples_with_nan_or_inf_are_refused_naming_input_count_and_first_indices(tmp_path: Path) -> None:
    folder = _folder(tmp_path, _with_nonfinite(10, {2: np.nan, 5: np.inf, 7: -np.inf}))
    with pytest.raises(DataError) as info:
        load_dataset(str(folder), SPEC)
    message = str(info.value)
    assert message.startswith(f"validation data from folder {folder} holds NaN or Inf: ")
    assert "input 'x': 3 of 10 samples contain NaN or Inf (samples 2, 5, 7)" in message
    assert "ids" not in message and "\n" not in message


def test_only_the_first_indices_are_quoted(tmp_path: Path) -> None:
    folder = _folder(tmp_path, np.full((10, 4), np.nan, np.float32))
    with pytest.raises(DataError, match=r"10 of 10 samples contain NaN or Inf \(samples 0, 1, 2, 3, 4, \.\.\.\)"):
        load_dataset(str(folder), SPEC)


def test_finite_data_loads(tmp_path: Path) -> None:
    dataset = load_dataset(str(_folder(tmp_path, _with_nonfinite(10, {}))), SPEC)
    assert len(dataset) == 10


def test_calibration_data_is_called_calibration_data_in_every_message(tmp_path: Path) -> None:
    folder = _folder(tmp_path, _with_nonfinite(10, {4: np.nan}))
    with pytest.raises(DataError, match=r"^calibration data from folder .* holds NaN or Inf: input 'x': 1 of 10"):
        load_calibration(str(folder), SPEC, samples=8)
    misfit = tmp_path / "misfit"
    misfit.mkdir()
    np.save(misfit / "x.npy", np.zeros((10, 5), np.float32))
    with pytest.raises(DataError) as info:
        load_calibration(str(misfit), SPEC)
    assert str(info.value).startswith("calibration data from folder") and "validation" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="^calibration data folder .* holds no .npy or .npz files"):
        load_calibration(str(empty), SPEC)


@pytest.mark.parametrize("what", ["validation data", "calibration data"])
def test_a_missing_path_says_so_and_what_was_expected(tmp_path: Path, what: str) -> None:
    with pytest.raises(DataError, match=f"^{what} {tmp_path / 'nowhere'} does not exist: give a folder"):
        check_data_ref(str(tmp_path / "nowhere"), what)
    with pytest.raises(DataError, match=f"^{what} '.*gone.py:make': file .*gone.py does not exist"):
        check_data_ref(f"{tmp_path / 'gone.py'}:make", what)
    check_data_ref("some.module:make_data", what)  # an import path: the import says what went wrong
    check_data_ref(str(tmp_path), what)


def test_the_loaders_check_the_path_too(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="^calibration data .*nowhere does not exist"):
        load_calibration(str(tmp_path / "nowhere"), SPEC)
    with pytest.raises(DataError, match="^validation data .*nowhere does not exist"):
        load_dataset(str(tmp_path / "nowhere"), SPEC)
