"""Every size, limit and timer of the timing package, in one place.

Times are in seconds, frequencies in seconds per second, unless the name says otherwise.
"""

from __future__ import annotations

# --- serial line defaults (all settable per source) -------------------------------------
DEFAULT_BAUDRATE = 115200
DEFAULT_BYTESIZE = 8
DEFAULT_PARITY = "N"
DEFAULT_STOPBITS = 1
SERIAL_READ_TIMEOUT = 0.2  # a read returns at least this often so a stop is noticed
REOPEN_INTERVAL = 0.5  # how often an unplugged device is tried again
MAX_LINE = 256  # longest line any dialect may send; longer input is dropped up to the next EOL

# --- NMEA 0183 ---------------------------------------------------------------------------
NMEA_MAX_SENTENCE = 82  # '$' .. '\r\n' inclusive, NMEA 0183 section 5.3
# Receivers send the sentences describing second N some time after the PPS edge of N;
# the default assumes they start right at the edge and the configuration can say otherwise.
NMEA_DEFAULT_DELAY = 0.0
NMEA_DEFAULT_UNCERTAINTY = 0.002  # bound on serial timing of a sentence burst
NMEA_BURST_GAP = 0.3  # sentences closer than this belong to the same second's burst

# --- rubidium dialects -------------------------------------------------------------------
SCPI_POLL_INTERVAL = 1.0
SCPI_REPLY_TIMEOUT = 0.5
SCPI_RESOLUTION = 1e-6  # the SCPI time reply carries microseconds
PRS10_POLL_INTERVAL = 1.0
PRS10_REPLY_TIMEOUT = 0.5
PRS10_DEFAULT_UNCERTAINTY = 1e-6  # a locked PRS10's 1 PPS against its reference

# --- PPS ---------------------------------------------------------------------------------
PPS_JITTER_DEFAULT = 1e-6
PPS_MAX_LABEL_ERROR = 0.4  # an edge is labelled only if the clock is within this of a second

# --- discipline (two-state Kalman filter of the local oscillator) ------------------------
# Local oscillator noise: white frequency noise (s^2/s) and random-walk frequency noise
# (s^2/s^3), values typical of a PC's crystal; they set how fast holdover uncertainty grows.
OSC_WHITE_FM = 1e-13
OSC_RANDOM_WALK_FM = 1e-16
INITIAL_OFFSET_SIGMA = 1.0
INITIAL_FREQ_SIGMA = 1e-4  # 100 ppm: any crystal is inside this
OUTLIER_SIGMAS = 5.0  # innovation gate
MAX_CONSECUTIVE_OUTLIERS = 8  # then the filter accepts it was a step and restarts
CONVERGED_SIGMA = 5e-6  # offset 1-sigma under which a filter calls itself converged
UNCERTAINTY_SIGMAS = 4.0  # reported uncertainty = systematic bound + this many sigmas

# --- consensus / clock -------------------------------------------------------------------
DEFAULT_QUORUM = 1
SOURCE_STALE_AFTER = 5.0  # a source unheard for this long is no longer a candidate
MAX_HOLDOVER_UNCERTAINTY = 0.010  # beyond this, holdover gives way to the fallback
SYSTEM_CLOCK_UNCERTAINTY = 0.050  # assumed error bound of the host clock as a last resort
FALLBACK_CHOICES = ("holdover", "system", "refuse")
DEFAULT_FALLBACK = "holdover"
# Forward leaps of the clock's output (timing.slew): corrections up to MAX_FORWARD_STEP are
# taken at once (ntpd's step threshold); larger ones are slewed at MAX_SLEW_RATE (the
# kernel's 500 ppm) unless confirmed by two agreeing sources or persisting for
# STEP_CONFIRM_AFTER (ntpd's stepout). Unconfirmed, the output can gain at most
# 0.125 + 300 * 500e-6 = 0.275 s: less than EPOCH_ACCEPT_TOLERANCE.
MAX_FORWARD_STEP = 0.125
MAX_SLEW_RATE = 500e-6
STEP_CONFIRM_AFTER = 300.0

# --- epochs ------------------------------------------------------------------------------
MIN_ROTATION_INTERVAL = 1.0  # tests use 1 s; configuration validates its own range
MAX_ROTATION_INTERVAL = 7 * 24 * 3600.0
EPOCH_ACCEPT_TOLERANCE = 0.5  # how far from a boundary a peer's epoch number may be off
EPOCH_EARLY_WAKE = 0.002  # sleep until this long before a boundary, then finish exactly
# Waits longer than this are split in two so the clock is read again near the boundary;
# over a shorter wait a disciplined clock cannot drift by more than microseconds.
EPOCH_TWO_STAGE = 1.5

# --- chrony SOCK refclock ----------------------------------------------------------------
CHRONY_FEED_INTERVAL = 1.0  # seconds between samples sent to chronyd
CHRONY_SOCK_MAGIC = 0x534F434B

# --- parse-error reasons (stable codes for counters) -------------------------------------
REASON_TOO_LONG = "too-long"
REASON_NOT_ASCII = "not-ascii"
REASON_NO_START = "no-start"
REASON_NO_CHECKSUM = "no-checksum"
REASON_BAD_CHECKSUM = "bad-checksum"
REASON_BAD_ADDRESS = "bad-address"
REASON_FIELD_COUNT = "field-count"
REASON_BAD_FIELD = "bad-field"
REASON_EMPTY = "empty"
REASON_UNEXPECTED = "unexpected-reply"
REASON_DEVICE_ERROR = "device-error"
REASON_BAD_SAMPLE = "bad-sample"  # a source's sample with a non-finite or negative field
