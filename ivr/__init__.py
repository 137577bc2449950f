"""Call-routing IVR server for Twilio."""

__version__ = "0.1.0"
