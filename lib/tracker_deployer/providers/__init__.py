"""Where a host comes from: one module per provider behind one small interface.

Every provider answers four questions (:class:`HostProvider`):

- ``provision``: make the host (lxd) or say how to get one (existing, hetzner);
- ``address``: where the host is, from the state record (``state.HostRecord``);
- ``host_keys``: the host's SSH host keys through a trusted channel, when the
  provider has one (lxd: ``lxc exec``); otherwise empty;
- ``destroy``: remove what ``provision`` made (nothing, for hosts it did not make).

Where a host is lives in the user's state directory (``tracker_deployer.state``),
never in ``envs/``.
"""

from __future__ import annotations

from typing import Protocol

from tracker_deployer import state
from tracker_deployer.config.model import Env, ExistingProvider, HetznerProvider, LxdProvider
from tracker_deployer.errors import DeployError
from tracker_deployer.say import Say


class HostProvider(Protocol):
    kind: str

    def provision(self, say: Say) -> state.HostRecord: ...

    def address(self) -> state.HostRecord | None: ...

    def host_keys(self) -> list[str]: ...

    def destroy(self, say: Say) -> None: ...


def for_env(env: Env) -> HostProvider:
    """The provider module for ``env.provider``."""
    # Imported here: each module stays independent of the others.
    provider = env.provider
    if isinstance(provider, LxdProvider):
        from tracker_deployer.providers.lxd import Lxd

        return Lxd(env)
    if isinstance(provider, HetznerProvider):
        from tracker_deployer.providers.hetzner import Hetzner

        return Hetzner(env)
    if isinstance(provider, ExistingProvider):
        from tracker_deployer.providers.existing import Existing

        return Existing(env)
    raise DeployError(  # pragma: no cover - the config loader refuses other kinds
        f"unknown provider {getattr(provider, 'kind', provider)!r}",
        'use "lxd", "hetzner" or "existing" in the provider section',
    )
