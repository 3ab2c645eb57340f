"""Testing programs against emulated devices: the pytest plugin (plugin.py), the leak
check (leaks.py), and record/replay of device traffic (trace.py, record.py, replay.py).
Fault points are the kernel's own (pykld.kernel.fail), set with Kernel.fail."""
