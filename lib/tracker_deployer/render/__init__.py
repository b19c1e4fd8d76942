"""Render an :class:`Env` into the file tree that lands on the host.

:func:`render` is pure: Env in, :class:`RenderedTree` out (paths are the host's
absolute paths, with content, mode and owner). :func:`write_tree` puts it on
disk under ``build/NAME/`` with a ``manifest.json``.
"""

from tracker_deployer.render.tree import (
    Directory,
    RenderedFile,
    RenderedTree,
    inventory_script,
    operation_script,
    render,
    write_tree,
)

__all__ = [
    "Directory",
    "RenderedFile",
    "RenderedTree",
    "inventory_script",
    "operation_script",
    "render",
    "write_tree",
]
