"""Fake `Virtualization`, `Foundation`, `dispatch` and `objc` modules GENERATED from the SDK surface.

The Virtualization classes, selectors, properties, enums and constants come from
`sdk/arm64-26.5.fwinfo` (PyObjC's record of the macOS 26.5 SDK, kept in this repository: see
`sdk/README.md`); NSError out-parameters and block shapes from `sdk/pyobjc_metadata.py.txt`. So, as
with real PyObjC:

* an unknown class, selector, enum or constant raises AttributeError;
* `init`/`new` registered NS_UNAVAILABLE (PyObjC's `Virtualization/__init__.py`, reference §1.5)
  raise TypeError; `init` also for subclasses of such a class (the inheritance risk of §1.5), `new`
  only for the listed class itself (`+[NSObject new]` is not registered);
* an `NSError **` argument must be passed as None and the call returns `(result, error)`;
* completion handlers are called back later, on the VM's queue; every VZVirtualMachine call made
  off that queue raises `QueueViolation` (and is recorded);
* argument counts and types are checked against the fwinfo (int for NSInteger, NSURL for `NSURL *`,
  the declared VZ class for `VZBootLoader *`, element classes of `NSArray<VZ… *>`);
* the VM's delegate is held weakly, exceptions escaping a queued block are recorded (real: crash).

Behaviour knobs (`Knobs`) inject failures: start/restore/resume/save errors with a domain and code,
missing entitlement, guest stop or error after a delay, whether the guest honours requestStop, a
restore that never calls back, devices save/restore refuses, a network attachment that will not
stay attached, VM objects that hold the VM quota until they are released (`quota_until_released`),
and the user the process runs as.

Runtime devices: a VM made from a configuration has `networkDevices()` (VZNetworkDevice, attachment
settable) and `socketDevices()` (VZVirtioSocketDevice), used on the VM's queue. A save file records
the identity and the network-device count; restoring into a different count succeeds but the guest
runs no code (as tailscale PR #19331 found on real hosts): its vsock never answers. A live guest's
kernel refuses a vsock connection to a port nobody listens on (ECONNRESET) at once; a port in
`Knobs.vsock_listeners` accepts: the handler gets a VZVirtioSocketConnection whose `fileDescriptor`
is one end of a socket pair (closed by `close`), the listener the other end, on a thread of its own.

Installing macOS (`shoes_vz.macos.install`): a fake IPSW is a zip-headed file whose JSON header
(`fake_ipsw_bytes`) says its build, version, minimum CPU/memory and whether this host supports its
hardware model; `VZMacOSRestoreImage.loadFileURL…`/`fetchLatestSupported…` call back on a new thread
(as the real ones do, on an arbitrary thread); `VZMacAuxiliaryStorage.initCreatingStorage…` writes a
file and refuses to overwrite without the option; `VZMacOSInstaller` must be made and started on the
VM's queue and advances an `NSProgress` step by step until it completes, fails (`install_error` at
`install_error_at`) or is cancelled (VZErrorOperationCancelled).
Every VZ symbol touched is recorded in `FakeVZ.used` (and module-wide in `SESSION_USED`).
"""

from __future__ import annotations

import ast
import base64
import itertools
import json
import os
import queue as _queue
import re
import secrets
import socket
import sys
import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# PyObjC's Virtualization/__init__.py registerUnavailableMethod list (init and new on each).
UNAVAILABLE = frozenset("""
VZDirectoryShare VZVirtioSoundDeviceStreamConfiguration VZVirtioConsoleDevice VZSharedDirectory VZBootLoader
VZKeyboardConfiguration VZGraphicsDevice VZVirtioSocketDevice VZAudioDeviceConfiguration
VZEntropyDeviceConfiguration VZGraphicsDisplayConfiguration VZMacOSRestoreImage VZSerialPortAttachment
VZVirtioSocketConnection VZVirtioConsolePortConfigurationArray VZDirectorySharingDevice
VZAudioInputStreamSource VZStorageDeviceAttachment VZFileHandleSerialPortAttachment VZGraphicsDisplay
VZGraphicsDeviceConfiguration VZVirtioConsolePort VZFileSerialPortAttachment VZSocketDeviceConfiguration
VZEFIVariableStore VZNetworkDevice VZLinuxRosettaCachingOptions VZConsoleDeviceConfiguration VZMacOSInstaller
VZMacOSConfigurationRequirements VZVirtioTraditionalMemoryBalloonDevice VZMacAuxiliaryStorage VZConsoleDevice
VZBridgedNetworkInterface VZSerialPortConfiguration VZMemoryBalloonDevice VZVirtualMachine
VZAudioOutputStreamSink VZMacHardwareModel VZNetworkDeviceConfiguration VZDirectorySharingDeviceConfiguration
VZSocketDevice VZMemoryBalloonDeviceConfiguration VZStorageDeviceConfiguration VZVirtioConsolePortArray
VZPlatformConfiguration VZNetworkDeviceAttachment VZPointingDeviceConfiguration VZMACAddress
VZConsolePortConfiguration
""".split())

SESSION_USED: set[tuple[str, ...]] = set()
_INT_TYPES = set("cCsSiIlLqQ")


def api_dir() -> Path:
    env = os.environ.get("SHOESVZ_VZ_API_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "sdk"


# -- the SDK surface ---------------------------------------------------------------------------------

@dataclass
class Method:
    cls: str
    selector: str
    class_method: bool
    introduced: str
    args: list[dict[str, Any]]
    retval: str
    out_index: int | None = None                       # python index of the NSError** argument
    blocks: dict[int, int] = field(default_factory=dict)  # python index -> callback arity
    deprecated: str | None = None


@dataclass
class ClassInfo:
    name: str
    super: str
    instance: dict[str, Method]
    klass: dict[str, Method]
    properties: dict[str, dict[str, Any]]

    @property
    def introduced(self) -> str:
        versions = [m.introduced for m in itertools.chain(self.instance.values(), self.klass.values())]
        return min(versions, key=version) if versions else "0"


def version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.lstrip("-").isdigit())


@dataclass
class SDK:
    classes: dict[str, ClassInfo]
    enums: dict[str, int]
    externs: dict[str, str]
    protocols: dict[str, dict[str, Any]]

    def chain(self, name: str) -> list[ClassInfo]:
        out = []
        while name in self.classes:
            out.append(self.classes[name])
            name = self.classes[name].super
        return out

    def find(self, cls: str, selector: str, class_method: bool) -> Method | None:
        for info in self.chain(cls):
            table = info.klass if class_method else info.instance
            if selector in table:
                return table[selector]
        return None

    def prop_for(self, cls: str, selector: str) -> tuple[str, str] | None:
        """("get"|"set", property) when `selector` is a property accessor of `cls`."""
        for info in self.chain(cls):
            for name, p in info.properties.items():
                getter = next((a[1] for a in p["attributes"] if isinstance(a, list) and a[0] == "getter"),
                              name)
                if selector == getter:
                    return "get", name
                if selector == f"set{name[0].upper()}{name[1:]}:":
                    return "set", name
        return None


