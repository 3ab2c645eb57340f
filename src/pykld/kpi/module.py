"""module(9): a module declares itself by subclassing Module and handles its events."""

from __future__ import annotations

from typing import ClassVar

from pykld.kernel.modules import ModuleEvent

_HANDLERS = {
    ModuleEvent.LOAD: "load",
    ModuleEvent.UNLOAD: "unload",
    ModuleEvent.QUIESCE: "quiesce",
    ModuleEvent.SHUTDOWN: "shutdown",
}


class Module:
    """A loadable module.  Subclass it in a driver file and set `name`; the file's
    module is its leaf module class (helper base classes may sit beside it).

    LOAD runs `load()`; a LOAD that raises leaves nothing behind.  QUIESCE runs
    `quiesce()`, which may veto an unload by raising OSError(EBUSY) (a forced
    unload goes on anyway).  UNLOAD runs `unload()`; devices the module still
    has afterwards are destroyed for it.  SHUTDOWN runs `shutdown()`.  Override
    `modevent()` instead to see the raw events, as a FreeBSD modevent handler does.
    """

    __pykld_module__: ClassVar[bool] = True
    name: ClassVar[str] = ""

    def modevent(self, event: ModuleEvent) -> None:
        # Looked up on the class, not the instance: driver state named like an
        # event (`self.shutdown = True`) must not replace the handler.
        getattr(type(self), _HANDLERS[event])(self)

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    def quiesce(self) -> None:
        pass

    def shutdown(self) -> None:
        pass
