"""Transports turn the kernel's file dispatch into device files: sim, fuse, cuse."""
