"""How good it is: segmentation and grading metrics as update / compute / reset objects."""
