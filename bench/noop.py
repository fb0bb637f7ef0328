"""The baseline job: RQ running this measures RQ's own cost per job on this machine."""


def noop() -> None:
    """Do nothing."""
