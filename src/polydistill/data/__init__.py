"""Data plane: fetch, ingest, prepare, validate, balance, unlabelled text and the transfer set."""
