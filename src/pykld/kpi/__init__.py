"""The kernel programming interface drivers are written against.

FreeBSD's vocabulary: module(9) events, the cdevsw, make_dev(9), uio(9),
malloc(9), sysctl(9), mutex(9), sleep/wakeup, selrecord/selwakeup, callout(9),
kthread_add(9), taskqueue(9), printf, and ioctl numbers.
"""

from select import POLLERR, POLLHUP, POLLIN, POLLOUT, POLLPRI, POLLRDNORM, POLLWRNORM

from pykld.kernel.callout import Callout, callout_drain, callout_init, callout_init_mtx, callout_reset, callout_stop
from pykld.kernel.devfs import Cdev
from pykld.kernel.file import OpenFile
from pykld.kernel.ioccom import _IO, _IOR, _IOW, _IOWR, IOC_IN, IOC_INOUT, IOC_OUT, IOC_VOID, IoctlCmd
from pykld.kernel.ioccom import decode as ioctl_decode
from pykld.kernel.kthread import (
    KThread,
    Task,
    TaskQueue,
    kthread_add,
    taskqueue_create,
    taskqueue_drain,
    taskqueue_enqueue,
    taskqueue_free,
)
from pykld.kernel.malloc import M_NOWAIT, M_WAITOK, M_ZERO, MallocStat, MallocType, Memory, free, realloc
from pykld.kernel.modules import ModuleEvent
from pykld.kernel.mutex import Mutex
from pykld.kernel.sched import SelInfo, selrecord, selwakeup, sleep, wakeup, wakeup_one
from pykld.kernel.sysctl import SysctlOid
from pykld.kernel.uio import Uio, UioRw
from pykld.kpi.cdev import CharacterDevice, destroy_dev, make_dev
from pykld.kpi.module import Module
from pykld.kpi.support import copyin, copyin_many, copyout, malloc, printf, sysctl_add, sysctl_remove

__all__ = [
    "_IO", "_IOR", "_IOW", "_IOWR", "IOC_IN", "IOC_INOUT", "IOC_OUT", "IOC_VOID", "IoctlCmd",
    "M_NOWAIT", "M_WAITOK", "M_ZERO", "POLLERR", "POLLHUP", "POLLIN", "POLLOUT", "POLLPRI",
    "POLLRDNORM", "POLLWRNORM", "Callout", "Cdev", "CharacterDevice", "KThread", "MallocStat",
    "MallocType", "Memory", "Module", "ModuleEvent", "Mutex", "OpenFile", "SelInfo", "SysctlOid", "Task",
    "TaskQueue", "Uio", "UioRw", "callout_drain", "callout_init", "callout_init_mtx", "callout_reset",
    "callout_stop", "copyin", "copyin_many", "copyout", "destroy_dev", "free", "ioctl_decode", "kthread_add",
    "make_dev", "malloc", "printf", "realloc", "selrecord", "selwakeup", "sleep", "sysctl_add", "sysctl_remove",
    "taskqueue_create", "taskqueue_drain", "taskqueue_enqueue", "taskqueue_free", "wakeup", "wakeup_one",
]
