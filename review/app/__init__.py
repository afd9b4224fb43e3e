"""The local review app's parts (python -m review.serve): store.py (fields, validation, outcomes and audit tables),
security.py (token, sessions, CSRF, headers), export.py (the training tables), web.py (the pages)."""
