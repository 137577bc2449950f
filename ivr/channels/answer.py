"""What answering a webhook gives: its TwiML, and a summary of what was done for the log line
(ivr.channels.reporting). Every handler of the data path returns one."""

from __future__ import annotations

Answer = tuple[str, str]  # the TwiML, and a summary for the log
