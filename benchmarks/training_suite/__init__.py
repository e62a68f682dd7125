"""The synthetic families on which the training recipe was chosen (``README.md``)."""
