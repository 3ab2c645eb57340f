"""pykld: device drivers written in Python the way FreeBSD kernel modules are.

Drivers import the KPI from here; `Kernel` is the in-process kernel that hosts them.
"""

from pykld.kernel.kernel import Kernel, ModuleStat
from pykld.kpi import *  # noqa: F403 - the KPI is this package's face
from pykld.kpi import __all__ as _kpi_all

__all__ = ["Kernel", "ModuleStat", *_kpi_all]
__version__ = "0.1.0"
