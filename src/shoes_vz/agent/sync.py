"""The agent's side of AgentService: register, then one bidi `Sync` stream, reconnecting with
capped exponential backoff and jitter. Protobuf stays in this module."""

from __future__ import annotations

import asyncio
import logging
import platform
import random
import time
from typing import TYPE_CHECKING

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from shoes_vz import __version__
from shoes_vz.agent.credential import AgentCredential, hostname
from shoes_vz.core.errors import TemplateError
from shoes_vz.wire import agent_pb2 as pb
from shoes_vz.wire import agent_pb2_grpc as pbg
from shoes_vz.wire.convert import conditions_to_wire, guest_to_wire, phase_to_state

if TYPE_CHECKING:
    from shoes_vz.agent.app import Ack, Agent
    from shoes_vz.agent.runner import Runner

log = logging.getLogger(__name__)
BACKOFF_BASE = 0.2
BACKOFF_CAP = 15.0
HEALTHY_AFTER = 10.0
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # the server's limit both ways (server/limits.py)


class EnrolmentFailed(Exception):
    """The server would not enrol this agent; the message is the operator's line."""


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with full jitter in [cap/2, cap] of the step."""
    step = min(BACKOFF_CAP, BACKOFF_BASE * (2**attempt))
    return step * (0.5 + (rng or random).random() / 2)


def runner_message(r: Runner, agent_id: str) -> pb.Runner:
    t = r.timings
    created = Timestamp()
    created.FromSeconds(int(r.created_at))
    return pb.Runner(
        runner_id=r.runner_id, runner_name=r.spec.runner_name, agent_id=agent_id,
        state=phase_to_state(r.phase), ip_address=r.ip, created_at=created, error_message=r.error,
        guest_runner_state=guest_to_wire(r.guest_state),
        timings=pb.PhaseTimings(clone_seconds=t.clone or 0, boot_to_ssh_seconds=t.boot_to_ssh or 0,
                                total_seconds=t.total or 0),
        mac_address=str(r.mac), template=r.spec.template.name, resource_type=r.spec.resource_type,
        capacity_error=r.capacity_error,
    )


def template_messages(agent: Agent) -> list[pb.Template]:
    """The templates this host holds now, with their build digest and warm slots (blocking: a newly
    frozen template is verified here first)."""
    for v in agent.templates.refresh():
        log.error("refusing template %s: %s (fix: %s)", v.path, "; ".join(v.problems), v.fix)
    templates = agent.templates.list()
    agent.warm.refresh(templates)
    messages = []
    for t in templates:
        warm, free = agent.warm_slot_counts(t)
        m = t.meta
        messages.append(pb.Template(
            name=t.name, version=m.version, resource_types=m.resource_types, cpu_cores=m.cpu_count,
            memory_bytes=m.memory_bytes, digest=m.fingerprint(), warm_slots=warm, free_warm_slots=free,
        ))
    return messages


def ack_message(a: Ack) -> pb.CommandAck:
    return pb.CommandAck(request_id=a.request_id, ok=a.ok, error=a.error)


class SyncClient:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.s = agent.settings
        self.connected = asyncio.Event()
        self.credential = AgentCredential(self.s.state_dir, self.s.enrollment_token)
        self._template_error = ""
        self._problem = ""

    def _channel(self) -> grpc.aio.Channel:
        opts = [("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
        if self.s.tls_ca:
            creds = grpc.ssl_channel_credentials(root_certificates=self.s.tls_ca.read_bytes())
            return grpc.aio.secure_channel(self.s.server_addr, creds, options=opts)
        return grpc.aio.insecure_channel(self.s.server_addr, options=opts)

    def _register_request(self) -> pb.RegisterAgentRequest:
        a = self.agent
        return pb.RegisterAgentRequest(
            agent_id=a.agent_id, hostname=hostname(),
            capacity=pb.AgentCapacity(max_runners=a.capacity, cpu_cores=a.cpu_cores,
                                      memory_bytes=a.memory_bytes),
            templates=template_messages(a),
            host=pb.HostFacts(os=f"{platform.system()} {platform.release()}", arch=platform.machine(),
                              driver=self.s.driver, agent_version=__version__),
        )

    async def run(self) -> None:
        attempt = 0
        self._problem = ""
        while True:
            try:
                async with self._channel() as channel:
                    stub = pbg.AgentServiceStub(channel)
                    await self._identify(stub)
                    request = await asyncio.to_thread(self._register_request)  # reads template files
                    reply = await stub.RegisterAgent(request, metadata=self.credential.metadata, timeout=10)
                    interval = reply.sync_interval_seconds or 5
                    log.info("registered as agent %s with %s%s", self.agent.agent_id, self.s.server_addr,
                             " (the earlier problem is gone)" if self._problem else "")
                    self._problem = ""
                    connected_at = time.monotonic()
                    try:
                        await self._stream(stub, float(interval))
                    finally:
                        if time.monotonic() - connected_at > HEALTHY_AFTER:
                            attempt = 0  # a stream that lived a while resets the backoff
            except asyncio.CancelledError:
                raise
            except EnrolmentFailed as e:
                self._report(logging.ERROR, str(e))
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED and self.credential.secret:
                    self._forgotten(e)  # the next attempt enrols again
                else:
                    self._report(*self._describe(e))
            except Exception as e:
                self._report(logging.WARNING, f"sync with {self.s.server_addr} failed: {e!r}")
            finally:
                self.connected.clear()
            delay = backoff_delay(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def _identify(self, stub: pbg.AgentServiceStub) -> None:
        """This agent's secret: the one kept in the state directory, or a new one from Enroll."""
        if self.credential.agent_id != self.agent.agent_id:
            await asyncio.to_thread(self.credential.load, self.agent.agent_id)
        if self.credential.secret:
            return
        try:
            await self.credential.enroll(stub)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise EnrolmentFailed(self.credential.describe_refusal(e, self.s.server_addr)) from None
            raise
        log.info("enrolled as agent %s with %s (secret kept in %s)", self.agent.agent_id, self.s.server_addr,
                 self.credential.path)

    def _forgotten(self, e: grpc.aio.AioRpcError) -> None:
        """The server rejects the secret this agent kept: enrol again (the server says no to an id it
        still has enrolled with another secret, and the agent then says what to do)."""
        self._report(logging.WARNING, f"the server at {self.s.server_addr} does not accept this agent's secret "
                     f"({e.details()}): enrolling again")
        self.credential.secret = ""

    def _describe(self, e: grpc.aio.AioRpcError) -> tuple[int, str]:
        if e.code() == grpc.StatusCode.PERMISSION_DENIED:
            return logging.ERROR, f"the server at {self.s.server_addr} refused this agent: {e.details()}; retrying"
        if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return logging.ERROR, f"the server at {self.s.server_addr} refused a message: {e.details()}; retrying"
        return logging.WARNING, f"sync with {self.s.server_addr} lost: {e.code().name} {e.details()}"

    def _report(self, level: int, problem: str) -> None:
        """Each problem once, when it starts or changes; the retries behind it are quiet (debug)."""
        if problem == self._problem:
            log.debug("%s", problem)
            return
        self._problem = problem
        log.log(level, "%s", problem)

    async def _templates_now(self) -> list[pb.Template] | None:
        try:
            templates = await asyncio.to_thread(template_messages, self.agent)
        except (TemplateError, OSError) as e:
            if str(e) != self._template_error:  # once per problem, not once per heartbeat
                log.warning("cannot list templates in %s (the server keeps the last report): %s",
                            self.s.templates_dir, e)
            self._template_error = str(e)
            return None
        self._template_error = ""
        return templates

    async def _stream(self, stub: pbg.AgentServiceStub, interval: float) -> None:
        call = stub.Sync(metadata=self.credential.metadata)
        self.connected.set()
        sender = asyncio.create_task(self._send_loop(call, interval))
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    raise ConnectionError("server closed the Sync stream")
                kind = msg.WhichOneof("command")
                if kind == "create_runner":
                    c = msg.create_runner
                    self.agent.handle_create(c.request_id, c.runner_id, c.runner_name, c.setup_script,
                                             c.resource_type, c.template, list(c.labels))
                elif kind == "delete_runner":
                    self.agent.handle_delete(msg.delete_runner.request_id, msg.delete_runner.runner_id)
                if sender.done():
                    sender.result()
        finally:
            sender.cancel()
            call.cancel()

    async def _send_loop(self, call: grpc.aio.StreamStreamCall, interval: float) -> None:
        a = self.agent
        reported: list[pb.Template] | None = None
        reported_conditions: pb.HostConditionReport | None = None
        while True:
            a.changed.clear()
            templates = await self._templates_now()
            acks = a.take_acks()
            runners = [r for r in a.runners.values()]
            msg = pb.SyncRequest(
                agent_id=a.agent_id, active_runners=sum(1 for r in runners if r.live),
                runners=[runner_message(r, a.agent_id) for r in runners],
                acks=[ack_message(x) for x in acks],
            )
            for r in a.take_failed_and_gone():  # its error first; the next message lacks it: gone
                msg.runners.append(runner_message(r, a.agent_id))
                msg.runners[-1].state = pb.RUNNER_STATE_ERROR
            # templates ride along when they changed (one frozen meanwhile becomes schedulable
            # without a restart), as do warm slots taken or refilled
            if templates is not None and templates != reported:
                msg.templates.templates.extend(templates)
                msg.templates.SetInParent()
                reported = templates
            conditions = conditions_to_wire(a.conditions.list())  # ahead of the runners: placement first
            if conditions != reported_conditions:
                msg.conditions.CopyFrom(conditions)
                msg.conditions.SetInParent()
                reported_conditions = conditions
            await call.write(msg)
            try:
                await asyncio.wait_for(a.changed.wait(), interval)
            except TimeoutError:
                pass
