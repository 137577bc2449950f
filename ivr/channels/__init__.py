"""Twilio's webhooks in, TwiML out. The flow engine's actions are rendered here and only here."""
