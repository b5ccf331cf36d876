"""Training-side tools: labelled data on disk, synthetic phantoms, evaluation.

``datasets``  MURA-v1.1 and DICOM-with-truth.csv folders read as views, prepared by the daemon's code
``phantoms``  synthetic upper-limb radiographs with findings and boxes, in both layouts
``evaluate``  study-level evaluation of a checkpoint; ``metrics`` its pure metrics
"""
