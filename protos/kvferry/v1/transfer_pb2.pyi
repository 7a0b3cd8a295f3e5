from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransferState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSFER_STATE_UNSPECIFIED: _ClassVar[TransferState]
    TRANSFER_STATE_BOOTSTRAPPING: _ClassVar[TransferState]
    TRANSFER_STATE_TRANSFERRING: _ClassVar[TransferState]
    TRANSFER_STATE_RESUMING: _ClassVar[TransferState]
    TRANSFER_STATE_SUCCESS: _ClassVar[TransferState]
    TRANSFER_STATE_FAILED: _ClassVar[TransferState]

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_TRANSFER_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_NOT_OPENED: _ClassVar[ErrorReason]
    ERROR_REASON_BAD_TRANSFER_ID: _ClassVar[ErrorReason]
    ERROR_REASON_BAD_TOTAL_TOKENS: _ClassVar[ErrorReason]
    ERROR_REASON_METADATA_TOO_LARGE: _ClassVar[ErrorReason]
    ERROR_REASON_REASON_TOO_LARGE: _ClassVar[ErrorReason]
    ERROR_REASON_WINDOW_TOO_LARGE: _ClassVar[ErrorReason]
    ERROR_REASON_ROWS_PAST_TOTAL: _ClassVar[ErrorReason]
    ERROR_REASON_PARTIAL_ROW: _ClassVar[ErrorReason]
    ERROR_REASON_BAD_COMMIT: _ClassVar[ErrorReason]
    ERROR_REASON_BAD_STREAM: _ClassVar[ErrorReason]
    ERROR_REASON_BAD_PAGE: _ClassVar[ErrorReason]
    ERROR_REASON_TRANSPORT_NOT_OFFERED: _ClassVar[ErrorReason]
    ERROR_REASON_BAD_SECRET: _ClassVar[ErrorReason]
    ERROR_REASON_BAD_REQUEST: _ClassVar[ErrorReason]
    ERROR_REASON_TRANSFER_EXISTS: _ClassVar[ErrorReason]
    ERROR_REASON_STALE_INCARNATION: _ClassVar[ErrorReason]
    ERROR_REASON_WRONG_STATE: _ClassVar[ErrorReason]
    ERROR_REASON_TRANSFER_FINISHED: _ClassVar[ErrorReason]
    ERROR_REASON_TRANSFER_LIVE: _ClassVar[ErrorReason]
    ERROR_REASON_SENT_TOKENS_MISMATCH: _ClassVar[ErrorReason]
    ERROR_REASON_WINDOW_NOT_FULL: _ClassVar[ErrorReason]
    ERROR_REASON_NOTHING_TO_RESUME: _ClassVar[ErrorReason]
    ERROR_REASON_NOT_ATTACHED: _ClassVar[ErrorReason]
    ERROR_REASON_TOTAL_TOKENS_MISMATCH: _ClassVar[ErrorReason]
    ERROR_REASON_WINDOW_LENT: _ClassVar[ErrorReason]
    ERROR_REASON_GRANT_EXPIRED: _ClassVar[ErrorReason]
    ERROR_REASON_NOT_GRANTED: _ClassVar[ErrorReason]
    ERROR_REASON_POOL_NOT_EXPORTABLE: _ClassVar[ErrorReason]
    ERROR_REASON_TOKEN_GAP: _ClassVar[ErrorReason]
    ERROR_REASON_POOL_EXHAUSTED: _ClassVar[ErrorReason]
    ERROR_REASON_RESUMES_QUEUED: _ClassVar[ErrorReason]
    ERROR_REASON_TOO_MANY_TRANSFERS: _ClassVar[ErrorReason]
    ERROR_REASON_TOO_MANY_STREAMS: _ClassVar[ErrorReason]
    ERROR_REASON_TRANSFER_FAILED: _ClassVar[ErrorReason]
    ERROR_REASON_WINDOW_CHANGED: _ClassVar[ErrorReason]
    ERROR_REASON_DRAINING: _ClassVar[ErrorReason]
    ERROR_REASON_FAULT_INJECTED: _ClassVar[ErrorReason]
    ERROR_REASON_SECRET_REQUIRED: _ClassVar[ErrorReason]
    ERROR_REASON_SECRET_MISMATCH: _ClassVar[ErrorReason]
    ERROR_REASON_RECEIVER_SECRET_REQUIRED: _ClassVar[ErrorReason]
    ERROR_REASON_ID_CLAIMED: _ClassVar[ErrorReason]
    ERROR_REASON_BEARER_TOKEN: _ClassVar[ErrorReason]
    ERROR_REASON_ADMIN_TOKEN: _ClassVar[ErrorReason]
    ERROR_REASON_BAD_READER: _ClassVar[ErrorReason]
