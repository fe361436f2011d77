"""numpy arrays <-> ``pfmh.v1.Tensor`` (row-major little-endian float64), with size checks."""
from __future__ import annotations

import numpy as np

from proto import federation_pb2 as pb

MAX_TENSOR_VALUES = 1 << 27  # 1 GiB of float64; gRPC's message limit is lower anyway


class TensorError(ValueError):
    """A Tensor message whose shape and payload disagree."""


def to_tensor(array: np.ndarray | None) -> pb.Tensor:
    """Empty Tensor for None."""
    if array is None:
        return pb.Tensor()
    data = np.ascontiguousarray(array, dtype="<f8")
    return pb.Tensor(shape=list(data.shape), float64_le=data.tobytes())


def from_tensor(tensor: pb.Tensor) -> np.ndarray | None:
    """None for an empty Tensor; raises TensorError when shape and bytes disagree."""
    if not tensor.shape and not tensor.float64_le:
        return None
    size = int(np.prod(tensor.shape, dtype=np.int64)) if tensor.shape else 0
    if size > MAX_TENSOR_VALUES or size * 8 != len(tensor.float64_le):
        raise TensorError(f"tensor of shape {list(tensor.shape)} carries {len(tensor.float64_le)} bytes")
    return np.frombuffer(tensor.float64_le, dtype="<f8").astype(np.float64).reshape(tuple(tensor.shape))
