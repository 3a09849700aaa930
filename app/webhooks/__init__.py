"""``POST /webhooks/nango``: verify the signature, store the delivery, apply it."""