TRANSFER_STATE_UNSPECIFIED: TransferState
TRANSFER_STATE_BOOTSTRAPPING: TransferState
TRANSFER_STATE_TRANSFERRING: TransferState
TRANSFER_STATE_RESUMING: TransferState
TRANSFER_STATE_SUCCESS: TransferState
TRANSFER_STATE_FAILED: TransferState
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_TRANSFER_NOT_FOUND: ErrorReason
ERROR_REASON_NOT_OPENED: ErrorReason
ERROR_REASON_BAD_TRANSFER_ID: ErrorReason
ERROR_REASON_BAD_TOTAL_TOKENS: ErrorReason
ERROR_REASON_METADATA_TOO_LARGE: ErrorReason
ERROR_REASON_REASON_TOO_LARGE: ErrorReason
ERROR_REASON_WINDOW_TOO_LARGE: ErrorReason
ERROR_REASON_ROWS_PAST_TOTAL: ErrorReason
ERROR_REASON_PARTIAL_ROW: ErrorReason
ERROR_REASON_BAD_COMMIT: ErrorReason
ERROR_REASON_BAD_STREAM: ErrorReason
ERROR_REASON_BAD_PAGE: ErrorReason
ERROR_REASON_TRANSPORT_NOT_OFFERED: ErrorReason
ERROR_REASON_BAD_SECRET: ErrorReason
ERROR_REASON_BAD_REQUEST: ErrorReason
ERROR_REASON_TRANSFER_EXISTS: ErrorReason
ERROR_REASON_STALE_INCARNATION: ErrorReason
ERROR_REASON_WRONG_STATE: ErrorReason
ERROR_REASON_TRANSFER_FINISHED: ErrorReason
ERROR_REASON_TRANSFER_LIVE: ErrorReason
ERROR_REASON_SENT_TOKENS_MISMATCH: ErrorReason
ERROR_REASON_WINDOW_NOT_FULL: ErrorReason
ERROR_REASON_NOTHING_TO_RESUME: ErrorReason
ERROR_REASON_NOT_ATTACHED: ErrorReason
ERROR_REASON_TOTAL_TOKENS_MISMATCH: ErrorReason
ERROR_REASON_WINDOW_LENT: ErrorReason
ERROR_REASON_GRANT_EXPIRED: ErrorReason
ERROR_REASON_NOT_GRANTED: ErrorReason
ERROR_REASON_POOL_NOT_EXPORTABLE: ErrorReason
ERROR_REASON_TOKEN_GAP: ErrorReason
ERROR_REASON_POOL_EXHAUSTED: ErrorReason
ERROR_REASON_RESUMES_QUEUED: ErrorReason
ERROR_REASON_TOO_MANY_TRANSFERS: ErrorReason
ERROR_REASON_TOO_MANY_STREAMS: ErrorReason
ERROR_REASON_TRANSFER_FAILED: ErrorReason
ERROR_REASON_WINDOW_CHANGED: ErrorReason
ERROR_REASON_DRAINING: ErrorReason
ERROR_REASON_FAULT_INJECTED: ErrorReason
ERROR_REASON_SECRET_REQUIRED: ErrorReason
ERROR_REASON_SECRET_MISMATCH: ErrorReason
ERROR_REASON_RECEIVER_SECRET_REQUIRED: ErrorReason
ERROR_REASON_ID_CLAIMED: ErrorReason
ERROR_REASON_BEARER_TOKEN: ErrorReason
ERROR_REASON_ADMIN_TOKEN: ErrorReason
ERROR_REASON_BAD_READER: ErrorReason

