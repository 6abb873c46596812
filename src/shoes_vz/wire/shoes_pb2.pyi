from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AddInstanceRequest(_message.Message):
    __slots__ = ("runner_name", "setup_script", "resource_type", "labels")
    RUNNER_NAME_FIELD_NUMBER: _ClassVar[int]
    SETUP_SCRIPT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    runner_name: str
    setup_script: str
    resource_type: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, runner_name: _Optional[str] = ..., setup_script: _Optional[str] = ..., resource_type: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class AddInstanceResponse(_message.Message):
    __slots__ = ("cloud_id", "shoes_type", "ip_address", "resource_type")
    CLOUD_ID_FIELD_NUMBER: _ClassVar[int]
    SHOES_TYPE_FIELD_NUMBER: _ClassVar[int]
    IP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    cloud_id: str
    shoes_type: str
    ip_address: str
    resource_type: str
    def __init__(self, cloud_id: _Optional[str] = ..., shoes_type: _Optional[str] = ..., ip_address: _Optional[str] = ..., resource_type: _Optional[str] = ...) -> None: ...

class DeleteInstanceRequest(_message.Message):
    __slots__ = ("cloud_id", "labels")
    CLOUD_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    cloud_id: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cloud_id: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteInstanceResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
