from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatRequest(_message.Message):
    __slots__ = ("bucket", "key")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("bucket", "key", "size", "etag", "last_modified", "block_size")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    LAST_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    size: int
    etag: str
    last_modified: float
    block_size: int
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ..., size: _Optional[int] = ..., etag: _Optional[str] = ..., last_modified: _Optional[float] = ..., block_size: _Optional[int] = ...) -> None: ...

class ReadRangeRequest(_message.Message):
    __slots__ = ("bucket", "key", "offset", "length", "etag")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    offset: int
    length: int
    etag: str
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., etag: _Optional[str] = ...) -> None: ...

class ReadBlockRequest(_message.Message):
    __slots__ = ("bucket", "key", "etag", "object_size", "index", "hops", "ring_epoch", "cached_only")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    OBJECT_SIZE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    RING_EPOCH_FIELD_NUMBER: _ClassVar[int]
    CACHED_ONLY_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    etag: str
    object_size: int
    index: int
    hops: int
    ring_epoch: int
    cached_only: bool
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ..., etag: _Optional[str] = ..., object_size: _Optional[int] = ..., index: _Optional[int] = ..., hops: _Optional[int] = ..., ring_epoch: _Optional[int] = ..., cached_only: _Optional[bool] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data", "offset", "info", "block_crc32c")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    BLOCK_CRC32C_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    info: ObjectInfo
    block_crc32c: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., info: _Optional[_Union[ObjectInfo, _Mapping]] = ..., block_crc32c: _Optional[int] = ...) -> None: ...
