"""The kernel layer: module registry, devfs, file dispatch, scheduling, malloc, dmesg."""
