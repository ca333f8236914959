"""Simulated atomic clocks on pseudo-terminals: a GPSDO (NMEA) and a rubidium (SCPI or PRS10).

Each simulator has a true offset, drift, jitter, outages and lies (:class:`ClockModel`),
speaks its dialect through a pseudo-terminal whose slave is reachable at a stable symlink
(:class:`PtyLink`), and can be unplugged and plugged back. ``python -m lab.clocksim``
(or ``shadowmesh clock simulate``) starts them from the command line.
"""

from lab.clocksim.devices import GpsdoSim, Prs10Sim, ScpiSim, Simulator
from lab.clocksim.model import ClockModel, Window
from lab.clocksim.pty import PtyLink

__all__ = ["ClockModel", "GpsdoSim", "Prs10Sim", "PtyLink", "ScpiSim", "Simulator", "Window"]
