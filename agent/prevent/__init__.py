"""Prevention (issue 12): what the agent refuses rather than only reports.

    devices.py   DeviceGuard: removable storage not on prevent.allowed_devices is set
                 read-only at the block layer (BLKROSET) or refused (held, de-authorized)
    notify.py    the user's side of a refusal: a journal line and a desktop notification

Errors derive from PreventError (errors.py).
"""
