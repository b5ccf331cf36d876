"""DICOM in and out: storage layout, reading, pixel conversion, building reports, sending."""
