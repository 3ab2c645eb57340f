"""The kernel programming interface drivers are written against.

FreeBSD's vocabulary: module(9) events, the cdevsw, make_dev(9), uio(9),
malloc(9), sleep/wakeup, selrecord/selwakeup, printf, and ioctl numbers.
"""

from select import POLLERR, POLLHUP, POLLIN, POLLOUT, POLLPRI, POLLRDNORM, POLLWRNORM

from pykld.kernel.devfs import Cdev
from pykld.kernel.file import OpenFile
from pykld.kernel.ioccom import _IO, _IOR, _IOW, _IOWR, IOC_IN, IOC_INOUT, IOC_OUT, IOC_VOID, IoctlCmd
from pykld.kernel.ioccom import decode as ioctl_decode
from pykld.kernel.malloc import M_NOWAIT, M_WAITOK, M_ZERO, MallocStat, MallocType, Memory, free, realloc
from pykld.kernel.modules import ModuleEvent
from pykld.kernel.sched import SelInfo, selrecord, selwakeup, sleep, wakeup, wakeup_one
from pykld.kernel.uio import Uio, UioRw
from pykld.kpi.cdev import CharacterDevice, destroy_dev, make_dev
from pykld.kpi.module import Module
from pykld.kpi.support import copyin, copyout, malloc, printf

__all__ = [
    "_IO", "_IOR", "_IOW", "_IOWR", "IOC_IN", "IOC_INOUT", "IOC_OUT", "IOC_VOID", "IoctlCmd",
    "M_NOWAIT", "M_WAITOK", "M_ZERO", "POLLERR", "POLLHUP", "POLLIN", "POLLOUT", "POLLPRI",
    "POLLRDNORM", "POLLWRNORM", "Cdev", "CharacterDevice", "MallocStat", "MallocType", "Memory",
    "Module", "ModuleEvent", "OpenFile", "SelInfo", "Uio", "UioRw", "copyin", "copyout",
    "destroy_dev", "free", "ioctl_decode", "make_dev", "malloc", "printf", "realloc", "selrecord",
    "selwakeup", "sleep", "wakeup", "wakeup_one",
]
