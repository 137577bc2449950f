"""The flow engine: channel-neutral, it knows nothing of Twilio or TwiML."""
