"""Content identification beyond an exact hash: what tagged data a written file holds.

    ContentCatalog      chunk and text fingerprints of every tagged file (catalog.py)
    ContentIdentifier   identify a written file or a raw device's bytes (identify.py)
    Identification      its answer: identified_by, confidence, share, sources, members
    Examiner            one worker thread running identifications for the sensors (examiner.py)
    archive.py          archives opened as bounded streams, never extracted
    chunks.py           content-defined chunking (FastCDC) and the compact feature table
    textsim.py          normalised line and field features of text exports
    entropy.py          byte entropy of opaque output
"""

from agent.content.catalog import ContentCatalog
from agent.content.identify import ContentIdentifier, Identification, MemberFound

__all__ = ["ContentCatalog", "ContentIdentifier", "Identification", "MemberFound"]
