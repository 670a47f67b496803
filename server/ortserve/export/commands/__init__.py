"""The companion tool's commands, one module each: ``export``, ``publish`` and ``inspect``.

Each runs the steps of ``convert``, ``verify`` and ``repository`` in order and prints what they
found; the command line itself (flags, help, exit codes) is ``ortserve.export.cli``."""