def _metadata_shapes(text: str) -> dict[tuple[str, str], dict[int, Any]]:
    """(class, selector) -> {objc arg index: argument metadata} from the `r(...)` calls."""
    shapes: dict[tuple[str, str], dict[int, Any]] = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "r":
            cls, sel, meta = (ast.literal_eval(a) for a in node.args)
            shapes[(cls.decode(), sel.decode())] = meta.get("arguments", {})
    return shapes


def load_sdk(directory: Path | None = None) -> SDK:
    directory = directory or api_dir()
    raw = (directory / "arm64-26.5.fwinfo").read_text()
    data = json.loads(raw[raw.index("{"):])["definitions"]
    shapes = _metadata_shapes((directory / "pyobjc_metadata.py.txt").read_text())
    classes: dict[str, ClassInfo] = {}
    for name, c in data["classes"].items():
        info = ClassInfo(name, c["super"], {}, {}, {p["name"]: p for p in c["properties"]})
        for m in c["methods"]:
            sel = m["selector"]
            meth = Method(name, sel, m["class_method"], m["introduced"], m["args"], m["retval"]["typestr"],
                          deprecated=m.get("deprecated"))
            shape = shapes.get((name, sel), {})
            for i, a in enumerate(m["args"]):
                objc_index = i + 2
                if shape.get(objc_index, {}).get("type_modifier") == b"o" or a["typestr"] == "^@":
                    meth.out_index = i
                block = shape.get(objc_index, {}).get("callable") or a.get("callable")
                if block is not None:
                    meth.blocks[i] = len(block["arguments"]) - 1  # arg 0 is the block literal
            (info.klass if meth.class_method else info.instance)[sel] = meth
        classes[name] = info
    enums = {k: v["value"] for k, v in data["enum"].items()}
    externs = {k: v["introduced"] for k, v in data["externs"].items()}
    return SDK(classes, enums, externs, data["formal_protocols"])


# -- knobs and errors ----------------------------------------------------------------------------------

@dataclass
class Knobs:
    host: tuple[int, int] = (26, 5)
    vz_supported: bool = True
    entitlement: bool = True
    hardware_supported: bool = True
    save_restore_supported: bool = True
    min_cpu: int = 1
    max_cpu: int = 8
    min_memory: int = 2 << 30
    max_memory: int = 16 << 30
    max_vms: int = 2                       # Apple's limit on concurrent macOS guests
    start_error: tuple[str, int, str] | None = None
    disk_error: tuple[str, int, str] | None = None
    restore_error: tuple[str, int, str] | None = None
    resume_error: tuple[str, int, str] | None = None
    save_error: tuple[str, int, str] | None = None
    start_delay: float = 0.0
    restore_hangs: bool = False            # restoreMachineState… never calls its handler
    save_fails_if_exists: bool = True      # a save does not overwrite an old file (lima PR #2900)
    unsaveable_devices: frozenset[str] = frozenset()  # configuration classes validateSaveRestore refuses
    reattach_holds: bool = True            # a new network attachment stays attached
    quota_until_released: bool = False     # a started/restored VM object counts until it is deallocated
    euid: int = 501                        # the user the vm process runs as (0: root)
    guest_honours_stop_request: bool = True
    guest_shutdown_delay: float = 0.05
    guest_stops_after: float | None = None
    guest_error_after: float | None = None
    vsock_listeners: dict[int, Callable[[Any], None]] = field(default_factory=dict)  # port → guest side
    # installing macOS
    load_error: tuple[str, int, str] | None = None
    fetch_error: tuple[str, int, str] | None = None
    latest_url: str = "http://127.0.0.1:9/UniversalMac_26.5_25F71_Restore.ipsw"
    aux_error: tuple[str, int, str] | None = None
    install_error: tuple[str, int, str] | None = None
    install_error_at: float = 0.5
    install_steps: int = 8
    install_step_delay: float = 0.005


class QueueViolation(AssertionError):
    """A VZVirtualMachine was used off its queue."""


# -- the runtime -------------------------------------------------------------------------------------

class VMRegistry:
    """Every VZVirtualMachine made, in order. With `quota_until_released` it holds them weakly (a
    released VM reads as None), so the quota sees which objects the driver still keeps alive."""

    def __init__(self, fake: FakeVZ) -> None:
        self._fake = fake
        self._items: list[Any] = []

    def append(self, vm: Any) -> None:
        self._items.append(weakref.ref(vm) if self._fake.knobs.quota_until_released else vm)

    def _get(self, item: Any) -> Any:
        return item() if isinstance(item, weakref.ref) else item

    def __getitem__(self, index: int) -> Any:
        return self._get(self._items[index])

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Any:
        return (vm for vm in (self._get(i) for i in self._items) if vm is not None)

    def __eq__(self, other: object) -> bool:
        return list(self) == other

    __hash__ = None  # type: ignore[assignment]


class FakeQueue:
    def __init__(self, fake: FakeVZ, label: Any, main: bool = False) -> None:
        self.fake, self.label, self.main = fake, label, main
        self._tasks: _queue.Queue[Callable[[], Any] | None] = _queue.Queue()
        self.thread = threading.Thread(target=self._work, name=f"fake-dispatch-{label!r}", daemon=True)
        if not main:  # the main queue only drains under a run loop, which these tests never run
            self.thread.start()

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            try:
                task()
            except BaseException as e:  # real libdispatch: the process dies here
                self.fake.escaped.append(e)
            task = None  # libdispatch releases a block once it ran (and what it references)

    def put(self, fn: Callable[[], Any]) -> None:
        self._tasks.put(fn)

    def close(self) -> None:
        self._tasks.put(None)

    @property
    def current(self) -> bool:
        return threading.current_thread() is self.thread


def _check_arg(fake: FakeVZ, meth: Method, index: int, value: Any) -> None:
    spec = meth.args[index]
    typestr, type_name = spec["typestr"], spec["type_name"]
    where = f"{meth.cls}.{meth.selector} argument {index} ({spec['name']})"
    if index == meth.out_index:
        if value is not None:
            raise TypeError(f"{where}: NSError** out-parameter must be passed as None")
        return
    if value is None:
        return
    if typestr in _INT_TYPES and (not isinstance(value, int) or isinstance(value, bool)):
        raise TypeError(f"{where}: expected an integer, got {value!r}")
    if typestr == "Z" and not isinstance(value, (bool, int)):
        raise TypeError(f"{where}: expected a bool, got {value!r}")
    if typestr == "@?" and not callable(value):
        raise TypeError(f"{where}: expected a callable, got {value!r}")
    if typestr != "@":
        return
    if type_name == "NSURL *" and not isinstance(value, fake.NSURL):
        raise TypeError(f"{where}: expected an NSURL, got {value!r}")
    if type_name == "NSString *" and not isinstance(value, str):
        raise TypeError(f"{where}: expected a str, got {value!r}")
    if type_name == "NSData *" and not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{where}: expected bytes, got {value!r}")
    if type_name == "dispatch_queue_t" and not isinstance(value, FakeQueue):
        raise TypeError(f"{where}: expected a dispatch queue, got {value!r}")
    m = re.fullmatch(r"NSArray<(VZ\w+) \*> \*", type_name)
    if m:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        for item in value:
            fake.require_instance(item, m.group(1), where)
        return
    m = re.fullmatch(r"(VZ\w+) \*", type_name)
    if m:
        fake.require_instance(value, m.group(1), where)


