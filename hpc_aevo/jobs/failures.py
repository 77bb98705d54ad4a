"""Is a failed job evidence against its candidate's mutation? Decided from typed facts, never from log text.

Why: a failure registers its mutation as a dead end for the rest of the campaign (the registry only
grows), so a node that died, an administrator's cancel or a sandbox that could not be set up must
not ban an idea. The scheduler's end state and the stages the job's own outcome lists say which it
was: a stage of the candidate that ran and exited non-zero, or outgrew its time or memory, is the
mutation's; a job ended from outside, or one that never got a stage running, is infrastructure.
Whether the anchors failed the same way is judged later, over the round (search/evidence.py).
"""

from __future__ import annotations

from hpc_aevo.jobs.spec import JobOutcome
from hpc_aevo.state.manifest import FailedJob

# End states that the scheduler, a node or a lost process imposed, whatever the candidate ran.
INFRASTRUCTURE_STATES = frozenset({
    "NODE_FAIL", "BOOT_FAIL", "CANCELLED", "DEADLINE", "PREEMPTED", "REVOKED", "LOST", "DUPLICATE", "UNSUBMITTED"})
# End states of a candidate that ran out of the resources its recipe needs: the recipe's doing.
RESOURCE_STATES = frozenset({"TIMEOUT", "OUT_OF_MEMORY"})


def failed_job(state: str, outcome: JobOutcome | None) -> FailedJob:
    """The typed facts of a failed attempt and whether they blame the mutation."""
    stage = next((s for s in reversed(outcome.stages) if s.returncode != 0), None) if outcome else None
    facts = FailedJob(state, stage.stage if stage else None, stage.returncode if stage else None, "infrastructure")
    if state in INFRASTRUCTURE_STATES:
        return facts
    if stage is not None or state in RESOURCE_STATES:
        facts.kind = "mutation"
    return facts  # FAILED with no stage that ran and failed: not started (confinement, environment) or no outcome
