import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("timestamp", "event", "agent", "host", "user", "process", "file", "device", "tags", "exfilguard")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    EXFILGUARD_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    event: EventInfo
    agent: AgentInfo
    host: Host
    user: User
    process: Process
    file: File
    device: Device
    tags: _containers.RepeatedScalarFieldContainer[str]
    exfilguard: Extensions
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., event: _Optional[_Union[EventInfo, _Mapping]] = ..., agent: _Optional[_Union[AgentInfo, _Mapping]] = ..., host: _Optional[_Union[Host, _Mapping]] = ..., user: _Optional[_Union[User, _Mapping]] = ..., process: _Optional[_Union[Process, _Mapping]] = ..., file: _Optional[_Union[File, _Mapping]] = ..., device: _Optional[_Union[Device, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., exfilguard: _Optional[_Union[Extensions, _Mapping]] = ...) -> None: ...

class EventInfo(_message.Message):
    __slots__ = ("id", "action", "sequence", "kind", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: str
    sequence: int
    kind: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., action: _Optional[str] = ..., sequence: _Optional[int] = ..., kind: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("id", "version")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: str
    def __init__(self, id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("name", "id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    id: str
    def __init__(self, name: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ParentProcess(_message.Message):
    __slots__ = ("pid",)
    PID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    def __init__(self, pid: _Optional[int] = ...) -> None: ...

class Process(_message.Message):
    __slots__ = ("pid", "executable", "command_line", "name", "parent")
    PID_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_LINE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    pid: int
    executable: str
    command_line: str
    name: str
    parent: ParentProcess
    def __init__(self, pid: _Optional[int] = ..., executable: _Optional[str] = ..., command_line: _Optional[str] = ..., name: _Optional[str] = ..., parent: _Optional[_Union[ParentProcess, _Mapping]] = ...) -> None: ...

class Hash(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class File(_message.Message):
    __slots__ = ("path", "size", "hash", "name", "extension", "target_path", "type")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXTENSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_PATH_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    hash: Hash
    name: str
    extension: str
    target_path: str
    type: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., hash: _Optional[_Union[Hash, _Mapping]] = ..., name: _Optional[str] = ..., extension: _Optional[str] = ..., target_path: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("name", "serial", "vendor", "model", "vendor_id", "product_id", "bus", "size", "removable", "type", "parent")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    VENDOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VENDOR_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    BUS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REMOVABLE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    serial: str
    vendor: str
    model: str
    vendor_id: str
    product_id: str
    bus: str
    size: int
    removable: bool
    type: str
    parent: str
    def __init__(self, name: _Optional[str] = ..., serial: _Optional[str] = ..., vendor: _Optional[str] = ..., model: _Optional[str] = ..., vendor_id: _Optional[str] = ..., product_id: _Optional[str] = ..., bus: _Optional[str] = ..., size: _Optional[int] = ..., removable: _Optional[bool] = ..., type: _Optional[str] = ..., parent: _Optional[str] = ...) -> None: ...

class LoginUser(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class Mount(_message.Message):
    __slots__ = ("point", "fs_type", "label", "uuid", "read_only", "source")
    POINT_FIELD_NUMBER: _ClassVar[int]
    FS_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    point: str
    fs_type: str
    label: str
    uuid: str
    read_only: bool
    source: str
    def __init__(self, point: _Optional[str] = ..., fs_type: _Optional[str] = ..., label: _Optional[str] = ..., uuid: _Optional[str] = ..., read_only: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("path", "tags", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    sha256: str
    def __init__(self, path: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class Copy(_message.Message):
    __slots__ = ("method", "files_read", "identified_by", "confidence", "share", "members", "sources", "members_total", "bytes_read", "bytes_written", "revises")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FILES_READ_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIED_BY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_READ_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    REVISES_FIELD_NUMBER: _ClassVar[int]
    method: _containers.RepeatedScalarFieldContainer[str]
    files_read: int
    identified_by: str
    confidence: float
    share: float
    members: _containers.RepeatedCompositeFieldContainer[Member]
    sources: _containers.RepeatedScalarFieldContainer[str]
    members_total: int
    bytes_read: int
    bytes_written: int
    revises: str
    def __init__(self, method: _Optional[_Iterable[str]] = ..., files_read: _Optional[int] = ..., identified_by: _Optional[str] = ..., confidence: _Optional[float] = ..., share: _Optional[float] = ..., members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., sources: _Optional[_Iterable[str]] = ..., members_total: _Optional[int] = ..., bytes_read: _Optional[int] = ..., bytes_written: _Optional[int] = ..., revises: _Optional[str] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("name", "source", "identified_by", "share", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIED_BY_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    identified_by: str
    share: float
    size: int
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., identified_by: _Optional[str] = ..., share: _Optional[float] = ..., size: _Optional[int] = ...) -> None: ...

class Content(_message.Message):
    __slots__ = ("entropy", "format", "refused")
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    entropy: float
    format: str
    refused: str
    def __init__(self, entropy: _Optional[float] = ..., format: _Optional[str] = ..., refused: _Optional[str] = ...) -> None: ...

class LateWindow(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Gap(_message.Message):
    __slots__ = ("lost", "reason", "first", "last")
    LOST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    lost: int
    reason: str
    first: _timestamp_pb2.Timestamp
    last: _timestamp_pb2.Timestamp
    def __init__(self, lost: _Optional[int] = ..., reason: _Optional[str] = ..., first: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TagInventory(_message.Message):
    __slots__ = ("tag", "files", "bytes")
    TAG_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tag: str
    files: int
    bytes: int
    def __init__(self, tag: _Optional[str] = ..., files: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Extensions(_message.Message):
    __slots__ = ("attribution", "login_user", "mount", "source", "copy", "gap", "inventory", "count", "config_version", "content", "late", "late_window")
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    LOGIN_USER_FIELD_NUMBER: _ClassVar[int]
    MOUNT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    GAP_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    LATE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    attribution: str
    login_user: LoginUser
    mount: Mount
    source: Source
    copy: Copy
    gap: Gap
    inventory: _containers.RepeatedCompositeFieldContainer[TagInventory]
    count: int
    config_version: str
    content: Content
    late: bool
    late_window: LateWindow
    def __init__(self, attribution: _Optional[str] = ..., login_user: _Optional[_Union[LoginUser, _Mapping]] = ..., mount: _Optional[_Union[Mount, _Mapping]] = ..., source: _Optional[_Union[Source, _Mapping]] = ..., copy: _Optional[_Union[Copy, _Mapping]] = ..., gap: _Optional[_Union[Gap, _Mapping]] = ..., inventory: _Optional[_Iterable[_Union[TagInventory, _Mapping]]] = ..., count: _Optional[int] = ..., config_version: _Optional[str] = ..., content: _Optional[_Union[Content, _Mapping]] = ..., late: _Optional[bool] = ..., late_window: _Optional[_Union[LateWindow, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "version", "hostname", "capabilities", "last_acked_sequence", "next_sequence", "config_version")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    LAST_ACKED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    version: str
    hostname: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    last_acked_sequence: int
    next_sequence: int
    config_version: str
    def __init__(self, agent_id: _Optional[str] = ..., version: _Optional[str] = ..., hostname: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., last_acked_sequence: _Optional[int] = ..., next_sequence: _Optional[int] = ..., config_version: _Optional[str] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent", "backlog", "config_version")
    SENT_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VERSION_FIELD_NUMBER: _ClassVar[int]
    sent: _timestamp_pb2.Timestamp
    backlog: int
    config_version: str
    def __init__(self, sent: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., backlog: _Optional[int] = ..., config_version: _Optional[str] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "batch", "heartbeat")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    batch: EventBatch
    heartbeat: Heartbeat
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., batch: _Optional[_Union[EventBatch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class AgentConfig(_message.Message):
    __slots__ = ("version", "yaml")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    version: str
    yaml: str
    def __init__(self, version: _Optional[str] = ..., yaml: _Optional[str] = ...) -> None: ...

class CollectorMessage(_message.Message):
    __slots__ = ("ack", "config")
    ACK_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    config: AgentConfig
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., config: _Optional[_Union[AgentConfig, _Mapping]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("token", "csr_pem")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    token: str
    csr_pem: bytes
    def __init__(self, token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_pem")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: bytes
    ca_pem: bytes
    def __init__(self, certificate_pem: _Optional[bytes] = ..., ca_pem: _Optional[bytes] = ...) -> None: ...