class _Meta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        fake: FakeVZ = cls._fake
        return fake.resolve(cls, None, name)


class FakeVZ:
    """One generated set of modules plus its knobs and records."""

    def __init__(self, sdk: SDK | None = None) -> None:
        self.sdk = sdk or load_sdk()
        self.knobs = Knobs()
        self.used: set[tuple[str, ...]] = set()
        self.escaped: list[BaseException] = []
        self.violations: list[str] = []
        self.lost_delegate_calls: list[str] = []
        self.vms = VMRegistry(self)
        self.queues: list[FakeQueue] = []
        self._classes: dict[str, type] = {}
        self.NSObject = self._root()
        self.NSURL, self.NSError = self._foundation_classes()
        self.main_queue = FakeQueue(self, b"main", main=True)
        self.behaviour = _behaviour()
        self.modules = {"Virtualization": self._vz_module(), "Foundation": self._foundation_module(),
                        "dispatch": self._dispatch_module(), "objc": self._objc_module()}

    # records
    def record(self, *key: str) -> None:
        self.used.add(key)
        SESSION_USED.add(key)

    def close(self) -> None:
        for q in self.queues:
            q.close()

    # errors
    def nserror(self, domain: str, code: int, text: str) -> Any:
        return self.NSError.errorWithDomain_code_userInfo_(domain, code, {"NSLocalizedDescription": text})

    def vz_error(self, code: int, text: str) -> Any:
        return self.nserror("VZErrorDomain", code, text)

    # classes
    def vz_class(self, name: str) -> type:
        if name in self._classes:
            return self._classes[name]
        info = self.sdk.classes.get(name)
        if info is None:
            raise AttributeError(f"module 'Virtualization' has no attribute {name!r}")
        base = self.NSObject if info.super == "NSObject" else self.vz_class(info.super)
        cls = _Meta(name, (base,), {"_sdk_name": name})
        self._classes[name] = cls
        return cls

    def require_instance(self, value: Any, cls_name: str, where: str) -> None:
        if cls_name in self.sdk.classes and not isinstance(value, self.vz_class(cls_name)):
            raise TypeError(f"{where}: expected {cls_name}, got {type(value).__name__}")

    def resolve(self, cls: type, obj: Any, name: str) -> Any:
        """Attribute lookup on a generated class (obj None) or instance: a selector or AttributeError."""
        sdk_name = getattr(cls, "_sdk_name", None)
        if name.startswith("__") or sdk_name is None:
            raise AttributeError(name)
        selector = name.replace("_", ":")
        meth = self.sdk.find(sdk_name, selector, class_method=obj is None)
        if meth is None:
            what = f"type object {sdk_name!r}" if obj is None else f"{sdk_name!r} object"
            raise AttributeError(f"{what} has no attribute {name!r}")
        target = cls if obj is None else obj

        def call(*args: Any) -> Any:
            return self.invoke(target, sdk_name, meth, args)

        return call

    def invoke(self, target: Any, sdk_name: str, meth: Method, args: tuple[Any, ...]) -> Any:
        self.record("method", sdk_name, meth.selector, "class" if meth.class_method else "instance")
        if len(args) != meth.selector.count(":"):
            raise TypeError(f"{meth.cls}.{meth.selector} takes {meth.selector.count(':')} arguments, "
                            f"got {len(args)}")
        for i, value in enumerate(args):
            _check_arg(self, meth, i, value)
        vm_queue = getattr(target, "_queue", None) if not meth.class_method else None
        if isinstance(vm_queue, FakeQueue) and not vm_queue.current and meth.selector != "queue":
            msg = f"VZVirtualMachine.{meth.selector} called off the VM's queue"
            self.violations.append(msg)
            raise QueueViolation(msg)
        for info in self.sdk.chain(sdk_name):
            impl = self.behaviour.get((info.name, meth.selector))
            if impl is not None:
                return impl(self, target, *args)
        return self._generic(target, sdk_name, meth, args)

    def _generic(self, target: Any, sdk_name: str, meth: Method, args: tuple[Any, ...]) -> Any:
        sel = meth.selector
        if not meth.class_method and sel.startswith("init"):
            for spec, value in zip(meth.args, args, strict=True):
                if spec["typestr"] != "^@":
                    target._props[spec["name"]] = value
            return (target, None) if meth.out_index is not None else target
        accessor = self.sdk.prop_for(sdk_name, sel)
        if accessor and accessor[0] == "set":
            target._props[accessor[1]] = args[0]
            return None
        if accessor and accessor[0] == "get":
            return target._props.get(accessor[1], _default(meth.retval))
        result = _default(meth.retval)
        return (result if result is not None else True, None) if meth.out_index is not None else result

    # module builders
    def _root(self) -> type:
        fake = self

        class NSObject(metaclass=_Meta):
            _fake = fake
            _sdk_name: str | None = None

            def __init_subclass__(cls, protocols: Any = (), **kw: Any) -> None:
                super().__init_subclass__(**kw)
                if "_sdk_name" in cls.__dict__:
                    return
                cls._sdk_name = None  # a Python subclass: its methods become selectors (PyObjC)
                for proto in protocols:
                    if not isinstance(proto, _Protocol):
                        raise TypeError(f"{cls.__name__}: protocols= takes objc.protocolNamed() objects")
                for attr, fn in vars(cls).items():
                    if callable(fn) and not attr.startswith("_"):
                        params = fn.__code__.co_argcount - 1
                        if params != attr.count("_"):
                            raise TypeError(f"{cls.__name__}.{attr}: {params} arguments for selector "
                                            f"{attr.replace('_', ':')}")  # objc.BadPrototypeError

            def __init__(self) -> None:
                self._props: dict[str, Any] = {}

            def __getattr__(self, name: str) -> Any:
                return fake.resolve(type(self), self, name)

            @classmethod
            def alloc(cls) -> Any:
                if cls._sdk_name:
                    fake.record("class", cls._sdk_name)
                return cls()

            @classmethod
            def new(cls) -> Any:
                if cls._sdk_name:
                    fake.record("method", cls._sdk_name, "new", "class")
                    if cls._sdk_name in UNAVAILABLE:
                        raise TypeError("'new' is NS_UNAVAILABLE")
                obj = cls()
                hook = fake.behaviour.get((cls._sdk_name or "", "init"))
                return hook(fake, obj) if hook else obj

            def init(self) -> Any:
                name = type(self)._sdk_name
                if name:
                    fake.record("method", name, "init", "instance")
                    if any(c.name in UNAVAILABLE for c in fake.sdk.chain(name)):
                        raise TypeError("'init' is NS_UNAVAILABLE")
                hook = fake.behaviour.get((name or "", "init"))
                return hook(fake, self) if hook else self

        return NSObject

    def _foundation_classes(self) -> tuple[type, type]:
        root = self.NSObject

        class NSURL(root):  # type: ignore[misc,valid-type]
            _sdk_name = None

            @classmethod
            def fileURLWithPath_(cls, path: str) -> Any:
                if not isinstance(path, str):
                    raise TypeError("fileURLWithPath_ takes a str")
                url = cls()
                url._path = path
                return url

            @classmethod
            def URLWithString_(cls, text: str) -> Any:  # noqa: N802 - Foundation's name
                if not isinstance(text, str):
                    raise TypeError("URLWithString_ takes a str")
                url = cls()
                url._path, url._string = None, text
                return url

            def path(self) -> str:
                return str(self._path)

            def absoluteString(self) -> str:  # noqa: N802 - Foundation's name
                return getattr(self, "_string", None) or f"file://{self._path}"

            def isFileURL(self) -> bool:  # noqa: N802 - Foundation's name
                return self._path is not None

        class NSError(root):  # type: ignore[misc,valid-type]
            _sdk_name = None

            @classmethod
            def errorWithDomain_code_userInfo_(cls, domain: str, code: int, info: dict[str, Any]) -> Any:
                err = cls()
                err._d, err._c, err._i = domain, code, dict(info or {})
                return err

            def domain(self) -> str:
                return str(self._d)

            def code(self) -> int:
                return int(self._c)

            def userInfo(self) -> dict[str, Any]:
                return self._i

            def localizedDescription(self) -> str:
                return str(self._i.get("NSLocalizedDescription", f"The operation couldn’t be completed. "
                                                                  f"({self._d} error {self._c}.)"))

            def __repr__(self) -> str:
                return f"Error Domain={self._d} Code={self._c} \"{self.localizedDescription()}\""

        class NSProgress(root):  # type: ignore[misc,valid-type]
            _sdk_name = None

            def __init__(self) -> None:
                super().__init__()
                self._total, self._done, self._cancelled = 1, 0, False

            def fractionCompleted(self) -> float:  # noqa: N802 - Foundation's name
                return self._done / self._total if self._total else 0.0

            def completedUnitCount(self) -> int:  # noqa: N802
                return int(self._done)

            def totalUnitCount(self) -> int:  # noqa: N802
                return int(self._total)

            def cancel(self) -> None:
                self._cancelled = True

            def isCancelled(self) -> bool:  # noqa: N802
                return bool(self._cancelled)

        self.NSProgress = NSProgress
        return NSURL, NSError

    def _vz_module(self) -> types.ModuleType:
        fake = self
        mod = types.ModuleType("Virtualization", "generated fake (tests/vz/fakevz.py)")

        def __getattr__(name: str) -> Any:
            if name in fake.sdk.classes:
                fake.record("class", name)
                return fake.vz_class(name)
            if name in fake.sdk.enums:
                fake.record("enum", name)
                return fake.sdk.enums[name]
            if name in fake.sdk.externs:
                fake.record("constant", name)
                return name
            raise AttributeError(f"module 'Virtualization' has no attribute {name!r}")

        mod.__getattr__ = __getattr__  # type: ignore[method-assign]
        return mod

    def _foundation_module(self) -> types.ModuleType:
        mod = types.ModuleType("Foundation", "generated fake: NSObject, NSURL, NSError only")
        mod.NSObject, mod.NSURL, mod.NSError = self.NSObject, self.NSURL, self.NSError
        mod.NSProgress = self.NSProgress
        return mod

    def _dispatch_module(self) -> types.ModuleType:
        fake = self
        mod = types.ModuleType("dispatch", "generated fake libdispatch (serial queues only)")
        mod.DISPATCH_QUEUE_SERIAL = None

        def dispatch_queue_create(label: Any, attr: Any) -> FakeQueue:
            if attr is not None:
                raise ValueError("the fake only makes serial queues (attr None)")
            q = FakeQueue(fake, label)
            fake.queues.append(q)
            return q

        def dispatch_async(q: FakeQueue, block: Callable[[], Any]) -> None:
            if not isinstance(q, FakeQueue) or not callable(block):
                raise TypeError("dispatch_async(queue, callable)")
            q.put(block)

        def dispatch_sync(q: FakeQueue, block: Callable[[], Any]) -> None:
            if q.current:
                raise RuntimeError("dispatch_sync onto the current queue deadlocks")
            done = threading.Event()

            def run() -> None:
                try:
                    block()
                finally:
                    done.set()

            q.put(run)
            done.wait()

        def dispatch_get_main_queue() -> FakeQueue:
            return fake.main_queue

        for fn in (dispatch_queue_create, dispatch_async, dispatch_sync, dispatch_get_main_queue):
            setattr(mod, fn.__name__, fn)
        return mod

    def _objc_module(self) -> types.ModuleType:
        fake = self
        mod = types.ModuleType("objc", "generated fake objc")

        class error(Exception):  # noqa: N801 - PyObjC's name
            pass

        class ProtocolError(error):
            pass

        def protocolNamed(name: str) -> _Protocol:  # noqa: N802 - PyObjC's name
            if name not in fake.sdk.protocols:
                raise ProtocolError(f"protocol {name!r} does not exist")
            fake.record("protocol", name)
            return _Protocol(name)

        def macos_available(major: int, minor: int = 0, patch: int = 0) -> bool:
            return fake.knobs.host >= (major, minor)

        mod.error, mod.ProtocolError, mod.protocolNamed = error, ProtocolError, protocolNamed
        mod.macos_available = macos_available
        mod.python_method = lambda fn: fn
        return mod

    # installation
    def install(self) -> dict[str, Any]:
        saved = {name: sys.modules.get(name) for name in self.modules}
        sys.modules.update(self.modules)
        return saved

    # test helpers
    def on_queue(self, vm: Any, fn: Callable[[], Any]) -> None:
        vm._queue.put(fn)

    def guest_shutdown(self, vm: Any) -> None:
        """The guest powers itself off (as after `shutdown -h now`)."""
        self.on_queue(vm, lambda: _guest_stopped(self, vm))

    def guest_crash(self, vm: Any, code: int = 1, text: str = "internal error") -> None:
        self.on_queue(vm, lambda: _guest_failed(self, vm, self.vz_error(code, text)))

    def network_disconnect(self, vm: Any, index: int = 0, code: int = 7, text: str = "The network failed.") -> None:
        """The NAT attachment of network device `index` goes away (the delegate is told)."""
        dev = vm._props["networkDevices"][index]
        self.on_queue(vm, lambda: _network_disconnected(self, vm, dev, self.vz_error(code, text)))


