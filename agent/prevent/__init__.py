"""Prevention (issue 12): what the agent refuses rather than only reports (docs/prevention.md).

    devices.py     DeviceGuard: removable storage not on prevent.allowed_devices is set
                   read-only at the block layer (BLKROSET) or refused (held, de-authorized)
    guard.py       ContentGuard: fanotify permission events refuse tagged data on its way to
                   removable media (reader and decision threads, fail open/closed, file.block)
    responder.py   the guard's child process: reads the permission group, answers the opens of
                   processes found clean from their verdicts, hands the rest to the agent
    link.py        the agent's end of it: the process, a socket pair, a shared page
    verdicts.py    clean verdicts, and the descriptors held on the processes they are about
    decide.py      Decider: whether an open carries tagged data (fds, recent tagged opens,
                   process groups, lineage) or a tagged read feeds a stick
    permission.py  the fanotify permission group (FAN_CLASS_CONTENT) and its answers
    procs.py       what /proc says of a process waiting in open()
    notify.py      the user's side of a refusal: a journal line and a desktop notification
    grants.py      which pushed exceptions are honoured: signed by the collector for this host,
                   against the grant key pinned from the stream

Errors derive from PreventError (errors.py).
"""
