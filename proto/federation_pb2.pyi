from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PollStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POLL_STATUS_UNSPECIFIED: _ClassVar[PollStatus]
    PENDING: _ClassVar[PollStatus]
    READY: _ClassVar[PollStatus]
    ABORTED: _ClassVar[PollStatus]
    FINISHED: _ClassVar[PollStatus]
POLL_STATUS_UNSPECIFIED: PollStatus
PENDING: PollStatus
READY: PollStatus
ABORTED: PollStatus
FINISHED: PollStatus

class Ack(_message.Message):
    __slots__ = ("round", "detail")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    round: int
    detail: str
    def __init__(self, round: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("federation_id", "protocol_version", "num_train_records", "image_dim", "text_dim", "num_classes")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_RECORDS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIM_FIELD_NUMBER: _ClassVar[int]
    TEXT_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    protocol_version: int
    num_train_records: int
    image_dim: int
    text_dim: int
    num_classes: int
    def __init__(self, federation_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., num_train_records: _Optional[int] = ..., image_dim: _Optional[int] = ..., text_dim: _Optional[int] = ..., num_classes: _Optional[int] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("federation_id", "protocol_version", "settings_json", "enrolled_sites", "next_round", "ledger_entries", "ledger_head_hash")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_JSON_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_SITES_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    LEDGER_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LEDGER_HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    protocol_version: int
    settings_json: str
    enrolled_sites: _containers.RepeatedScalarFieldContainer[str]
    next_round: int
    ledger_entries: int
    ledger_head_hash: str
    def __init__(self, federation_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., settings_json: _Optional[str] = ..., enrolled_sites: _Optional[_Iterable[str]] = ..., next_round: _Optional[int] = ..., ledger_entries: _Optional[int] = ..., ledger_head_hash: _Optional[str] = ...) -> None: ...

class WaitForRoundRequest(_message.Message):
    __slots__ = ("federation_id", "after_round")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_ROUND_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    after_round: int
    def __init__(self, federation_id: _Optional[str] = ..., after_round: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "float64_le")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    FLOAT64_LE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    float64_le: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., float64_le: _Optional[bytes] = ...) -> None: ...

class RoundConfig(_message.Message):
    __slots__ = ("status", "federation_id", "round", "completed_rounds", "cohort", "threshold", "neighbours", "fraction_bits", "max_abs_value", "vector_length", "global_prototypes", "shared_model", "phase_timeout_s", "train_timeout_s")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_BITS_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_VALUE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    SHARED_MODEL_FIELD_NUMBER: _ClassVar[int]
    PHASE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    status: PollStatus
    federation_id: str
    round: int
    completed_rounds: int
    cohort: _containers.RepeatedScalarFieldContainer[str]
    threshold: int
    neighbours: int
    fraction_bits: int
    max_abs_value: float
    vector_length: int
    global_prototypes: Tensor
    shared_model: Tensor
    phase_timeout_s: float
    train_timeout_s: float
    def __init__(self, status: _Optional[_Union[PollStatus, str]] = ..., federation_id: _Optional[str] = ..., round: _Optional[int] = ..., completed_rounds: _Optional[int] = ..., cohort: _Optional[_Iterable[str]] = ..., threshold: _Optional[int] = ..., neighbours: _Optional[int] = ..., fraction_bits: _Optional[int] = ..., max_abs_value: _Optional[float] = ..., vector_length: _Optional[int] = ..., global_prototypes: _Optional[_Union[Tensor, _Mapping]] = ..., shared_model: _Optional[_Union[Tensor, _Mapping]] = ..., phase_timeout_s: _Optional[float] = ..., train_timeout_s: _Optional[float] = ...) -> None: ...

class PhaseQuery(_message.Message):
    __slots__ = ("federation_id", "round")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round: int
    def __init__(self, federation_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class AdvertiseKeysRequest(_message.Message):
    __slots__ = ("federation_id", "round", "share_public_key", "mask_public_key", "signature")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHARE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round: int
    share_public_key: bytes
    mask_public_key: bytes
    signature: bytes
    def __init__(self, federation_id: _Optional[str] = ..., round: _Optional[int] = ..., share_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class Advertisement(_message.Message):
    __slots__ = ("site", "share_public_key", "mask_public_key", "signature", "certificate_pem")
    SITE_FIELD_NUMBER: _ClassVar[int]
    SHARE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    site: str
    share_public_key: bytes
    mask_public_key: bytes
    signature: bytes
    certificate_pem: bytes
    def __init__(self, site: _Optional[str] = ..., share_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate_pem: _Optional[bytes] = ...) -> None: ...

class Advertisements(_message.Message):
    __slots__ = ("status", "round", "advertisements", "advertisers")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ADVERTISEMENTS_FIELD_NUMBER: _ClassVar[int]
    ADVERTISERS_FIELD_NUMBER: _ClassVar[int]
    status: PollStatus
    round: int
    advertisements: _containers.RepeatedCompositeFieldContainer[Advertisement]
    advertisers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[_Union[PollStatus, str]] = ..., round: _Optional[int] = ..., advertisements: _Optional[_Iterable[_Union[Advertisement, _Mapping]]] = ..., advertisers: _Optional[_Iterable[str]] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("sender", "recipient", "nonce", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("federation_id", "round", "shares")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round: int
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, federation_id: _Optional[str] = ..., round: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class SharesForSite(_message.Message):
    __slots__ = ("status", "round", "shares")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    status: PollStatus
    round: int
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, status: _Optional[_Union[PollStatus, str]] = ..., round: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class MaskedInputRequest(_message.Message):
    __slots__ = ("federation_id", "round", "masked_uint64_le", "vector_length")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MASKED_UINT64_LE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LENGTH_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round: int
    masked_uint64_le: bytes
    vector_length: int
    def __init__(self, federation_id: _Optional[str] = ..., round: _Optional[int] = ..., masked_uint64_le: _Optional[bytes] = ..., vector_length: _Optional[int] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("status", "round", "survivors", "dropouts")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPOUTS_FIELD_NUMBER: _ClassVar[int]
    status: PollStatus
    round: int
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropouts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, status: _Optional[_Union[PollStatus, str]] = ..., round: _Optional[int] = ..., survivors: _Optional[_Iterable[str]] = ..., dropouts: _Optional[_Iterable[str]] = ...) -> None: ...

class SurvivorSignatureRequest(_message.Message):
    __slots__ = ("federation_id", "round", "signature")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round: int
    signature: bytes
    def __init__(self, federation_id: _Optional[str] = ..., round: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SurvivorSignature(_message.Message):
    __slots__ = ("site", "signature")
    SITE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    site: str
    signature: bytes
    def __init__(self, site: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SurvivorSignatures(_message.Message):
    __slots__ = ("status", "round", "signatures")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    status: PollStatus
    round: int
    signatures: _containers.RepeatedCompositeFieldContainer[SurvivorSignature]
    def __init__(self, status: _Optional[_Union[PollStatus, str]] = ..., round: _Optional[int] = ..., signatures: _Optional[_Iterable[_Union[SurvivorSignature, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    share: bytes
    def __init__(self, owner: _Optional[str] = ..., share: _Optional[bytes] = ...) -> None: ...

class UnmaskReply(_message.Message):
    __slots__ = ("federation_id", "round", "self_seed_shares", "mask_key_shares")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SELF_SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round: int
    self_seed_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    mask_key_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, federation_id: _Optional[str] = ..., round: _Optional[int] = ..., self_seed_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., mask_key_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class RoundResult(_message.Message):
    __slots__ = ("status", "round", "completed_rounds", "global_prototypes", "shared_model", "survivors", "abort_reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_PROTOTYPES_FIELD_NUMBER: _ClassVar[int]
    SHARED_MODEL_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    ABORT_REASON_FIELD_NUMBER: _ClassVar[int]
    status: PollStatus
    round: int
    completed_rounds: int
    global_prototypes: Tensor
    shared_model: Tensor
    survivors: _containers.RepeatedScalarFieldContainer[str]
    abort_reason: str
    def __init__(self, status: _Optional[_Union[PollStatus, str]] = ..., round: _Optional[int] = ..., completed_rounds: _Optional[int] = ..., global_prototypes: _Optional[_Union[Tensor, _Mapping]] = ..., shared_model: _Optional[_Union[Tensor, _Mapping]] = ..., survivors: _Optional[_Iterable[str]] = ..., abort_reason: _Optional[str] = ...) -> None: ...

class LedgerReport(_message.Message):
    __slots__ = ("federation_id", "lines", "first_seq")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    lines: _containers.RepeatedScalarFieldContainer[str]
    first_seq: int
    def __init__(self, federation_id: _Optional[str] = ..., lines: _Optional[_Iterable[str]] = ..., first_seq: _Optional[int] = ...) -> None: ...

class SiteMetrics(_message.Message):
    __slots__ = ("federation_id", "round", "bits", "map", "epsilon_spent", "epsilon_max", "noise_multiplier", "train_seconds")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_MAX_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round: int
    bits: int
    map: float
    epsilon_spent: float
    epsilon_max: float
    noise_multiplier: float
    train_seconds: float
    def __init__(self, federation_id: _Optional[str] = ..., round: _Optional[int] = ..., bits: _Optional[int] = ..., map: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., epsilon_max: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., train_seconds: _Optional[float] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("federation_id", "reason")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    reason: str
    def __init__(self, federation_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("federation_id", "round", "completed_rounds", "stage", "live_sites", "enrolled_sites")
    FEDERATION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    LIVE_SITES_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_SITES_FIELD_NUMBER: _ClassVar[int]
    federation_id: str
    round: int
    completed_rounds: int
    stage: str
    live_sites: _containers.RepeatedScalarFieldContainer[str]
    enrolled_sites: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, federation_id: _Optional[str] = ..., round: _Optional[int] = ..., completed_rounds: _Optional[int] = ..., stage: _Optional[str] = ..., live_sites: _Optional[_Iterable[str]] = ..., enrolled_sites: _Optional[_Iterable[str]] = ...) -> None: ...