@dataclass(frozen=True)
class _Protocol:
    name: str


def _default(typestr: str) -> Any:
    if typestr == "Z":
        return False
    if typestr in _INT_TYPES:
        return 0
    if typestr in ("d", "f"):
        return 0.0
    return None


# -- behaviour of the parts the driver leans on ---------------------------------------------------------

HW_MAGIC, ID_MAGIC = b"FAKEHW1:", b"FAKEID1:"


def fake_hardware_model_data() -> bytes:
    return HW_MAGIC + b"VM-A"


def _vm_states(fake: FakeVZ) -> dict[str, int]:
    return {k.removeprefix("VZVirtualMachineState"): v for k, v in fake.sdk.enums.items()
            if k.startswith("VZVirtualMachineState")}


def _set_state(fake: FakeVZ, vm: Any, name: str) -> None:
    vm._state = _vm_states(fake)[name]


def _state_is(fake: FakeVZ, vm: Any, *names: str) -> bool:
    states = _vm_states(fake)
    return vm._state in {states[n] for n in names}


def _later(fake: FakeVZ, vm: Any, fn: Callable[[], Any], delay: float = 0.0) -> None:
    if delay <= 0:
        fake.on_queue(vm, fn)
    else:
        t = threading.Timer(delay, fake.on_queue, args=(vm, fn))
        t.daemon = True
        t.start()


