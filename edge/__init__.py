"""scanside's appliance runtime.

Data enters in `edge.ingest` (inbox, DICOM reader, journal, quarantine), is grouped in
`edge.series` (geometry, completion), and leaves through the stages that later issues
add. Nothing in this package imports torch, `models` or `export`.
"""

__version__ = "0.1.0"