class TransferStatus(_message.Message):
    __slots__ = ("transfer_id", "state", "total_tokens", "sent_tokens", "window_start_token", "window_tokens", "window_filled_tokens", "block_indices", "resume_count", "failure_reason", "metadata", "last_resume_sent_tokens", "waiting_for_blocks", "window_epoch", "incarnation", "readers", "readers_resumed")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SENT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_TOKEN_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FILLED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_INDICES_FIELD_NUMBER: _ClassVar[int]
    RESUME_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LAST_RESUME_SENT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_EPOCH_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    READERS_FIELD_NUMBER: _ClassVar[int]
    READERS_RESUMED_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    state: TransferState
    total_tokens: int
    sent_tokens: int
    window_start_token: int
    window_tokens: int
    window_filled_tokens: int
    block_indices: _containers.RepeatedScalarFieldContainer[int]
    resume_count: int
    failure_reason: str
    metadata: bytes
    last_resume_sent_tokens: int
    waiting_for_blocks: bool
    window_epoch: int
    incarnation: int
    readers: int
    readers_resumed: int
    def __init__(self, transfer_id: _Optional[str] = ..., state: _Optional[_Union[TransferState, str]] = ..., total_tokens: _Optional[int] = ..., sent_tokens: _Optional[int] = ..., window_start_token: _Optional[int] = ..., window_tokens: _Optional[int] = ..., window_filled_tokens: _Optional[int] = ..., block_indices: _Optional[_Iterable[int]] = ..., resume_count: _Optional[int] = ..., failure_reason: _Optional[str] = ..., metadata: _Optional[bytes] = ..., last_resume_sent_tokens: _Optional[int] = ..., waiting_for_blocks: _Optional[bool] = ..., window_epoch: _Optional[int] = ..., incarnation: _Optional[int] = ..., readers: _Optional[int] = ..., readers_resumed: _Optional[int] = ...) -> None: ...

class GetPoolInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PoolInfo(_message.Message):
    __slots__ = ("block_tokens", "num_blocks", "free_blocks", "row_bytes", "device", "default_window_tokens", "max_message_bytes", "transfers", "transports", "host_id", "shm_path", "quarantined_blocks", "mooncake_session", "mooncake_protocol", "mooncake_base_address", "max_metadata_bytes", "transfer_secrets_required", "transport_params", "local_calls_path")
    class TransportParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TransportParams
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TransportParams, _Mapping]] = ...) -> None: ...
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    ROW_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SHM_PATH_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MOONCAKE_SESSION_FIELD_NUMBER: _ClassVar[int]
    MOONCAKE_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    MOONCAKE_BASE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MAX_METADATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SECRETS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_CALLS_PATH_FIELD_NUMBER: _ClassVar[int]
    block_tokens: int
    num_blocks: int
    free_blocks: int
    row_bytes: int
    device: str
    default_window_tokens: int
    max_message_bytes: int
    transfers: int
    transports: _containers.RepeatedScalarFieldContainer[str]
    host_id: str
    shm_path: str
    quarantined_blocks: int
    mooncake_session: str
    mooncake_protocol: str
    mooncake_base_address: int
    max_metadata_bytes: int
    transfer_secrets_required: bool
    transport_params: _containers.MessageMap[str, TransportParams]
    local_calls_path: str
    def __init__(self, block_tokens: _Optional[int] = ..., num_blocks: _Optional[int] = ..., free_blocks: _Optional[int] = ..., row_bytes: _Optional[int] = ..., device: _Optional[str] = ..., default_window_tokens: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., transfers: _Optional[int] = ..., transports: _Optional[_Iterable[str]] = ..., host_id: _Optional[str] = ..., shm_path: _Optional[str] = ..., quarantined_blocks: _Optional[int] = ..., mooncake_session: _Optional[str] = ..., mooncake_protocol: _Optional[str] = ..., mooncake_base_address: _Optional[int] = ..., max_metadata_bytes: _Optional[int] = ..., transfer_secrets_required: _Optional[bool] = ..., transport_params: _Optional[_Mapping[str, TransportParams]] = ..., local_calls_path: _Optional[str] = ...) -> None: ...