def _complete(fake: FakeVZ, vm: Any, handler: Callable[[Any], Any], err: Any, delay: float = 0.0) -> None:
    _later(fake, vm, lambda: handler(err), delay)


def _delegate(fake: FakeVZ, vm: Any, what: str) -> Any:
    ref = vm._props.get("delegate")
    d = ref() if ref is not None else None
    if d is None:
        fake.lost_delegate_calls.append(what)
    return d


def _guest_stopped(fake: FakeVZ, vm: Any) -> None:
    if not _state_is(fake, vm, "Running", "Paused"):
        return
    _set_state(fake, vm, "Stopped")
    d = _delegate(fake, vm, "guestDidStopVirtualMachine:")
    if d is not None:
        d.guestDidStopVirtualMachine_(vm)


def _guest_failed(fake: FakeVZ, vm: Any, err: Any) -> None:
    if not _state_is(fake, vm, "Running", "Paused"):
        return
    _set_state(fake, vm, "Error")
    d = _delegate(fake, vm, "virtualMachine:didStopWithError:")
    if d is not None:
        d.virtualMachine_didStopWithError_(vm, err)


def _err(fake: FakeVZ, spec: tuple[str, int, str] | None) -> Any:
    return None if spec is None else fake.nserror(*spec)


def _active(fake: FakeVZ) -> int:
    """VMs that count against the host's limit (`quota_until_released`: every started/restored VM
    object still alive, whatever its state)."""
    held = fake.knobs.quota_until_released
    return sum(1 for vm in fake.vms if (held and vm._started_once) or _state_is(
        fake, vm, "Running", "Paused", "Starting", "Pausing", "Resuming", "Saving", "Restoring", "Stopping"))


def _identity(cfg: Any) -> dict[str, Any]:
    plat = cfg._props.get("platform")
    net = (cfg._props.get("networkDevices") or [None])[0]
    mac = net._props.get("MACAddress") if net is not None else None
    return {"hw": base64.b64encode(plat._props["hardwareModel"]._data).decode(),
            "id": base64.b64encode(plat._props["machineIdentifier"]._data).decode(),
            "mac": mac._mac if mac is not None else None,
            "cpu": cfg._props.get("CPUCount"), "memory": cfg._props.get("memorySize")}


def _validate(fake: FakeVZ, cfg: Any, _err_arg: Any) -> tuple[bool, Any]:
    def invalid(why: str) -> tuple[bool, Any]:
        return False, fake.vz_error(2, f"Invalid virtual machine configuration. {why}")

    k = fake.knobs
    if not k.entitlement:
        return invalid('The process doesn’t have the “com.apple.security.virtualization” entitlement.')
    p = cfg._props
    plat, boot = p.get("platform"), p.get("bootLoader")
    if boot is None:
        return invalid("A boot loader is required.")
    if plat is None or not isinstance(plat, fake.vz_class("VZMacPlatformConfiguration")):
        return invalid("A macOS guest needs a VZMacPlatformConfiguration.")
    for key in ("hardwareModel", "machineIdentifier", "auxiliaryStorage"):
        if plat._props.get(key) is None:
            return invalid(f"The platform has no {key}.")
    if not k.hardware_supported:
        return invalid("The hardware model is not supported on the current host.")
    cpu, mem = p.get("CPUCount", 0), p.get("memorySize", 0)
    if not k.min_cpu <= cpu <= k.max_cpu:
        return invalid(f"CPU count {cpu} is out of range.")
    if not k.min_memory <= mem <= k.max_memory or mem % (1 << 20):
        return invalid(f"Memory size {mem} is invalid.")
    disks = p.get("storageDevices") or []
    if not disks or not isinstance(disks[0], fake.vz_class("VZVirtioBlockDeviceConfiguration")):
        return invalid("The boot disk must be the first storage device.")
    for net in p.get("networkDevices") or []:
        if net._props.get("attachment") is None or net._props.get("MACAddress") is None:
            return invalid("A network device needs an attachment and a MAC address.")
    return True, None


def _validate_save_restore(fake: FakeVZ, cfg: Any, _e: Any) -> tuple[bool, Any]:
    devices = [d for key in ("entropyDevices", "audioDevices", "socketDevices", "networkDevices", "storageDevices",
                             "keyboards", "pointingDevices", "graphicsDevices")
               for d in cfg._props.get(key) or []]
    refused = sorted({type(d)._sdk_name for d in devices} & fake.knobs.unsaveable_devices)
    if not fake.knobs.save_restore_supported or refused:
        return False, fake.vz_error(10, "Save/restore is not supported by this configuration."
                                    + (f" Unsupported device: {', '.join(refused)}." if refused else ""))
    return True, None


