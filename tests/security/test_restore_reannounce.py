"""Issue 13 item 2 through the whole stack on the sim: after a warm restore the host tells the guest,
over the runner channel, the time and to re-announce; the guest steps its (modelled) clock before it
answers and mints a new /exec token and SSH host key — a slot's identity is never a runner's. A
restored guest that does not answer in time is cold-booted with a fresh identity."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from stack_fixtures import eventually, make_stack
from test_warm import _runner_for, agent_sees, builder

from shoes_vz.vm.identity_files import read_data_representation
from shoes_vz.wire import shoes_pb2_grpc as sgrpc


async def test_a_restored_guest_steps_its_clock_and_answers_with_a_new_identity(tmp_path: Path) -> None:
    async with make_stack(tmp_path, max_runners=1) as stack:
        slot = (await builder(stack).ensure(1)).built[0]
        saved = json.loads(slot.bundle.saved_state.read_text())["guest_state"]
        slot_key = base64.b64decode(saved["ssh_host_ed25519_key.pub"]).decode().split()[1]
        await agent_sees(stack, (1, 1))
        await asyncio.sleep(3)  # the slot's clock stands still meanwhile
        keys, tokens, store = [], [], stack.server.store
        async with stack.channel() as ch:
            stub = sgrpc.ShoesServiceStub(ch)
            for i in range(2):  # two runners from the one slot, one after the other
                await stack.add(stub, f"re-{i}")
                r = await _runner_for(stack, f"re-{i}")
                assert r.restored is True and r.identity.reannounced is True  # type: ignore[attr-defined]
                clock = r.identity.clock  # type: ignore[attr-defined]
                assert clock["stepped"] >= 2.5 and clock["how"].startswith("model"), clock
                keys.append(r.identity.host_key.export_public_key().decode().split()[1])  # type: ignore[attr-defined]
                tokens.append(r.token)  # type: ignore[attr-defined]
                stack.agent.handle_delete(f"del-{i}", r.runner_id)  # type: ignore[attr-defined]
                await eventually(lambda: stack.agent.warm.counts(stack.template) == (1, 1), timeout=30)
                await eventually(lambda: store.call(lambda: not store.live_runners()), timeout=30)  # placeable again
        assert slot_key not in keys and len(set(keys)) == 2, "a runner answered with its slot's host key"
        assert len(set(tokens)) == 2


async def test_a_restored_guest_that_stays_silent_boots_cold_with_a_fresh_identity(tmp_path: Path) -> None:
    async with make_stack(tmp_path, max_runners=1, driver_options={"restore_stalls": True},
                          restore_announce_timeout=2.0, boot_to_ip_timeout=20.0) as stack:
        slot = (await builder(stack).ensure(1)).built[0]
        slot_id = read_data_representation(slot.bundle.machine_identifier)
        await agent_sees(stack, (1, 1))
        async with stack.channel() as ch:
            reply = await stack.add(sgrpc.ShoesServiceStub(ch), "silent")
        r = await _runner_for(stack, "silent")
        meta = r.bundle.read_metadata()  # type: ignore[attr-defined]
        assert meta["restored"] is False and "did not re-announce within 2s" in meta["restore_error"], meta
        assert read_data_representation(r.bundle.machine_identifier) != slot_id  # type: ignore[attr-defined]
        assert r.identity.reannounced is False and reply.ip_address == r.ip  # type: ignore[attr-defined]