class TransportParams(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OpenRequest(_message.Message):
    __slots__ = ("transfer_id", "window_tokens", "readers")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    READERS_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    window_tokens: int
    readers: int
    def __init__(self, transfer_id: _Optional[str] = ..., window_tokens: _Optional[int] = ..., readers: _Optional[int] = ...) -> None: ...

class OpenResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: TransferStatus
    def __init__(self, status: _Optional[_Union[TransferStatus, _Mapping]] = ...) -> None: ...

class PushRequest(_message.Message):
    __slots__ = ("transfer_id", "total_tokens", "metadata", "start_token", "rows", "incarnation")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    START_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    total_tokens: int
    metadata: bytes
    start_token: int
    rows: bytes
    incarnation: int
    def __init__(self, transfer_id: _Optional[str] = ..., total_tokens: _Optional[int] = ..., metadata: _Optional[bytes] = ..., start_token: _Optional[int] = ..., rows: _Optional[bytes] = ..., incarnation: _Optional[int] = ...) -> None: ...

class PushResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: TransferStatus
    def __init__(self, status: _Optional[_Union[TransferStatus, _Mapping]] = ...) -> None: ...

class PollRequest(_message.Message):
    __slots__ = ("transfer_id", "incarnation")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    incarnation: int
    def __init__(self, transfer_id: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("transfer_id", "incarnation", "until_done", "reader")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    UNTIL_DONE_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    incarnation: int
    until_done: bool
    reader: int
    def __init__(self, transfer_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., until_done: _Optional[bool] = ..., reader: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("transfer_id", "incarnation")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    incarnation: int
    def __init__(self, transfer_id: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("start_token", "rows")
    START_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    start_token: int
    rows: bytes
    def __init__(self, start_token: _Optional[int] = ..., rows: _Optional[bytes] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("transfer_id", "sent_tokens", "window_tokens", "incarnation", "reader")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    sent_tokens: int
    window_tokens: int
    incarnation: int
    reader: int
    def __init__(self, transfer_id: _Optional[str] = ..., sent_tokens: _Optional[int] = ..., window_tokens: _Optional[int] = ..., incarnation: _Optional[int] = ..., reader: _Optional[int] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ("status", "duplicate", "readers_pending")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    READERS_PENDING_FIELD_NUMBER: _ClassVar[int]
    status: TransferStatus
    duplicate: bool
    readers_pending: int
    def __init__(self, status: _Optional[_Union[TransferStatus, _Mapping]] = ..., duplicate: _Optional[bool] = ..., readers_pending: _Optional[int] = ...) -> None: ...

class AbortRequest(_message.Message):
    __slots__ = ("transfer_id", "reason", "incarnation")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    reason: str
    incarnation: int
    def __init__(self, transfer_id: _Optional[str] = ..., reason: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("transfer_id", "incarnation", "reader")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    READER_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    incarnation: int
    reader: int
    def __init__(self, transfer_id: _Optional[str] = ..., incarnation: _Optional[int] = ..., reader: _Optional[int] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("status", "freed_blocks")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FREED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    status: TransferStatus
    freed_blocks: int
    def __init__(self, status: _Optional[_Union[TransferStatus, _Mapping]] = ..., freed_blocks: _Optional[int] = ...) -> None: ...

class ExportPoolRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportPoolResponse(_message.Message):
    __slots__ = ("host_id", "gpu_uuid", "device", "ipc_handle", "storage_size_bytes", "storage_offset_bytes", "ref_counter_handle", "ref_counter_offset", "event_handle", "event_sync_required", "num_blocks", "block_tokens", "row_bytes")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_UUID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    IPC_HANDLE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    REF_COUNTER_HANDLE_FIELD_NUMBER: _ClassVar[int]
    REF_COUNTER_OFFSET_FIELD_NUMBER: _ClassVar[int]
    EVENT_HANDLE_FIELD_NUMBER: _ClassVar[int]
    EVENT_SYNC_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ROW_BYTES_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    gpu_uuid: str
    device: str
    ipc_handle: bytes
    storage_size_bytes: int
    storage_offset_bytes: int
    ref_counter_handle: bytes
    ref_counter_offset: int
    event_handle: bytes
    event_sync_required: bool
    num_blocks: int
    block_tokens: int
    row_bytes: int
    def __init__(self, host_id: _Optional[str] = ..., gpu_uuid: _Optional[str] = ..., device: _Optional[str] = ..., ipc_handle: _Optional[bytes] = ..., storage_size_bytes: _Optional[int] = ..., storage_offset_bytes: _Optional[int] = ..., ref_counter_handle: _Optional[bytes] = ..., ref_counter_offset: _Optional[int] = ..., event_handle: _Optional[bytes] = ..., event_sync_required: _Optional[bool] = ..., num_blocks: _Optional[int] = ..., block_tokens: _Optional[int] = ..., row_bytes: _Optional[int] = ...) -> None: ...

class AttachRequest(_message.Message):
    __slots__ = ("transfer_id", "total_tokens", "metadata", "transport", "incarnation")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    total_tokens: int
    metadata: bytes
    transport: str
    incarnation: int
    def __init__(self, transfer_id: _Optional[str] = ..., total_tokens: _Optional[int] = ..., metadata: _Optional[bytes] = ..., transport: _Optional[str] = ..., incarnation: _Optional[int] = ...) -> None: ...

class Grant(_message.Message):
    __slots__ = ("epoch", "start_token", "tokens", "window_start_token", "block_indices", "block_tokens", "incarnation")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    START_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_TOKEN_FIELD_NUMBER: _ClassVar[int]
    BLOCK_INDICES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    start_token: int
    tokens: int
    window_start_token: int
    block_indices: _containers.RepeatedScalarFieldContainer[int]
    block_tokens: int
    incarnation: int
    def __init__(self, epoch: _Optional[int] = ..., start_token: _Optional[int] = ..., tokens: _Optional[int] = ..., window_start_token: _Optional[int] = ..., block_indices: _Optional[_Iterable[int]] = ..., block_tokens: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("transfer_id", "epoch", "start_token", "tokens", "incarnation")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    START_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    epoch: int
    start_token: int
    tokens: int
    incarnation: int
    def __init__(self, transfer_id: _Optional[str] = ..., epoch: _Optional[int] = ..., start_token: _Optional[int] = ..., tokens: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("status", "duplicate")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    status: TransferStatus
    duplicate: bool
    def __init__(self, status: _Optional[_Union[TransferStatus, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class DetachRequest(_message.Message):
    __slots__ = ("transfer_id", "epoch", "incarnation")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    epoch: int
    incarnation: int
    def __init__(self, transfer_id: _Optional[str] = ..., epoch: _Optional[int] = ..., incarnation: _Optional[int] = ...) -> None: ...

class DetachResponse(_message.Message):
    __slots__ = ("freed_blocks",)
    FREED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    freed_blocks: int
    def __init__(self, freed_blocks: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StateCount(_message.Message):
    __slots__ = ("state", "count")
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    state: TransferState
    count: int
    def __init__(self, state: _Optional[_Union[TransferState, str]] = ..., count: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("pool", "transfers", "resumes_waiting", "resumes_applied", "resume_duplicates", "transfers_started", "tokens_received", "uptime_seconds", "draining", "fence_timeouts", "recent_failures")
    POOL_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    RESUMES_WAITING_FIELD_NUMBER: _ClassVar[int]
    RESUMES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    RESUME_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    TRANSFERS_STARTED_FIELD_NUMBER: _ClassVar[int]
    TOKENS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    FENCE_TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_FAILURES_FIELD_NUMBER: _ClassVar[int]
    pool: PoolInfo
    transfers: _containers.RepeatedCompositeFieldContainer[StateCount]
    resumes_waiting: int
    resumes_applied: int
    resume_duplicates: int
    transfers_started: int
    tokens_received: int
    uptime_seconds: float
    draining: bool
    fence_timeouts: int
    recent_failures: _containers.RepeatedCompositeFieldContainer[TransferSummary]
    def __init__(self, pool: _Optional[_Union[PoolInfo, _Mapping]] = ..., transfers: _Optional[_Iterable[_Union[StateCount, _Mapping]]] = ..., resumes_waiting: _Optional[int] = ..., resumes_applied: _Optional[int] = ..., resume_duplicates: _Optional[int] = ..., transfers_started: _Optional[int] = ..., tokens_received: _Optional[int] = ..., uptime_seconds: _Optional[float] = ..., draining: _Optional[bool] = ..., fence_timeouts: _Optional[int] = ..., recent_failures: _Optional[_Iterable[_Union[TransferSummary, _Mapping]]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[TransferState]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[TransferState, str]]] = ...) -> None: ...

class TransferSummary(_message.Message):
    __slots__ = ("status", "age_seconds", "idle_seconds", "outcome", "metadata_bytes")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    METADATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    status: TransferStatus
    age_seconds: float
    idle_seconds: float
    outcome: str
    metadata_bytes: int
    def __init__(self, status: _Optional[_Union[TransferStatus, _Mapping]] = ..., age_seconds: _Optional[float] = ..., idle_seconds: _Optional[float] = ..., outcome: _Optional[str] = ..., metadata_bytes: _Optional[int] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("transfers", "next_page_token")
    TRANSFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transfers: _containers.RepeatedCompositeFieldContainer[TransferSummary]
    next_page_token: str
    def __init__(self, transfers: _Optional[_Iterable[_Union[TransferSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