def _vm_init(fake: FakeVZ, vm: Any, cfg: Any, q: Any) -> Any:
    if q is None:
        raise TypeError("the fake needs an explicit serial queue")
    vm._cfg, vm._queue, vm._started_once, vm._frozen = cfg, q, False, False
    _set_state(fake, vm, "Stopped")
    networks = []
    for conf in cfg._props.get("networkDevices") or []:  # runtime devices: made by the framework
        dev = fake.vz_class("VZNetworkDevice")()
        dev._props["attachment"], dev._queue, dev._vm = conf._props.get("attachment"), q, weakref.ref(vm)
        networks.append(dev)
    sockets = []
    for _conf in cfg._props.get("socketDevices") or []:
        dev = fake.vz_class("VZVirtioSocketDevice")()
        dev._queue, dev._vm = q, weakref.ref(vm)
        sockets.append(dev)
    vm._props["networkDevices"], vm._props["socketDevices"] = networks, sockets
    fake.vms.append(vm)
    return vm


def _set_attachment(fake: FakeVZ, dev: Any, attachment: Any) -> None:
    dev._props["attachment"] = attachment
    vm = dev._vm()
    if attachment is not None and vm is not None and not fake.knobs.reattach_holds:
        _later(fake, vm, lambda: _network_disconnected(fake, vm, dev, None), 0.01)


def _network_disconnected(fake: FakeVZ, vm: Any, dev: Any, err: Any) -> None:
    if not _state_is(fake, vm, "Running", "Paused"):
        return
    dev._props["attachment"] = None  # reference §3.6: nil afterwards
    d = _delegate(fake, vm, "virtualMachine:networkDevice:attachmentWasDisconnectedWithError:")
    if d is not None:
        d.virtualMachine_networkDevice_attachmentWasDisconnectedWithError_(vm, dev, err)


def _vsock_connect(fake: FakeVZ, dev: Any, port: int, handler: Callable[[Any, Any], Any]) -> None:
    vm = dev._vm()
    if vm is None or not _state_is(fake, vm, "Running") or vm._frozen:
        return  # no guest code runs: nobody ever answers
    listener = fake.knobs.vsock_listeners.get(port)
    if listener is None:  # the guest kernel answers at once: nobody listens on that port
        _later(fake, vm, lambda: handler(None, fake.nserror("NSPOSIXErrorDomain", 54, "Connection reset by peer")))
        return
    host_end, guest_end = socket.socketpair()
    threading.Thread(target=listener, args=(guest_end,), daemon=True).start()
    conn = fake.vz_class("VZVirtioSocketConnection")()
    conn._props.update(fileDescriptor=host_end.detach(), destinationPort=port, sourcePort=1024)
    _later(fake, vm, lambda: handler(conn, None))


def _vsock_close(fake: FakeVZ, conn: Any) -> None:
    fd = conn._props.pop("fileDescriptor", None)
    if fd is not None:
        os.close(fd)


def _start(fake: FakeVZ, vm: Any, handler: Callable[[Any], Any]) -> None:
    k = fake.knobs
    if not _state_is(fake, vm, "Stopped", "Error"):
        return _complete(fake, vm, handler, fake.vz_error(4, "Invalid virtual machine state transition."))
    if k.start_error is not None:
        return _complete(fake, vm, handler, _err(fake, k.start_error))
    if _active(fake) >= k.max_vms:
        return _complete(fake, vm, handler, fake.vz_error(
            6, "The number of virtual machines exceeds the limit. The maximum supported number of active "
               "virtual machines has been reached."))
    _set_state(fake, vm, "Starting")
    vm._started_once = True

    def done() -> None:
        _set_state(fake, vm, "Running")
        handler(None)
        _schedule_guest(fake, vm)

    _later(fake, vm, done, k.start_delay)


def _schedule_guest(fake: FakeVZ, vm: Any) -> None:
    k = fake.knobs
    if k.guest_stops_after is not None:
        _later(fake, vm, lambda: _guest_stopped(fake, vm), k.guest_stops_after)
    if k.guest_error_after is not None:
        _later(fake, vm, lambda: _guest_failed(fake, vm, fake.vz_error(1, "An internal error occurred.")),
               k.guest_error_after)


def _stop(fake: FakeVZ, vm: Any, handler: Callable[[Any], Any]) -> None:
    if not _state_is(fake, vm, "Running", "Paused", "Error"):
        return _complete(fake, vm, handler, fake.vz_error(3, "Invalid virtual machine state."))
    _set_state(fake, vm, "Stopped")
    _complete(fake, vm, handler, None)


def _request_stop(fake: FakeVZ, vm: Any, _e: Any) -> tuple[bool, Any]:
    if not _state_is(fake, vm, "Running"):
        return False, fake.vz_error(3, "Invalid virtual machine state.")
    if fake.knobs.guest_honours_stop_request:
        _later(fake, vm, lambda: _guest_stopped(fake, vm), fake.knobs.guest_shutdown_delay)
    return True, None


def _pause(fake: FakeVZ, vm: Any, handler: Callable[[Any], Any]) -> None:
    if not _state_is(fake, vm, "Running"):
        return _complete(fake, vm, handler, fake.vz_error(3, "Invalid virtual machine state."))
    _set_state(fake, vm, "Paused")
    _complete(fake, vm, handler, None)


def _resume(fake: FakeVZ, vm: Any, handler: Callable[[Any], Any]) -> None:
    if not _state_is(fake, vm, "Paused"):
        return _complete(fake, vm, handler, fake.vz_error(3, "Invalid virtual machine state."))
    if fake.knobs.resume_error is not None:
        return _complete(fake, vm, handler, _err(fake, fake.knobs.resume_error))
    _set_state(fake, vm, "Running")
    _complete(fake, vm, handler, None)
    _schedule_guest(fake, vm)


def _save(fake: FakeVZ, vm: Any, url: Any, handler: Callable[[Any], Any]) -> None:
    if not _state_is(fake, vm, "Paused"):
        return _complete(fake, vm, handler, fake.vz_error(3, "Invalid virtual machine state."))
    if fake.knobs.save_error is not None:
        Path(url.path()).write_bytes(b"partial")
        return _complete(fake, vm, handler, _err(fake, fake.knobs.save_error))
    path = Path(url.path())
    if path.exists() and fake.knobs.save_fails_if_exists:
        return _complete(fake, vm, handler, fake.vz_error(11, "The virtual machine failed to save with error "
                                                              "“file exists”."))
    path.write_text(json.dumps({"fake-vz-save": _identity(vm._cfg),
                                "network_devices": len(vm._cfg._props.get("networkDevices") or [])}))
    _complete(fake, vm, handler, None)  # the VM stays Paused (reference §3.7)


