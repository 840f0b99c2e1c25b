"""Prefect tasks: thin wrappers that run polydistill's core stage functions with logging and retries."""
