"""Errors of the exit node.

Tree::

    ExitError                 root; everything the exit package raises on purpose
    ├── ExitConfigError       bad operator configuration (names the field and the reason)
    ├── SwitchError           a local misuse of the virtual switch (unknown or duplicate port)
    ├── PortRefused           a device may not have another port (tunnel limit, switch full)
    ├── HostSetupError        the host could not be configured (bridge, TAP, masquerade)
    ├── AttestationUnavailable  the TPM cannot be reached or the AK cannot be enrolled
    └── StateFileError        a state file cannot be written, or is empty or damaged

Frames from peers never raise: the switch drops them and counts the reason.
"""

from __future__ import annotations


class ExitError(Exception):
    """Root of the exit node's exceptions."""


class ExitConfigError(ExitError):
    """The operator's configuration is invalid."""


class SwitchError(ExitError):
    """The switch was driven wrongly by local code (never by a peer's frame)."""


class PortRefused(ExitError):
    """A device's new tunnel gets no switch port: ``reason`` is its drop-counter name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HostSetupError(ExitError):
    """Bridge, TAP or masquerade setup on the host failed."""


class AttestationUnavailable(ExitError):
    """The exit cannot attest: TPM unreachable, no AK and nothing to enrol against."""


class StateFileError(ExitError):
    """A state file (AK, enrolment record) cannot be written, or what is there is damaged."""
