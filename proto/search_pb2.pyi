from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Query(_message.Message):
    __slots__ = ("image", "text")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    image: _containers.RepeatedScalarFieldContainer[float]
    text: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, image: _Optional[_Iterable[float]] = ..., text: _Optional[_Iterable[float]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("queries", "k")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[Query]
    k: int
    def __init__(self, queries: _Optional[_Iterable[_Union[Query, _Mapping]]] = ..., k: _Optional[int] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("record_id", "row", "distance", "labels")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    row: int
    distance: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, record_id: _Optional[str] = ..., row: _Optional[int] = ..., distance: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class QueryResult(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class SearchReply(_message.Message):
    __slots__ = ("results", "model_version", "generation", "archive_size", "record_ids")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_SIZE_FIELD_NUMBER: _ClassVar[int]
    RECORD_IDS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[QueryResult]
    model_version: str
    generation: str
    archive_size: int
    record_ids: bool
    def __init__(self, results: _Optional[_Iterable[_Union[QueryResult, _Mapping]]] = ..., model_version: _Optional[str] = ..., generation: _Optional[str] = ..., archive_size: _Optional[int] = ..., record_ids: _Optional[bool] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("archive_size", "model_version", "generation", "bits", "image_dim", "text_dim", "index_ready")
    ARCHIVE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIM_FIELD_NUMBER: _ClassVar[int]
    TEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    INDEX_READY_FIELD_NUMBER: _ClassVar[int]
    archive_size: int
    model_version: str
    generation: str
    bits: int
    image_dim: int
    text_dim: int
    index_ready: bool
    def __init__(self, archive_size: _Optional[int] = ..., model_version: _Optional[str] = ..., generation: _Optional[str] = ..., bits: _Optional[int] = ..., image_dim: _Optional[int] = ..., text_dim: _Optional[int] = ..., index_ready: _Optional[bool] = ...) -> None: ...