def _restore(fake: FakeVZ, vm: Any, url: Any, handler: Callable[[Any], Any]) -> None:
    def failed(why: str) -> None:
        _complete(fake, vm, handler, fake.vz_error(
            12, f"The virtual machine failed to restore with error “{why}”."))

    if not _state_is(fake, vm, "Stopped") or vm._started_once:
        return _complete(fake, vm, handler, fake.vz_error(4, "Invalid virtual machine state transition."))
    if _active(fake) >= fake.knobs.max_vms:
        return _complete(fake, vm, handler, fake.vz_error(6, "The number of virtual machines exceeds the limit."))
    vm._started_once = True  # from here the VM object holds its share of the quota (quota_until_released)
    if fake.knobs.restore_error is not None:
        return _complete(fake, vm, handler, _err(fake, fake.knobs.restore_error))
    if fake.knobs.restore_hangs:
        return _set_state(fake, vm, "Restoring")  # and the handler is never called
    try:
        data = json.loads(Path(url.path()).read_text())
        saved, devices = data["fake-vz-save"], data["network_devices"]
    except (OSError, ValueError, KeyError):
        return failed("invalid argument")
    if saved != _identity(vm._cfg):
        return failed("invalid argument")
    # a different network-device count "restores" into a guest that runs no code (tailscale PR #19331)
    vm._frozen = devices != len(vm._cfg._props.get("networkDevices") or [])
    _set_state(fake, vm, "Paused")
    _complete(fake, vm, handler, None)


def _hw_init(fake: FakeVZ, obj: Any, data: bytes) -> Any:
    if not bytes(data).startswith(HW_MAGIC):
        return None
    obj._data = bytes(data)
    return obj


def _id_new(fake: FakeVZ, obj: Any) -> Any:
    obj._data = ID_MAGIC + secrets.token_bytes(8)
    return obj


def _id_init(fake: FakeVZ, obj: Any, data: bytes) -> Any:
    if not bytes(data).startswith(ID_MAGIC) or len(data) != len(ID_MAGIC) + 8:
        return None
    obj._data = bytes(data)
    return obj


def _mac_init(fake: FakeVZ, obj: Any, text: str) -> Any:
    parts = text.split(":")
    if len(parts) != 6 or not all(re.fullmatch(r"[0-9a-fA-F]{1,2}", p) for p in parts):
        return None
    obj._mac = ":".join(f"{int(p, 16):02x}" for p in parts)
    return obj


def _disk_init(fake: FakeVZ, obj: Any, url: Any, ro: bool, caching: int, sync: int, _e: Any) -> Any:
    if fake.knobs.disk_error is not None:
        return None, _err(fake, fake.knobs.disk_error)
    if not Path(url.path()).is_file():
        return None, fake.nserror("NSCocoaErrorDomain", 260, "The file couldn’t be opened because it "
                                                             "doesn’t exist.")
    obj._props.update(URL=url, readOnly=ro, cachingMode=caching, synchronizationMode=sync)
    return obj, None


def _mac_random(fake: FakeVZ, cls: Any) -> Any:
    mac = cls()
    mac._mac = ":".join(f"{b:02x}" for b in bytes([0x02 | (secrets.randbits(8) & 0xFC)]) + secrets.token_bytes(5))
    return mac


# -- installing macOS ------------------------------------------------------------------------------------

IPSW_MAGIC = b"PK\x03\x04FAKEIPSW1:"


def fake_ipsw_bytes(*, build: str = "25F71", version: tuple[int, int, int] = (26, 5, 0), min_cpu: int = 2,
                    min_memory: int = 4 << 30, supported: bool = True, padding: int = 0) -> bytes:
    """A file the fake loads as a restore image (zip-headed like a real IPSW; `padding` adds bulk)."""
    header = {"build": build, "version": list(version), "min_cpu": min_cpu, "min_memory": min_memory,
              "supported": supported}
    return IPSW_MAGIC + json.dumps(header).encode() + b"\n" + secrets.token_bytes(padding)


@dataclass(frozen=True)
class OSVersion:  # PyObjC's NSOperatingSystemVersion struct wrapper has these fields
    majorVersion: int  # noqa: N815
    minorVersion: int  # noqa: N815
    patchVersion: int  # noqa: N815


def _restore_image(fake: FakeVZ, url: Any, header: dict[str, Any]) -> Any:
    image = fake.vz_class("VZMacOSRestoreImage")()  # the framework makes it; init is NS_UNAVAILABLE
    req = None
    if header["supported"]:
        req = fake.vz_class("VZMacOSConfigurationRequirements")()
        hw = fake.vz_class("VZMacHardwareModel")()
        hw._data = fake_hardware_model_data()
        req._props.update(hardwareModel=hw, minimumSupportedCPUCount=header["min_cpu"],
                          minimumSupportedMemorySize=header["min_memory"])
    image._props.update(URL=url, buildVersion=header["build"], operatingSystemVersion=OSVersion(*header["version"]),
                        mostFeaturefulSupportedConfiguration=req, supported=header["supported"])
    return image


def _on_some_thread(fake: FakeVZ, fn: Callable[[], Any]) -> None:
    def run() -> None:
        try:
            fn()
        except BaseException as e:  # real: a crash on a libdispatch worker
            fake.escaped.append(e)

    threading.Thread(target=run, name="fake-vz-any-thread", daemon=True).start()


def _load_restore_image(fake: FakeVZ, cls: Any, url: Any, handler: Callable[[Any, Any], Any]) -> None:
    if not url.isFileURL():
        raise ValueError("loadFileURL: needs a file URL")  # NSInvalidArgumentException (reference §1.6)

    def load() -> None:
        if fake.knobs.load_error is not None:
            return handler(None, _err(fake, fake.knobs.load_error))
        try:
            raw = Path(url.path()).read_bytes()
        except OSError:
            return handler(None, fake.vz_error(10004, "The restore image failed to load."))
        if not raw.startswith(IPSW_MAGIC):
            return handler(None, fake.vz_error(10005, "The restore image is invalid."))
        header = json.loads(raw[len(IPSW_MAGIC):].split(b"\n", 1)[0])
        handler(_restore_image(fake, url, header), None)

    _on_some_thread(fake, load)


def _fetch_latest(fake: FakeVZ, cls: Any, handler: Callable[[Any, Any], Any]) -> None:
    def fetch() -> None:
        if fake.knobs.fetch_error is not None:
            return handler(None, _err(fake, fake.knobs.fetch_error))
        header = json.loads(fake_ipsw_bytes()[len(IPSW_MAGIC):].split(b"\n", 1)[0])
        handler(_restore_image(fake, fake.NSURL.URLWithString_(fake.knobs.latest_url), header), None)

    _on_some_thread(fake, fetch)


def _aux_create(fake: FakeVZ, aux: Any, url: Any, hw: Any, options: int, _e: Any) -> Any:
    path = Path(url.path())
    if fake.knobs.aux_error is not None:
        return None, _err(fake, fake.knobs.aux_error)
    if path.exists() and not options & fake.sdk.enums["VZMacAuxiliaryStorageInitializationOptionAllowOverwrite"]:
        return None, fake.nserror("NSCocoaErrorDomain", 516, "The file already exists.")
    path.write_bytes(b"FAKEAUX1:" + hw._data)
    aux._props["URL"] = url
    return aux, None


