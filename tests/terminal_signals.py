"""Signal state for a subprocess that stands in for a command typed at a terminal."""

import signal


def as_from_a_terminal() -> None:
    """Run in the child before exec: SIGINT and SIGTERM at their defaults and not blocked, as a shell started
    from a terminal hands them on. Dispositions set to ignore and blocked masks survive exec, and a Python
    started with SIGINT ignored installs no KeyboardInterrupt handler: a test harness process that ignores
    or blocks SIGINT would otherwise make a Ctrl-C test hang rather than test porter."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
