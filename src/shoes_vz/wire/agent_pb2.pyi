import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunnerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUNNER_STATE_UNSPECIFIED: _ClassVar[RunnerState]
    RUNNER_STATE_CREATING: _ClassVar[RunnerState]
    RUNNER_STATE_BOOTING: _ClassVar[RunnerState]
    RUNNER_STATE_SSH_READY: _ClassVar[RunnerState]
    RUNNER_STATE_RUNNING: _ClassVar[RunnerState]
    RUNNER_STATE_TEARING_DOWN: _ClassVar[RunnerState]
    RUNNER_STATE_ERROR: _ClassVar[RunnerState]

class GuestRunnerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GUEST_RUNNER_STATE_UNSPECIFIED: _ClassVar[GuestRunnerState]
    GUEST_RUNNER_STATE_OFFLINE: _ClassVar[GuestRunnerState]
    GUEST_RUNNER_STATE_IDLE: _ClassVar[GuestRunnerState]
    GUEST_RUNNER_STATE_PREPARING: _ClassVar[GuestRunnerState]
    GUEST_RUNNER_STATE_RUNNING: _ClassVar[GuestRunnerState]
    GUEST_RUNNER_STATE_FINISHED: _ClassVar[GuestRunnerState]
RUNNER_STATE_UNSPECIFIED: RunnerState
RUNNER_STATE_CREATING: RunnerState
RUNNER_STATE_BOOTING: RunnerState
RUNNER_STATE_SSH_READY: RunnerState
RUNNER_STATE_RUNNING: RunnerState
RUNNER_STATE_TEARING_DOWN: RunnerState
RUNNER_STATE_ERROR: RunnerState
GUEST_RUNNER_STATE_UNSPECIFIED: GuestRunnerState
GUEST_RUNNER_STATE_OFFLINE: GuestRunnerState
GUEST_RUNNER_STATE_IDLE: GuestRunnerState
GUEST_RUNNER_STATE_PREPARING: GuestRunnerState
GUEST_RUNNER_STATE_RUNNING: GuestRunnerState
GUEST_RUNNER_STATE_FINISHED: GuestRunnerState

class AgentCapacity(_message.Message):
    __slots__ = ("max_runners", "cpu_cores", "memory_bytes")
    MAX_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_runners: int
    cpu_cores: int
    memory_bytes: int
    def __init__(self, max_runners: _Optional[int] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class Template(_message.Message):
    __slots__ = ("name", "version", "resource_types", "cpu_cores", "memory_bytes", "digest", "warm_slots", "free_warm_slots")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPES_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    WARM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    FREE_WARM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    resource_types: _containers.RepeatedScalarFieldContainer[str]
    cpu_cores: int
    memory_bytes: int
    digest: str
    warm_slots: int
    free_warm_slots: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., resource_types: _Optional[_Iterable[str]] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., digest: _Optional[str] = ..., warm_slots: _Optional[int] = ..., free_warm_slots: _Optional[int] = ...) -> None: ...

