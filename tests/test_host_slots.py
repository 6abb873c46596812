"""The host-wide VM count: one flock per slot, held by real processes; `vm run` takes one and tells the two
capacity failures apart; the agent does not over-book against VMs other processes run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from stack_fixtures import eventually, make_stack

from shoes_vz.agent.warm_build import SlotBuilder, WarmError
from shoes_vz.core.errors import CapacityExhausted
from shoes_vz.vm.exit_status import VMExit, describe, is_capacity
from shoes_vz.vm.host_slots import HostSlots

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from shoes_vz.vm.host_slots import HostSlots
    slot = HostSlots(Path(sys.argv[1]), int(sys.argv[2])).take(sys.argv[3])
    print(slot.index, flush=True)
    time.sleep(600)
""")


def hold(directory: Path, limit: int, what: str) -> subprocess.Popen[str]:
    """Another process holding one slot until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(limit), what],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip().isdigit()
    return proc


def test_slots_are_counted_across_processes_and_freed_by_the_kernel(tmp_path: Path) -> None:
    slots = HostSlots(tmp_path / "vm-slots", 2)
    first = hold(slots.directory, 2, "template warm macos-26")
    try:
        mine = slots.take("vm run r1.bundle")
        assert {(h.pid, h.what) for h in slots.holders()} == {(first.pid, "template warm macos-26"),
                                                              (os.getpid(), "vm run r1.bundle")}
        with pytest.raises(CapacityExhausted, match=r"all 2 host VM slots are held \(pid \d+ .*template warm"):
            slots.take("vm run r2.bundle")
        first.send_signal(signal.SIGKILL)  # however the holder dies, its slot comes back
        first.wait()
        other = slots.take("vm run r2.bundle")
        assert len(slots.holders()) == 2
        other.release()
        mine.release()
        assert slots.holders() == []
    finally:
        first.kill()
        first.wait()
    assert oct((slots.directory / "slot-0.lock").stat().st_mode & 0o777) == "0o600"


def test_a_symlink_planted_as_a_slot_is_never_followed(tmp_path: Path) -> None:
    directory = tmp_path / "vm-slots"
    directory.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (directory / "slot-0.lock").symlink_to(victim)
    slot = HostSlots(directory, 2).take("vm run r1.bundle")
    assert slot.index == 1 and victim.read_text() == "keep me"
    slot.release()


def test_vm_run_without_a_free_slot_is_a_clean_capacity_exit(tmp_path: Path) -> None:
    slots = tmp_path / "vm-slots"
    holders = [hold(slots, 2, f"vm run other-{i}.bundle") for i in range(2)]
    bundle = tmp_path / "r1.bundle"
    bundle.mkdir()
    try:
        done = subprocess.run([sys.executable, "-m", "shoes_vz.vm.process", str(bundle), "--driver", "sim",
                               "--host-slots", str(slots), "--host-limit", "2"], capture_output=True, text=True,
                              timeout=60)
    finally:
        for h in holders:
            h.kill()
            h.wait()
    assert done.returncode == VMExit.CAPACITY, done.stderr
    assert "capacity: all 2 host VM slots are held" in done.stderr and "vm run other-0.bundle" in done.stderr
    assert not (bundle / "control.sock").exists() and "vm started" not in done.stderr  # no driver ran
    assert is_capacity(done.returncode) and "every host VM slot is held" in describe(done.returncode)


def test_exit_statuses_that_mean_capacity() -> None:
    assert [s for s in VMExit if s.is_capacity] == [VMExit.CAPACITY, VMExit.HOST_QUOTA]
    assert "needs a reboot" in describe(VMExit.HOST_QUOTA) and not is_capacity(-9) and not is_capacity(None)


async def test_the_agent_does_not_over_book_against_other_vms(tmp_path: Path) -> None:
    import grpc

    from shoes_vz.wire import shoes_pb2_grpc as sgrpc

    async with make_stack(tmp_path, max_runners=2) as stack:
        assert stack.agent.capacity == 2
        warm = hold(stack.agent.host_slots.directory, 2, "vm run /x/warm-1234.building")
        try:
            async with stack.channel() as ch:
                stub = sgrpc.ShoesServiceStub(ch)
                await stack.add(stub, "one")
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stack.add(stub, "two", timeout=20)
                assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "host at capacity: 1 runners and 1 other VMs" in str(e.value.details())
                assert "vm run /x/warm-1234.building" in str(e.value.details())
                # the agent said why: its own runner and the other VM hold the host's two slots
                assert [r.phase.value for r in stack.agent.runners.values()] == ["running"]
                # its vm process holds a slot of the agent's directory, with the agent's restore deadlines
                (runner,) = stack.agent.runners.values()
                assert runner.proc is not None
                argv = Path(f"/proc/{runner.proc.pid}/cmdline").read_bytes().decode().split("\0")
                assert argv[argv.index("--host-slots") + 1] == str(stack.agent.host_slots.directory)
                assert argv[argv.index("--live-timeout") + 1] == "30.0"
                assert argv[argv.index("--restore-timeout") + 1] == "60.0"
        finally:
            warm.kill()
            warm.wait()


async def test_template_warm_with_every_slot_held_by_runners_is_a_capacity_error(tmp_path: Path) -> None:
    from shoes_vz.wire import shoes_pb2_grpc as sgrpc

    async with make_stack(tmp_path, max_runners=2) as stack:
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            for name in ("a", "b"):
                await stack.add(stub, name)
        builder = SlotBuilder(stack.agent.settings, stack.template, lambda msg: None)
        t0 = time.monotonic()
        with pytest.raises(WarmError) as e:
            await builder.ensure(1)
        assert time.monotonic() - t0 < 20, "refused at once, not after a boot deadline"
        assert "capacity (every host VM slot is held)" in str(e.value)
        assert "all 2 host VM slots are held" in str(e.value)  # the vm log names the holders
        await eventually(lambda: all(r.phase.value == "running" for r in stack.agent.runners.values()))
        assert len(stack.agent.runners) == 2, "the runners were not disturbed"
