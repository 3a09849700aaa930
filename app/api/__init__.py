"""The authenticated ``/v1`` API for the company's internal services."""