class TemplateReport(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    def __init__(self, templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ...) -> None: ...

class HostFacts(_message.Message):
    __slots__ = ("os", "arch", "driver", "agent_version")
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    os: str
    arch: str
    driver: str
    agent_version: str
    def __init__(self, os: _Optional[str] = ..., arch: _Optional[str] = ..., driver: _Optional[str] = ..., agent_version: _Optional[str] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("agent_id", "hostname", "capacity", "status", "last_seen", "templates", "host")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    hostname: str
    capacity: AgentCapacity
    status: str
    last_seen: _timestamp_pb2.Timestamp
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    host: HostFacts
    def __init__(self, agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., capacity: _Optional[_Union[AgentCapacity, _Mapping]] = ..., status: _Optional[str] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ..., host: _Optional[_Union[HostFacts, _Mapping]] = ...) -> None: ...

class EnrollRequest(_message.Message):
    __slots__ = ("agent_id", "hostname")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    hostname: str
    def __init__(self, agent_id: _Optional[str] = ..., hostname: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("agent_id", "agent_secret")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_SECRET_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    agent_secret: str
    def __init__(self, agent_id: _Optional[str] = ..., agent_secret: _Optional[str] = ...) -> None: ...

class RegisterAgentRequest(_message.Message):
    __slots__ = ("agent_id", "hostname", "capacity", "templates", "host")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    hostname: str
    capacity: AgentCapacity
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    host: HostFacts
    def __init__(self, agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., capacity: _Optional[_Union[AgentCapacity, _Mapping]] = ..., templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ..., host: _Optional[_Union[HostFacts, _Mapping]] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("agent_id", "sync_interval_seconds")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SYNC_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    sync_interval_seconds: int
    def __init__(self, agent_id: _Optional[str] = ..., sync_interval_seconds: _Optional[int] = ...) -> None: ...

class PhaseTimings(_message.Message):
    __slots__ = ("clone_seconds", "boot_to_ssh_seconds", "total_seconds")
    CLONE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BOOT_TO_SSH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    clone_seconds: float
    boot_to_ssh_seconds: float
    total_seconds: float
    def __init__(self, clone_seconds: _Optional[float] = ..., boot_to_ssh_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class Runner(_message.Message):
    __slots__ = ("runner_id", "runner_name", "agent_id", "state", "ip_address", "created_at", "error_message", "guest_runner_state", "timings", "mac_address", "template", "resource_type", "capacity_error")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GUEST_RUNNER_STATE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MAC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_ERROR_FIELD_NUMBER: _ClassVar[int]
    runner_id: str
    runner_name: str
    agent_id: str
    state: RunnerState
    ip_address: str
    created_at: _timestamp_pb2.Timestamp
    error_message: str
    guest_runner_state: GuestRunnerState
    timings: PhaseTimings
    mac_address: str
    template: str
    resource_type: str
    capacity_error: bool
    def __init__(self, runner_id: _Optional[str] = ..., runner_name: _Optional[str] = ..., agent_id: _Optional[str] = ..., state: _Optional[_Union[RunnerState, str]] = ..., ip_address: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error_message: _Optional[str] = ..., guest_runner_state: _Optional[_Union[GuestRunnerState, str]] = ..., timings: _Optional[_Union[PhaseTimings, _Mapping]] = ..., mac_address: _Optional[str] = ..., template: _Optional[str] = ..., resource_type: _Optional[str] = ..., capacity_error: _Optional[bool] = ...) -> None: ...

class HostCondition(_message.Message):
    __slots__ = ("reason", "message", "since")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HostConditionReport(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[HostCondition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[HostCondition, _Mapping]]] = ...) -> None: ...

class CommandAck(_message.Message):
    __slots__ = ("request_id", "ok", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    ok: bool
    error: str
    def __init__(self, request_id: _Optional[str] = ..., ok: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class SyncRequest(_message.Message):
    __slots__ = ("agent_id", "active_runners", "runners", "acks", "templates", "conditions")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    active_runners: int
    runners: _containers.RepeatedCompositeFieldContainer[Runner]
    acks: _containers.RepeatedCompositeFieldContainer[CommandAck]
    templates: TemplateReport
    conditions: HostConditionReport
    def __init__(self, agent_id: _Optional[str] = ..., active_runners: _Optional[int] = ..., runners: _Optional[_Iterable[_Union[Runner, _Mapping]]] = ..., acks: _Optional[_Iterable[_Union[CommandAck, _Mapping]]] = ..., templates: _Optional[_Union[TemplateReport, _Mapping]] = ..., conditions: _Optional[_Union[HostConditionReport, _Mapping]] = ...) -> None: ...

class CreateRunnerCommand(_message.Message):
    __slots__ = ("runner_id", "runner_name", "setup_script", "request_id", "resource_type", "template", "labels")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_NAME_FIELD_NUMBER: _ClassVar[int]
    SETUP_SCRIPT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    runner_id: str
    runner_name: str
    setup_script: str
    request_id: str
    resource_type: str
    template: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, runner_id: _Optional[str] = ..., runner_name: _Optional[str] = ..., setup_script: _Optional[str] = ..., request_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., template: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteRunnerCommand(_message.Message):
    __slots__ = ("runner_id", "request_id")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    runner_id: str
    request_id: str
    def __init__(self, runner_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class NoopCommand(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SyncResponse(_message.Message):
    __slots__ = ("create_runner", "delete_runner", "noop")
    CREATE_RUNNER_FIELD_NUMBER: _ClassVar[int]
    DELETE_RUNNER_FIELD_NUMBER: _ClassVar[int]
    NOOP_FIELD_NUMBER: _ClassVar[int]
    create_runner: CreateRunnerCommand
    delete_runner: DeleteRunnerCommand
    noop: NoopCommand
    def __init__(self, create_runner: _Optional[_Union[CreateRunnerCommand, _Mapping]] = ..., delete_runner: _Optional[_Union[DeleteRunnerCommand, _Mapping]] = ..., noop: _Optional[_Union[NoopCommand, _Mapping]] = ...) -> None: ...
