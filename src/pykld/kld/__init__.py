"""The kld tools, on top of everything (FreeBSD's sbin/ beside sys/): the `pykld` command
(cli, commands), `pykld run` (run), the daemon and its control socket (daemon, service,
control, client) and the runtime directory they share (rundir)."""
