"""Tests of pfmh_model.record_file: modalities present or absent per record, ids, dimension checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pfmh_model.errors import DataError
from pfmh_model.record_file import load_records, save_records


def test_missing_modality_by_dataset_or_by_nan_row(tmp_path: Path) -> None:
    # Prepare
    image = np.ones((3, 4), np.float32)
    image[1] = np.nan
    text = np.full((3, 2), 2.0, np.float32)
    save_records(tmp_path / "r.h5", image=image, text=text, ids=["a", "b", "c"])
    save_records(tmp_path / "t.h5", image=None, text=text)
    # Execute
    both = load_records(tmp_path / "r.h5", image_dim=4, text_dim=2)
    text_only = load_records(tmp_path / "t.h5", image_dim=4, text_dim=2)
    # Assert
    assert both.present.tolist() == [[True, True], [False, True], [True, True]]
    assert not both.image[1].any() and list(both.ids) == ["a", "b", "c"]
    assert text_only.present.tolist() == [[False, True]] * 3 and text_only.ids is None


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    # Prepare
    save_records(tmp_path / "dim.h5", image=np.ones((2, 5)), text=None)
    nothing = np.full((1, 4), np.nan)
    save_records(tmp_path / "empty.h5", image=nothing, text=None)
    half = np.ones((1, 4))
    half[0, 1] = np.nan
    save_records(tmp_path / "half.h5", image=half, text=None)
    # Execute / Assert
    with pytest.raises(DataError, match="image features are 5-d, the model expects 4-d"):
        load_records(tmp_path / "dim.h5", image_dim=4, text_dim=2)
    with pytest.raises(DataError, match="neither an image nor a text"):
        load_records(tmp_path / "empty.h5", image_dim=4, text_dim=2)
    with pytest.raises(DataError, match="row 0 has NaN"):
        load_records(tmp_path / "half.h5", image_dim=4, text_dim=2)
    with pytest.raises(DataError, match="not an HDF5 record file"):
        load_records(tmp_path / "none.h5", image_dim=4, text_dim=2)
