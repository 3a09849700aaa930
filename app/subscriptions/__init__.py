"""Push: subscriptions, their signed deliveries and the dispatcher that sends them (issue 16)."""
