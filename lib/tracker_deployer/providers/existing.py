"""The ``existing`` provider: a host the user prepared and recorded with ``inv register``."""

from __future__ import annotations

from tracker_deployer import state
from tracker_deployer.config.model import Env
from tracker_deployer.errors import DeployError
from tracker_deployer.say import Say


def register_hint(env: Env) -> str:
    return f"inv register --env {env.name} --host ADDRESS [--port N]"


class Existing:
    kind = "existing"

    def __init__(self, env: Env) -> None:
        self.env = env

    def provision(self, say: Say) -> state.HostRecord:  # noqa: ARG002 - the interface
        recorded = self.address()
        if recorded is not None:
            return recorded
        raise DeployError(
            f"environment {self.env.name} uses an existing host, and none is registered",
            f"prepare the host (SSH login for {self.env.ssh.username} with passwordless sudo), "
            f"then record it: {register_hint(self.env)}",
        )

    def address(self) -> state.HostRecord | None:
        return state.read_record(self.env.name)

    def host_keys(self) -> list[str]:
        return []  # no trusted channel: the first --accept-new-host-key records them

    def destroy(self, say: Say) -> None:
        state.forget(self.env.name)
        say(f"forgot the host of {self.env.name} (the machine itself is yours to keep or delete)")
