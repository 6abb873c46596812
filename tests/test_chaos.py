"""Fault injection in the project (issue 12): a short seeded run of the chaos harness (tests/chaos.py;
`make chaos` runs a long one) keeps every invariant while the agent, the server and VM processes are
killed or stopped; and each invariant's check fails when the harness itself breaks it."""

from __future__ import annotations

from pathlib import Path

from chaos import FAULTS, INVARIANTS, Chaos, Sabotage, report
from stack_fixtures import have_sshd, require


async def test_a_short_seeded_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    result = await Chaos(tmp_path / "stack", seed=7, seconds=20).run()
    print(report(result))
    assert result.violations == [], report(result)
    assert all(result.faults[kind] > 0 for kind in FAULTS), report(result)  # each kind of fault happened
    # at least one acknowledged delete for the end-state checks to judge (how many is load, not behaviour)
    assert result.resync and result.rounds >= 1, report(result)


async def test_each_invariant_check_fails_when_its_invariant_is_broken(tmp_path: Path) -> None:
    require(have_sshd(), "OpenSSH sshd (apt-get install openssh-server)")
    sabotage = Sabotage(leave_process=True, leave_bundle=True, skip_delete=True, invalid_request=True,
                        duplicate_row=True, max_runners=1)
    result = await Chaos(tmp_path / "stack", seed=3, seconds=8, sabotage=sabotage, converge=5, inject=False).run()
    assert result.broken() == set(INVARIANTS), report(result)