def _on_vm_queue(fake: FakeVZ, vm: Any, what: str) -> None:
    if not vm._queue.current:
        msg = f"VZMacOSInstaller.{what} called off the VM's queue"
        fake.violations.append(msg)
        raise QueueViolation(msg)


def _installer_init(fake: FakeVZ, inst: Any, vm: Any, url: Any) -> Any:
    _on_vm_queue(fake, vm, "initWithVirtualMachine:restoreImageURL:")
    if not url.isFileURL():
        raise ValueError("the restore image URL must be a file URL")  # an exception, per the header
    if not isinstance(vm._cfg._props.get("platform"), fake.vz_class("VZMacPlatformConfiguration")):
        raise ValueError("the VM is not configured for macOS")
    inst._vm, inst._url, inst._progress, inst._started = vm, url, fake.NSProgress(), False
    vm._installer = inst
    inst._progress._total = fake.knobs.install_steps
    return inst


def _install(fake: FakeVZ, inst: Any, handler: Callable[[Any], Any]) -> None:
    vm, k = inst._vm, fake.knobs
    _on_vm_queue(fake, vm, "installWithCompletionHandler:")
    if inst._started:
        raise RuntimeError("installWithCompletionHandler: called twice")  # an ObjC exception
    inst._started = True
    if not _state_is(fake, vm, "Stopped"):
        return _complete(fake, vm, handler, fake.vz_error(3, "Invalid virtual machine state."))
    _set_state(fake, vm, "Running")
    progress = inst._progress

    def finish(err: Any) -> None:
        _set_state(fake, vm, "Stopped")
        handler(err)

    def step() -> None:
        if progress._cancelled:
            return finish(fake.vz_error(9, "The operation was cancelled."))
        progress._done += 1
        if k.install_error is not None and progress.fractionCompleted() >= k.install_error_at:
            return finish(_err(fake, k.install_error))
        if progress._done < progress._total:
            return _later(fake, vm, step, k.install_step_delay)
        disk = vm._cfg._props["storageDevices"][0]._props["attachment"]._props["URL"]
        with open(disk.path(), "r+b") as f:  # "macOS" lands on the boot disk; the image stays sparse
            f.write(b"FAKE-MACOS from " + inst._url.path().encode())
        finish(None)

    _later(fake, vm, step, k.install_step_delay)


def _set_delegate(fake: FakeVZ, vm: Any, delegate: Any) -> None:
    vm._props["delegate"] = weakref.ref(delegate) if delegate is not None else None  # weak (rule 7)


def _get_delegate(fake: FakeVZ, vm: Any) -> Any:
    ref = vm._props.get("delegate")
    return ref() if ref is not None else None


def _behaviour() -> dict[tuple[str, str], Callable[..., Any]]:
    K = "VZVirtualMachineConfiguration"  # noqa: N806
    VM = "VZVirtualMachine"  # noqa: N806
    return {
        (K, "minimumAllowedCPUCount"): lambda f, c: f.knobs.min_cpu,
        (K, "maximumAllowedCPUCount"): lambda f, c: f.knobs.max_cpu,
        (K, "minimumAllowedMemorySize"): lambda f, c: f.knobs.min_memory,
        (K, "maximumAllowedMemorySize"): lambda f, c: f.knobs.max_memory,
        (K, "validateWithError:"): _validate,
        (K, "validateSaveRestoreSupportWithError:"): _validate_save_restore,
        (VM, "isSupported"): lambda f, c: f.knobs.vz_supported,
        (VM, "initWithConfiguration:queue:"): _vm_init,
        (VM, "initWithConfiguration:"): lambda f, vm, cfg: _vm_init(f, vm, cfg, None),
        (VM, "state"): lambda f, vm: vm._state,
        (VM, "canStart"): lambda f, vm: _state_is(f, vm, "Stopped", "Error"),
        (VM, "canStop"): lambda f, vm: _state_is(f, vm, "Running", "Paused", "Error"),
        (VM, "canPause"): lambda f, vm: _state_is(f, vm, "Running"),
        (VM, "canResume"): lambda f, vm: _state_is(f, vm, "Paused"),
        (VM, "canRequestStop"): lambda f, vm: _state_is(f, vm, "Running"),
        (VM, "startWithCompletionHandler:"): _start,
        (VM, "stopWithCompletionHandler:"): _stop,
        (VM, "requestStopWithError:"): _request_stop,
        (VM, "pauseWithCompletionHandler:"): _pause,
        (VM, "resumeWithCompletionHandler:"): _resume,
        (VM, "saveMachineStateToURL:completionHandler:"): _save,
        (VM, "restoreMachineStateFromURL:completionHandler:"): _restore,
        (VM, "setDelegate:"): _set_delegate,
        ("VZNetworkDevice", "setAttachment:"): _set_attachment,
        ("VZVirtioSocketDevice", "connectToPort:completionHandler:"): _vsock_connect,
        ("VZVirtioSocketConnection", "close"): _vsock_close,
        (VM, "delegate"): _get_delegate,
        ("VZMacHardwareModel", "initWithDataRepresentation:"): _hw_init,
        ("VZMacHardwareModel", "isSupported"): lambda f, hw: f.knobs.hardware_supported,
        ("VZMacHardwareModel", "dataRepresentation"): lambda f, hw: hw._data,
        ("VZMacMachineIdentifier", "init"): _id_new,
        ("VZMacMachineIdentifier", "initWithDataRepresentation:"): _id_init,
        ("VZMacMachineIdentifier", "dataRepresentation"): lambda f, mid: mid._data,
        ("VZMACAddress", "initWithString:"): _mac_init,
        ("VZMACAddress", "string"): lambda f, mac: mac._mac,
        ("VZDiskImageStorageDeviceAttachment",
         "initWithURL:readOnly:cachingMode:synchronizationMode:error:"): _disk_init,
        ("VZMACAddress", "randomLocallyAdministeredAddress"): _mac_random,
        ("VZMacOSRestoreImage", "loadFileURL:completionHandler:"): _load_restore_image,
        ("VZMacOSRestoreImage", "fetchLatestSupportedWithCompletionHandler:"): _fetch_latest,
        ("VZMacAuxiliaryStorage", "initCreatingStorageAtURL:hardwareModel:options:error:"): _aux_create,
        ("VZMacOSInstaller", "initWithVirtualMachine:restoreImageURL:"): _installer_init,
        ("VZMacOSInstaller", "installWithCompletionHandler:"): _install,
        ("VZMacOSInstaller", "progress"): lambda f, inst: inst._progress,
    }


def check_behaviour_against_sdk(sdk: SDK) -> list[str]:
    """Every behaviour the fake implements must be a real SDK selector (else the fake could lie)."""
    bad = []
    for cls, sel in _behaviour():
        info = sdk.classes.get(cls)
        if info is None or (sel not in info.instance and sel not in info.klass and sel != "init"):
            bad.append(f"{cls}.{sel}")
    return bad
