import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Condition(_message.Message):
    __slots__ = ("reason", "message", "since")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class HeldTemplate(_message.Message):
    __slots__ = ("name", "version", "digest", "resource_types", "warm_slots", "free_warm_slots")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPES_FIELD_NUMBER: _ClassVar[int]
    WARM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    FREE_WARM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    digest: str
    resource_types: _containers.RepeatedScalarFieldContainer[str]
    warm_slots: int
    free_warm_slots: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., digest: _Optional[str] = ..., resource_types: _Optional[_Iterable[str]] = ..., warm_slots: _Optional[int] = ..., free_warm_slots: _Optional[int] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "hostname", "driver", "agent_version", "os", "arch", "online", "drained", "conditions", "max_runners", "running_runners", "templates", "last_seen")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    DRIVER_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_RUNNERS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    hostname: str
    driver: str
    agent_version: str
    os: str
    arch: str
    online: bool
    drained: bool
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    max_runners: int
    running_runners: int
    templates: _containers.RepeatedCompositeFieldContainer[HeldTemplate]
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, agent_id: _Optional[str] = ..., hostname: _Optional[str] = ..., driver: _Optional[str] = ..., agent_version: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., online: _Optional[bool] = ..., drained: _Optional[bool] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., max_runners: _Optional[int] = ..., running_runners: _Optional[int] = ..., templates: _Optional[_Iterable[_Union[HeldTemplate, _Mapping]]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

class RunnerTimings(_message.Message):
    __slots__ = ("clone_seconds", "boot_to_ssh_seconds", "total_seconds")
    CLONE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BOOT_TO_SSH_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    clone_seconds: float
    boot_to_ssh_seconds: float
    total_seconds: float
    def __init__(self, clone_seconds: _Optional[float] = ..., boot_to_ssh_seconds: _Optional[float] = ..., total_seconds: _Optional[float] = ...) -> None: ...

class RunnerInfo(_message.Message):
    __slots__ = ("runner_id", "runner_name", "cloud_id", "agent_id", "template", "resource_type", "state", "guest_state", "ip_address", "created_at", "updated_at", "age_seconds", "timings", "error", "reap_reason", "delete_requested", "labels")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_NAME_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GUEST_STATE_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REAP_REASON_FIELD_NUMBER: _ClassVar[int]
    DELETE_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    runner_id: str
    runner_name: str
    cloud_id: str
    agent_id: str
    template: str
    resource_type: str
    state: str
    guest_state: str
    ip_address: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    age_seconds: float
    timings: RunnerTimings
    error: str
    reap_reason: str
    delete_requested: bool
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, runner_id: _Optional[str] = ..., runner_name: _Optional[str] = ..., cloud_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., template: _Optional[str] = ..., resource_type: _Optional[str] = ..., state: _Optional[str] = ..., guest_state: _Optional[str] = ..., ip_address: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., age_seconds: _Optional[float] = ..., timings: _Optional[_Union[RunnerTimings, _Mapping]] = ..., error: _Optional[str] = ..., reap_reason: _Optional[str] = ..., delete_requested: _Optional[bool] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRunnersRequest(_message.Message):
    __slots__ = ("include_gone", "agent_id", "limit")
    INCLUDE_GONE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    include_gone: bool
    agent_id: str
    limit: int
    def __init__(self, include_gone: _Optional[bool] = ..., agent_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRunnersResponse(_message.Message):
    __slots__ = ("runners",)
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    runners: _containers.RepeatedCompositeFieldContainer[RunnerInfo]
    def __init__(self, runners: _Optional[_Iterable[_Union[RunnerInfo, _Mapping]]] = ...) -> None: ...

class DrainAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class DrainAgentResponse(_message.Message):
    __slots__ = ("agent", "changed")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    agent: AgentInfo
    changed: bool
    def __init__(self, agent: _Optional[_Union[AgentInfo, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class UndrainAgentRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class UndrainAgentResponse(_message.Message):
    __slots__ = ("agent", "changed")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    agent: AgentInfo
    changed: bool
    def __init__(self, agent: _Optional[_Union[AgentInfo, _Mapping]] = ..., changed: _Optional[bool] = ...) -> None: ...

class DeleteRunnerRequest(_message.Message):
    __slots__ = ("runner",)
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    runner: str
    def __init__(self, runner: _Optional[str] = ...) -> None: ...

class DeleteRunnerResponse(_message.Message):
    __slots__ = ("runner",)
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    runner: RunnerInfo
    def __init__(self, runner: _Optional[_Union[RunnerInfo, _Mapping]] = ...) -> None: ...
