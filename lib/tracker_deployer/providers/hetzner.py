"""The ``hetzner`` provider: validated, not automated.

No machine that runs this project's tests can reach the Hetzner Cloud API, and
a fake API server would only test itself, so ``provision`` does not call the
API: it exits 2 with one line saying to create the server and register it.
The API token is a secret and is never printed.
"""

from __future__ import annotations

from tracker_deployer import state
from tracker_deployer.config.model import Env, HetznerProvider
from tracker_deployer.errors import ProvisionUnsupported
from tracker_deployer.providers.existing import register_hint
from tracker_deployer.say import Say


class Hetzner:
    kind = "hetzner"

    def __init__(self, env: Env) -> None:
        assert isinstance(env.provider, HetznerProvider)
        self.env = env
        self.provider = env.provider

    def provision(self, say: Say) -> state.HostRecord:  # noqa: ARG002 - the interface
        recorded = self.address()
        if recorded is not None:
            return recorded
        p = self.provider
        raise ProvisionUnsupported(
            "provisioning Hetzner servers is not automated: create a "
            f"{p.server_type} server in {p.location} from image {p.image} with your SSH key "
            f"(ssh_credentials.public_key_path), then run: {register_hint(self.env)}"
        )

    def address(self) -> state.HostRecord | None:
        return state.read_record(self.env.name)

    def host_keys(self) -> list[str]:
        return []

    def destroy(self, say: Say) -> None:
        state.forget(self.env.name)
        say(
            f"forgot the host of {self.env.name}; delete the Hetzner server itself in the "
            "Hetzner Cloud console (this tool does not call the API)"
        )
